"""The OPC UA driver plugin (`proto: opcua`, scheme `opc.tcp`), on asyncua inside its worker thread."""
