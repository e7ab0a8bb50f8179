"""edge-gateway: field protocols → frame bus + WAL → MQTT 5, as threads on a small ARM board.

Data flows through the subpackages in this order:
  drivers/      protocol plugins (modbus/, mqtt_source/, or pip-installed ones): one worker per endpoint
  bus/          the bounded in-memory FrameBus and the segment-file WAL behind it
  delivery/     the runner thread that tails the WAL through a connector and takes cloud commands back
  connectors/   the transports under it (mqtt/: MQTT 5), found by kind through the plugin registry
with core/ (frame, datatypes, the plugin contracts and registry), config/ (the five YAML tables),
net/ (the shared MQTT client builder) and runtime/ (composition, supervisor, control socket, CLIs)
beside them. See ARCHITECTURE.md.
"""

# The one place the version is written: pyproject.toml reads it (dynamic = ["version"]), and so do the wheel,
# the image (dist-info, /etc/edge-gateway-release, the bundle name) and buildroot/package/python-edge-gateway.
__version__ = "0.1.0"
