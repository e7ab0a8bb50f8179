"""The collect() helpers fail loudly: a slow start must not reach a test as a short list (and then as an
unrelated IndexError, as test_remote_schemes once did)."""

from __future__ import annotations

import pytest

from edge_gateway.bus.framebus import FrameBus
from edge_gateway.core.frame import Frame

from ..drivers_mqtt_source.conftest import collect as collect_mqtt
from .conftest import collect, drain_for


def _frame(tag: str, q: str = "good") -> Frame:
    return Frame(seq=0, ts=0, tag=tag, value=1, q=q)


def test_collect_returns_what_it_waited_for(bus: FrameBus) -> None:
    bus.publish([_frame("a"), _frame("b", "bad:timeout"), _frame("c")])
    got = collect(bus, 1, pred=lambda f: f.q == "bad:timeout")
    assert [f.tag for f in got] == ["b"]


def test_collect_fails_saying_what_it_waited_for_and_what_came(bus: FrameBus) -> None:
    bus.publish([_frame("x", "bad:disconnected"), _frame("y", "bad:disconnected")])
    with pytest.raises(AssertionError) as err:
        collect(bus, 1, timeout=0.2, pred=lambda f: f.q == "good")
    text = str(err.value)
    assert "waited 0.2s for 1 frame(s) matching a lambda at test_collect.py:" in text
    assert "got 0 of 1" in text
    assert "2 other frame(s) arrived, last: x=1 q=bad:disconnected, y=1 q=bad:disconnected" in text


def test_collect_short_count_names_the_caller_s_wait(bus: FrameBus) -> None:
    bus.publish([_frame("a")])
    with pytest.raises(AssertionError, match=r"waited 0.2s for both tags, got 1 of 2\n  last matching: a=1 q=good"):
        collect(bus, 2, timeout=0.2, what="both tags")


def test_drain_for_may_come_back_empty(bus: FrameBus) -> None:
    assert drain_for(bus, 0.1) == []


def test_mqtt_collect_fails_saying_what_came(bus: FrameBus) -> None:
    bus.publish([_frame("t")])
    wanted = r"waited 0.2s for 3 frame\(s\) on the bus, got 1 of 3 \(last: t=1 q=good\)"
    with pytest.raises(AssertionError, match=wanted):
        collect_mqtt(bus, 3, timeout=0.2)
