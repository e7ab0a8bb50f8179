"""What we subscribed in a persistent MQTT session, remembered across process restarts.

Both MQTT clients of the gateway (the uplink's command subscription, and each MQTT source) connect
with `clean_start=False` and a stable client id, so the broker keeps their session — subscriptions
and the QoS 1/2 messages queued for them — while the gateway restarts. The broker's session then
holds the subscriptions of the *previous* configuration: this file says which they were, so a
(re)connect can reconcile them with the configured ones:

  * CONNACK session_present=False (new session, or it expired): subscribe to everything;
  * session_present=True and the file describes this session: UNSUBSCRIBE what is no longer
    configured, SUBSCRIBE what is new or has other options, leave the rest alone (no retained
    messages sent again, no queued message lost);
  * session_present=True and no usable file: subscribe to everything (idempotent for the broker).

An entry is added on a successful SUBACK and removed on UNSUBACK (or a refused SUBACK), and the file
is written by atomic replace in the WAL directory (`sessions/<name>.json`), keyed by broker and
client id. A stale entry costs one UNSUBSCRIBE or SUBSCRIBE too many, never a lost subscription.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.core.durable import atomic_write

log = logging.getLogger(__name__)

Options = dict[str, Any]  # JSON-able subscription options: {"qos": 1, "rh": 0, "rap": true, "nl": true, "id": 3}


@dataclass
class SessionState:
    key: str  # "host:port client_id": another broker or client id is another session
    path: Path | None = None
    subs: dict[str, Options] = field(default_factory=dict)
    known: bool = False  # the file described this session (so `subs` is what the broker holds)
    next_id: int = 1  # subscription identifiers are never reused within a session

    @classmethod
    def load(cls, state_dir: str | Path | None, name: str, key: str) -> SessionState:
        if state_dir is None:
            return cls(key)
        path = Path(state_dir) / "sessions" / f"{name}.json"
        st = cls(key, path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return st
        except (OSError, ValueError) as e:
            log.warning("session state %s unreadable (%s): subscribing to everything", path, e)
            return st
        if not isinstance(data, dict) or data.get("key") != key or not isinstance(data.get("subs"), dict):
            return st  # another broker or client id: that session is not ours any more
        st.subs = {str(f): dict(o) for f, o in data["subs"].items() if isinstance(o, dict)}
        st.next_id = max([int(data.get("next_id", 1)), *(int(o.get("id") or 0) + 1 for o in st.subs.values())])
        st.known = True
        return st

    def ident(self, filt: str) -> int:
        """A subscription identifier for `filt`: the one it had in this session, else a fresh one."""
        old = self.subs.get(filt, {}).get("id")
        if isinstance(old, int) and old > 0:
            return old
        n = self.next_id
        self.next_id += 1
        return n

    def plan(self, wanted: dict[str, Options], session_present: bool) -> tuple[list[str], list[str]]:
        """(filters to unsubscribe, filters to subscribe) after a CONNACK."""
        if not session_present:
            if self.subs:
                self.subs = {}
                self.save()
            return [], list(wanted)
        if not self.known:
            return [], list(wanted)
        gone = [f for f in self.subs if f not in wanted]
        new = [f for f, o in wanted.items() if _opts(self.subs.get(f)) != _opts(o)]
        return gone, new

    def subscribed(self, filt: str, opts: Options) -> None:
        self.subs[filt] = dict(opts)
        self.save()

    def unsubscribed(self, filt: str) -> None:
        if self.subs.pop(filt, None) is not None:
            self.save()

    def granted(self, filt: str) -> int | None:
        g = self.subs.get(filt, {}).get("granted")
        return g if isinstance(g, int) else None

    def save(self) -> None:
        self.known = True
        if self.path is None:
            return
        body = {"key": self.key, "next_id": self.next_id, "subs": self.subs}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, json.dumps(body, indent=1, sort_keys=True).encode())
        except OSError as e:
            log.error("session state %s cannot be written: %s", self.path, e)


def _opts(o: Options | None) -> Options | None:
    return None if o is None else {k: v for k, v in o.items() if k != "granted"}
