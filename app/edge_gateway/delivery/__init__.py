"""Delivery: the one runner that moves WAL frames to a connector and cloud commands back (see README.md)."""
