include $(sort $(wildcard $(BR2_EXTERNAL_EDGE_GATEWAY_PATH)/package/*/*.mk))
