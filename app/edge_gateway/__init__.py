"""edge-gateway: Modbus RTU/TCP → frame bus + WAL → MQTT 5, as threads on a small ARM board.

Data flows through the subpackages in this order:
  acquisition/  one thread per physical line (RS-485 or TCP endpoint) turns registers into frames
  bus/          the bounded in-memory FrameBus and the segment-file WAL behind it
  uplink/       the MQTT 5 thread that tails the WAL and takes cloud commands back
with config/ (the five YAML tables) and runtime/ (supervisor, control socket, CLIs) beside them.
"""

# The one place the version is written: pyproject.toml reads it (dynamic = ["version"]), and so do the wheel,
# the image (dist-info, /etc/edge-gateway-release, the bundle name) and buildroot/package/python-edge-gateway.
__version__ = "0.1.0"
