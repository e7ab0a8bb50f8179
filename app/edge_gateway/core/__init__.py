"""The core every layer shares and that imports nothing else of the app: the Frame, the datatype
table, the plugin contracts (driver.py) and the plugin registry (registry.py)."""
