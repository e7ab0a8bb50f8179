"""Connector plugins: the transports under the delivery runner (delivery/contract.py), one folder each.
A connector imports delivery's contract, config.model and net/, never a driver or another connector."""
