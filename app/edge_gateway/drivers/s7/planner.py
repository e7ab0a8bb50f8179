"""The S7 read planner: which reads go on the wire each cycle.

Tags of one area (and, for DB, one data block) are sorted by byte offset and merged greedily into one
range while the merged range still fits one response PDU (the negotiated PDU length minus the S7
response headers) and the gap it swallows is smaller than what a separate request costs
(GAP_BYTES: a LAN round trip is worth far more than a few spare bytes). Ranges are then packed into
multi-variable reads (`ReadMultiVars`): as many ranges per request as fit the request and response
PDUs and the protocol's 20 items. The plan is deterministic: the same tags give the same requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

GAP_BYTES = 64
READ_HEADER = 18  # response: S7 header (12) + function/count (2) + item header (4)
ITEM_REQUEST = 12  # one item's address in a read request
ITEM_RESPONSE = 4  # one item's return code, transport size and length in the response (+ a fill byte if odd)
REQUEST_HEADER = 12  # S7 header (10) + function/count (2) — the request's parameter header
MAX_ITEMS = 20


@dataclass(frozen=True)
class Range:
    area: str
    db: int
    start: int
    size: int
    tags: tuple[Any, ...]  # TagItems whose address lies inside

    def describe(self) -> dict[str, object]:
        return {"area": self.area, "db": self.db, "start": self.start, "size": self.size,
                "tags": [t.tag for t in self.tags]}  # fmt: skip


def max_range(pdu: int) -> int:
    """The largest byte range one read item can return in a PDU of `pdu` bytes."""
    return max(1, pdu - READ_HEADER)


def ranges(tags: list[Any], pdu: int) -> list[Range]:
    """Merge the tags' addresses into ranges; a tag larger than a PDU gets a range of its own (snap7's
    read_area splits it)."""
    limit = max_range(pdu)
    groups: dict[tuple[str, int], list[Any]] = {}
    for t in tags:
        groups.setdefault((t.address.area, t.address.db), []).append(t)
    out: list[Range] = []
    for (area, db), items in sorted(groups.items()):
        group: list[Any] = []
        start = end = 0
        for t in sorted(items, key=lambda t: (t.address.start, t.tag)):
            a, b = t.address.start, t.address.end
            if group:
                new_end = max(end, b)
                if new_end - start <= limit and a - end < GAP_BYTES:
                    group.append(t)
                    end = new_end
                    continue
                out.append(Range(area, db, start, end - start, tuple(group)))
            group, start, end = [t], a, b
        if group:
            out.append(Range(area, db, start, end - start, tuple(group)))
    return out


def requests(rs: list[Range], pdu: int) -> list[list[Range]]:
    """Pack ranges into multi-variable read requests that fit the PDU both ways."""
    out: list[list[Range]] = []
    cur: list[Range] = []
    req = resp = REQUEST_HEADER
    for r in rs:
        r_resp = ITEM_RESPONSE + r.size + (r.size & 1)
        if cur and (len(cur) >= MAX_ITEMS or req + ITEM_REQUEST > pdu or resp + r_resp > pdu):
            out.append(cur)
            cur, req, resp = [], REQUEST_HEADER, REQUEST_HEADER
        cur.append(r)
        req += ITEM_REQUEST
        resp += r_resp
    if cur:
        out.append(cur)
    return out


def plan(tags: list[Any], pdu: int) -> list[list[Range]]:
    return requests(ranges(tags, pdu), pdu)
