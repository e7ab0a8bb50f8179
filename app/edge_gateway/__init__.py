"""edge-gateway: Modbus RTU/TCP → frame bus + WAL → MQTT 5, as threads on a small ARM board.

Data flows through the subpackages in this order:
  acquisition/  one thread per physical line (RS-485 or TCP endpoint) turns registers into frames
  bus/          the bounded in-memory FrameBus and the segment-file WAL behind it
  delivery/     the runner thread that tails the WAL through a connector and takes cloud commands back
  connectors/   the transports under it (mqtt/: MQTT 5), found by kind through entry points
with config/ (the five YAML tables), net/ (the shared MQTT client builder) and runtime/ (supervisor,
control socket, CLIs) beside them.
"""

# The one place the version is written: pyproject.toml reads it (dynamic = ["version"]), and so do the wheel,
# the image (dist-info, /etc/edge-gateway-release, the bundle name) and buildroot/package/python-edge-gateway.
__version__ = "0.1.0"
