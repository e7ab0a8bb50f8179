"""Modbus RTU (RS-485) and Modbus/TCP: planner, codec, line threads."""
