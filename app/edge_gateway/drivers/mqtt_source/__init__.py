"""MQTT source: local MQTT devices as tags (a second acquisition protocol beside Modbus)."""

from edge_gateway.drivers.mqtt_source.source import MqttSource, ReadOnlyTag, start_source

__all__ = ["MqttSource", "ReadOnlyTag", "start_source"]
