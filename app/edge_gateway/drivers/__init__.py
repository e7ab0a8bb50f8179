"""Driver plugins: one folder per protocol (modbus/, mqtt_source/), each found through its entry point
in `edge_gateway.drivers` (core/registry.py) and speaking to the gateway only through the driver
contract (core/driver.py). Drivers never import each other, nor the uplink."""
