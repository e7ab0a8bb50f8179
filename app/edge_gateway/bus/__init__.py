"""FrameBus (bounded deque) and the segment-file WAL behind it: the source of truth for the uplink."""
