"""The MQTT 5 connector (connector.yml `kind: mqtt5`): see README.md."""

from edge_gateway.connectors.mqtt.transport import PLUGIN, MqttTransport, factory

__all__ = ["PLUGIN", "MqttTransport", "factory"]
