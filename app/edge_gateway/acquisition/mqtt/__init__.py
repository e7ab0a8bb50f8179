"""MQTT source: local MQTT devices as tags (a second acquisition protocol beside Modbus)."""

from edge_gateway.acquisition.mqtt.source import MqttSource, ReadOnlyTag, start_source

__all__ = ["MqttSource", "ReadOnlyTag", "start_source"]
