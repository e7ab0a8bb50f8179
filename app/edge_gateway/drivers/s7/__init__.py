"""The Siemens S7 driver (python-snap7's pure-Python client): `scheme: s7`, `proto: s7`. See README.md."""
