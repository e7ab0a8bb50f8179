"""The request planner: which reads go on the wire for one unit, and in what shape.

Points of one table (function code) are sorted by address and merged greedily into one
read while (a) the merged read stays within `max_regs_per_req` (2000 bits for coils and
discretes) and (b) the gap's extra bytes cost less wire time than a separate request would:
a request costs its own frame, the response header, two silent intervals and the
turnaround — all in character times at the line's baud rate. For Modbus/TCP a request
costs a network round trip, modelled as TCP_REQUEST_COST bytes, so gaps up to that are read.

A device may refuse a read that spans addresses it does not have (exception 0x02). The
line then forbids merges across every boundary inside that read (`Plan.forbid`) and
re-plans: the valid points are still read, and the lesson is kept for that unit.
The plan is deterministic: the same variables give the same requests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from edge_gateway.drivers.modbus import rtu
from edge_gateway.drivers.modbus.codec import BlockDecoder
from edge_gateway.drivers.modbus.model import Endpoint, Variable
from edge_gateway.drivers.modbus.pdu import MAX_BITS, TABLE_FC, read_request

TCP_REQUEST_COST = 250.0  # bytes: a LAN round trip costs far more than reading a few spare registers
RTU_REQUEST_BYTES = 8  # unit, fc, addr, count, crc
RTU_RESPONSE_OVERHEAD = 5  # unit, fc, byte count, crc


@dataclass(frozen=True)
class Read:
    fc: int
    start: int
    count: int
    variables: tuple[Variable, ...]

    @cached_property
    def decoder(self) -> BlockDecoder:
        """The answer → frames, compiled on the read's first answer and kept as long as the plan."""
        return BlockDecoder(self.start, self.variables, self.fc in (1, 2))

    @cached_property
    def request(self) -> bytes:
        """The request PDU, the same on every poll."""
        return read_request(self.fc, self.start, self.count)

    def describe(self) -> dict[str, object]:
        return {"fc": self.fc, "start": self.start, "count": self.count, "tags": [v.tag for v in self.variables]}


def request_cost(ep: Endpoint) -> float:
    """What one more request costs, in bytes of wire time."""
    if not ep.rtu_framing:
        return TCP_REQUEST_COST
    silences = 2 * rtu.silent_interval(ep) + ep.turnaround
    return RTU_REQUEST_BYTES + RTU_RESPONSE_OVERHEAD + silences / rtu.char_time(ep)


@dataclass
class Planner:
    endpoint: Endpoint
    max_regs: int
    forbidden: set[tuple[int, int]] = field(default_factory=set)  # (fc, address): never merge across it

    def plan(self, variables: tuple[Variable, ...]) -> list[Read]:
        cost = request_cost(self.endpoint)
        out: list[Read] = []
        by_fc: dict[int, list[Variable]] = {}
        for v in variables:
            if v.readable:
                by_fc.setdefault(TABLE_FC[v.address.type], []).append(v)
        for fc in sorted(by_fc):
            bits = fc in (1, 2)
            limit = MAX_BITS if bits else self.max_regs
            group: list[Variable] = []
            start = end = 0
            for v in sorted(by_fc[fc], key=lambda v: (v.address.addr, v.tag)):
                a, b = v.address.addr, v.address.end
                if group:
                    gap = max(0, a - end)
                    gap_bytes = gap / 8 if bits else 2 * gap
                    new_end = max(end, b)
                    blocked = (fc, a) in self.forbidden
                    if new_end - start <= limit and gap_bytes < cost and not blocked:
                        group.append(v)
                        end = new_end
                        continue
                    out.append(Read(fc, start, end - start, tuple(group)))
                group, start, end = [v], a, b
            if group:
                out.append(Read(fc, start, end - start, tuple(group)))
        return out

    def forbid(self, read: Read) -> bool:
        """After exception 0x02 on `read`: forbid merging across each boundary inside it.
        Returns False when the read holds one variable only (its addresses are the problem)."""
        if len(read.variables) < 2:
            return False
        for v in read.variables[1:]:
            self.forbidden.add((read.fc, v.address.addr))
        return True


def wire_chars(read: Read, ep: Endpoint) -> float:
    """Character times one read occupies on an RTU line (request, response, silences, turnaround)."""
    data = (read.count + 7) // 8 if read.fc in (1, 2) else 2 * read.count
    return request_cost(ep) + data
