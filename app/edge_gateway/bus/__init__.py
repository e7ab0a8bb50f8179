"""FrameBus (bounded deque) and the segment-file WAL behind it: the source of truth for the uplink.

line threads ─publish─► FrameBus ─drain─► WalWriter ─append/commit─► Wal (segments)
                                                                      └─► Cursor.read/ack (uplink)
"""

from edge_gateway.bus.writer import WalWriter, open_bus_and_wal

__all__ = ["WalWriter", "open_bus_and_wal"]
