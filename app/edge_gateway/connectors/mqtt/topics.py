"""Topic templates of connector.yml with {tenant} and {device} filled in.

The loader has already checked the placeholders ({tag} in topic/cmd_topic, {seq} in ack_topic, no
wildcards), so filling is plain substitution. The command subscription turns `{tag}` into `+`, so a
tag is exactly one topic level; the seeds' `/edge/cmd/{tag}` form works as well as the default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from edge_gateway.config.model import Connector


def _fill(template: str, c: Connector) -> str:
    return template.replace("{tenant}", c.tenant).replace("{device}", c.device)


@dataclass(frozen=True)
class Topics:
    frame: str  # still holds {tag}
    batch: str
    cmd_filter: str
    ack: str  # still holds {seq}
    status: str
    _cmd_re: re.Pattern[str]

    @classmethod
    def of(cls, c: Connector) -> Topics:
        cmd = _fill(c.cmd_topic, c)
        before, _, after = cmd.partition("{tag}")
        return cls(
            frame=_fill(c.topic, c),
            batch=_fill(c.batch_topic, c),
            cmd_filter=before + "+" + after,
            ack=_fill(c.ack_topic, c),
            status=_fill(c.status_topic, c),
            _cmd_re=re.compile(re.escape(before) + "([^/]+)" + re.escape(after) + r"\Z"),
        )

    def frame_topic(self, tag: str) -> str:
        return self.frame.replace("{tag}", tag)

    def ack_topic(self, seq: int) -> str:
        return self.ack.replace("{seq}", str(seq))

    def cmd_tag(self, topic: str) -> str | None:
        m = self._cmd_re.match(topic)
        return m.group(1) if m else None
