"""The in-flight window: batches published and not yet finally acknowledged, in seq order.

MQTT acks can complete out of order (a QoS1 PUBACK may overtake an older QoS2 PUBCOMP, a
refused batch is retried after younger ones were accepted), but the WAL cursor is one number:
it may only move to the end of the longest acknowledged prefix. `settle()` marks one batch,
`advance()` pops that prefix and returns the seq the cursor can ack.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass

from edge_gateway.delivery.batcher import Batch


@dataclass(slots=True)
class Flight:
    batch: Batch
    qos: int
    mid: int | None = None
    sent_at: float = 0.0
    done: bool = False
    tries: int = 0
    payload: bytes = b""  # encoded once, reused by retries
    dup: bool = False  # encoded with dup=possible marks


class Window:
    def __init__(self, size: int) -> None:
        self.size = max(1, size)
        self._flights: deque[Flight] = deque()
        self._by_mid: dict[int, Flight] = {}
        self.open = 0  # flights not done

    def __len__(self) -> int:
        return len(self._flights)

    @property
    def full(self) -> bool:
        return self.open >= self.size

    def add(self, flight: Flight) -> None:
        self._flights.append(flight)
        if not flight.done:
            self.open += 1

    def track(self, flight: Flight, mid: int) -> None:
        if flight.mid is not None:
            self._by_mid.pop(flight.mid, None)
        flight.mid = mid
        flight.sent_at = time.monotonic()
        self._by_mid[mid] = flight

    def owns(self, mid: int) -> bool:
        return mid in self._by_mid

    def settle(self, mid: int) -> Flight | None:
        """The broker finally acknowledged `mid`; None when it is not one of ours (status, cmd acks)."""
        flight = self._by_mid.pop(mid, None)
        if flight is not None and not flight.done:
            flight.done = True
            self.open -= 1
        return flight

    def forget(self, mid: int) -> Flight | None:
        """A refused publish: the batch stays in the window, waiting to be sent again."""
        return self._by_mid.pop(mid, None)

    def advance(self) -> int | None:
        """Pop the acknowledged prefix; the last seq it covers, or None when it is empty."""
        last = None
        flights = self._flights
        while flights and flights[0].done:
            last = flights.popleft().batch.last
        return last

    def unsettled(self) -> list[Flight]:
        return [f for f in self._flights if not f.done]

    def clear(self) -> None:
        self._flights.clear()
        self._by_mid.clear()
        self.open = 0
