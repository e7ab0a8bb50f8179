"""edge-gateway: field protocols → frame bus + WAL → MQTT 5, as threads on a small ARM board.

Data flows through the subpackages in this order:
  drivers/      protocol plugins (modbus/, mqtt_source/, or pip-installed ones): one worker per endpoint
  bus/          the bounded in-memory FrameBus and the segment-file WAL behind it
  uplink/       the MQTT 5 thread that tails the WAL and takes cloud commands back
with core/ (frame, datatypes, the plugin contracts and registry), config/ (the five YAML tables) and
runtime/ (composition, supervisor, control socket, CLIs) beside them. See ARCHITECTURE.md.
"""

# The one place the version is written: pyproject.toml reads it (dynamic = ["version"]), and so do the wheel,
# the image (dist-info, /etc/edge-gateway-release, the bundle name) and buildroot/package/python-edge-gateway.
__version__ = "0.1.0"
