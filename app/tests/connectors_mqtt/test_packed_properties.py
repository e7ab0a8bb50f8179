"""PUBLISH properties packed by net.mqtt are the bytes paho's own Properties.pack() makes."""

from __future__ import annotations

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge_gateway.net.mqtt import pack_properties


@pytest.mark.parametrize(
    "user",
    [
        [("seq_first", "1"), ("seq_last", "32"), ("count", "32"), ("encoding", "zstd"), ("cover", "1-32")],
        [("dup", "possible")],
        [("k" * 200, "ü" * 100)],  # multi-byte UTF-8, a property length above 127 (two-byte varint)
        [(f"k{i}", "v" * 300) for i in range(600)],  # a length above 16383 (three-byte varint)
    ],
)
def test_same_bytes_as_paho(user: list[tuple[str, str]]) -> None:
    p = Properties(PacketTypes.PUBLISH)
    p.ContentType = "application/json"
    p.UserProperty = user
    assert pack_properties("application/json", user) == p.pack()


def test_string_too_long_refused() -> None:
    with pytest.raises(ValueError, match="65535"):
        pack_properties(None, [("k", "v" * 70000)])
