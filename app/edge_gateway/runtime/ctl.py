"""`edge-ctl`: talk to a running gateway over its control socket.

    edge-ctl [--socket PATH | --config DIR] [--json] [--timeout S] [--color WHEN] status
    edge-ctl ... tail                       live committed frames until Ctrl-C
    edge-ctl ... connector mqtt stats       uplink figures
    edge-ctl ... connector mqtt reconnect   finish in-flight batches, reconnect with fresh credentials/TLS files
    edge-ctl ... reload                     re-read the configuration and apply the smallest change

The socket is `control.socket` of DIR/gateway.yml: only that one key of that one file is read (the
directory is not validated, so `status`, `tail` and `reload` work right after a broken edit and
`reload` reports it); the default is /run/edge-gateway/control.sock. Output is for people (ages,
sizes, colour on a terminal unless NO_COLOR is set); `--json` prints the raw answer.
Exit codes: see EXIT_CODES.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import textwrap
import time
from dataclasses import dataclass
from typing import Any, TextIO

from edge_gateway.config.clihelp import Help
from edge_gateway.runtime.control import request
from edge_gateway.runtime.gwfile import DEFAULT_SOCKET, control_socket

EXIT_CODES = """\
exit codes:
  0  done: the answer is printed (reload: applied or unchanged; reconnect: requested)
  1  the gateway answered but refused or failed the request: reload found the new
     configuration invalid (the running one is kept) or rolled it back; unknown
     connector; no uplink running
  2  no gateway answers on the socket (not running, wrong --socket/--config, no
     permission), or the command line is wrong
"""

DESCRIPTION = f"""\
Control a running edge-gateway over its local control socket.

The socket is control.socket of DIR/gateway.yml with --config (only that key is
read: a configuration broken by an edit does not stop edge-ctl), --socket PATH,
or the default {DEFAULT_SOCKET}.
Human-readable output (colour on a terminal); --json prints the raw answer.
"""


TIMEOUT = 10.0
RELOAD_TIMEOUT = 130.0  # the gateway gives a reload up to 120 s (RELOAD_STALE_AFTER) before it answers


def _fill(text: str) -> str:
    return textwrap.fill(text, 80, break_on_hyphens=False)


def parser() -> argparse.ArgumentParser:
    h = Help(EXIT_CODES)
    p = h.parser("edge-ctl", DESCRIPTION)
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help=f"the control socket (default {DEFAULT_SOCKET})")
    where.add_argument(
        "--config",
        metavar="DIR",
        help="take the socket from control.socket in DIR/gateway.yml (the rest of DIR is not read)",
    )
    p.add_argument("--json", action="store_true", help="print the raw JSON answer (ms timestamps, byte counts)")
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"how long to wait for the gateway's answer (default {TIMEOUT:g}; {RELOAD_TIMEOUT:g} for reload, "
        "which answers once the change is live or rolled back)",
    )
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour the output: auto (default) on a terminal unless NO_COLOR is set",
    )
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    h.command(
        sub,
        "status",
        "health, lines and drivers, MQTT sources, bus, WAL, uplink, config revision",
        _fill(
            "What the gateway runs and whether it does its job: health is healthy, degraded (with "
            "the reasons) or failing (a worker is dead or hung; systemd restarts the service)."
        ),
    )
    h.command(
        sub,
        "tail",
        "stream committed frames until Ctrl-C",
        _fill(
            "Every frame as the WAL commits it: seq, time, tag, value, quality. A terminal too slow "
            "to keep up sees '... N frames not shown' instead of slowing the gateway."
        ),
    )
    h.command(
        sub,
        "reload",
        "re-read the configuration directory and apply the smallest change",
        _fill(
            "Load and validate the gateway's configuration directory and apply what changed. "
            "An invalid configuration changes nothing (its problems are printed, exit 1); a change "
            "that fails while applying is rolled back (the error is printed, exit 1)."
        ),
    )
    con = h.command(
        sub,
        "connector",
        "uplink commands: stats, reconnect",
        _fill(
            "stats: acked seq, backlog, in-flight batches, sizes, latency. reconnect: let in-flight "
            "batches finish, then reconnect with a fresh client (new password file, TLS files)."
        ),
    )
    con.add_argument("name", help="mqtt (or the connector id from connector.yml)")
    con.add_argument("action", choices=("stats", "reconnect"), help="stats: figures; reconnect: fresh connection")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    style = Style.for_stream(sys.stdout, args.color)
    path = args.socket or DEFAULT_SOCKET
    if args.config:
        path, note = control_socket(args.config)
        if note:
            print(f"edge-ctl: {note}", file=sys.stderr)
    if args.timeout is None:
        args.timeout = RELOAD_TIMEOUT if args.command == "reload" else TIMEOUT
    try:
        if args.command == "tail":
            return tail(path, args.json, style)
        if args.command == "connector":
            answer = request(path, f"connector.{args.action}", args.timeout, name=args.name)
        else:
            answer = request(path, args.command, args.timeout)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        return _no_gateway(path, e)
    except TimeoutError:
        print(f"edge-ctl: {path}: no answer within {args.timeout:g} s (--timeout)", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as e:
        print(f"edge-ctl: {path}: {e}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"edge-ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer.get("result")
    r = result if isinstance(result, dict) else {}
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "status":
        print(render_status(r, style))
    elif args.command == "reload":
        print(render_reload(r, style))
    elif args.command == "connector" and args.action == "reconnect":
        print(render_reconnect(r))
    elif args.command == "connector":
        print(render_connector_stats(r))
    else:
        print(render_mapping(result))
    if args.command == "reload" and not r.get("applied"):
        return 1
    if args.command == "connector" and args.action == "reconnect" and not r.get("requested"):
        return 1
    return 0


def _no_gateway(path: str, e: OSError) -> int:
    print(
        f"edge-ctl: no gateway on {path}: {e.strerror} (is edge-gateway running? see --socket/--config)",
        file=sys.stderr,
    )
    return 2


# -- terminal style --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Style:
    """ANSI colour when writing to a terminal (or `--color always`); nothing at all otherwise."""

    colour: bool = False

    @classmethod
    def for_stream(cls, stream: TextIO, when: str = "auto") -> Style:
        if when == "always":
            return cls(True)
        if when == "never" or os.environ.get("NO_COLOR"):  # https://no-color.org: any non-empty value
            return cls(False)
        isatty = getattr(stream, "isatty", None)
        return cls(bool(isatty and isatty()) and os.environ.get("TERM") != "dumb")

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.colour and text else text

    def good(self, text: str) -> str:
        return self.paint(text, "32")

    def warn(self, text: str) -> str:
        return self.paint(text, "33")

    def bad(self, text: str) -> str:
        return self.paint(text, "1;31")

    def dim(self, text: str) -> str:
        return self.paint(text, "2")

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def state(self, text: str, width: int = 0) -> str:
        """A state word, padded first (escape codes take no columns), coloured by what it means."""
        padded = f"{text:<{width}}"
        if text in GOOD_STATES:
            return self.good(padded)
        if text in BAD_STATES:
            return self.bad(padded)
        return self.warn(padded)


GOOD_STATES = {"ok", "up", "connected", "healthy", "good", "applied", "unchanged"}
BAD_STATES = {"fault", "down", "dead", "failing", "DEAD", "invalid", "rollback", "stopped"}
PLAIN = Style(False)


# -- human units -----------------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """42.0 s, 12 min, 1h 02m, 3d 04h: as precise as a person reading a status needs."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min"
    if s < 86400:
        return f"{int(s // 3600)}h {int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d {int(s % 86400 // 3600):02d}h"


def uptime(seconds: float) -> str:
    """Seconds to minutes and seconds below an hour (`12m 05s`), else as `duration` (`1h 02m`)."""
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{int(s)}s"
    if s < 3600:
        return f"{int(s // 60)}m {int(s % 60):02d}s"
    return duration(s)


def ago(ms: Any, now_ms: int) -> str:
    """`3.2 s ago` for an epoch-ms timestamp; `never` for 0/None."""
    if not isinstance(ms, int | float) or ms <= 0:
        return "never"
    return f"{duration((now_ms - ms) / 1000)} ago"


def size(n: Any) -> str:
    """512 B, 12.3 KiB, 4.0 MiB, 1.2 GiB."""
    if not isinstance(n, int | float):
        return "-"
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _dash(v: Any) -> str:
    return "-" if v is None or v == "" else str(v)


# -- commands --------------------------------------------------------------------------------------------


def render_reload(r: dict[str, Any], style: Style = PLAIN) -> str:
    rev = str(r.get("revision") or "")[:12]
    if r.get("result") == "invalid":
        return "\n".join(
            [
                style.bad("invalid configuration, the running one is kept:"),
                *(f"  {p}" for p in r.get("problems", [])),
            ]
        )
    if r.get("result") == "rollback":
        return f"{style.bad('rolled back')}: applying {rev} failed, the running configuration is kept: {r.get('error')}"
    out = [f"{style.state(str(r.get('result')))}: revision {rev}", *(f"  {c}" for c in r.get("changes", []))]
    if r.get("restart_required"):
        out.append(f"  needs a restart to take effect: {', '.join(r['restart_required'])}")
    return "\n".join(out)


def render_reconnect(r: dict[str, Any]) -> str:
    name, broker = r.get("connector", "the uplink"), r.get("broker", "the broker")
    inflight = r.get("inflight")
    wait = f"its {inflight} in-flight batch(es) finish" if inflight else "in-flight batches finish"
    now = "" if r.get("state") == "connected" else f" (it is {r.get('state')} now)"
    return (
        f"reconnect requested: {name}{now} lets {wait} (a few seconds at most), then connects to {broker} "
        "again with a fresh client, reading its password and TLS files anew; nothing is lost, unacknowledged "
        "frames are resent from the WAL. Watch it with `edge-ctl connector mqtt stats`."
    )


def render_connector_stats(r: dict[str, Any]) -> str:
    shown = dict(r)
    for k in ("out_bytes",):
        if isinstance(shown.get(k), int | float):
            shown[k] = f"{size(shown[k])} ({shown[k]} bytes)"
    if isinstance(shown.get("connected_for_s"), int | float):
        shown["connected_for_s"] = duration(shown["connected_for_s"])
    return render_mapping(shown)


def tail(path: str, raw: bool, style: Style = PLAIN) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        s.close()
        return _no_gateway(path, e)
    try:
        s.sendall(b'{"cmd":"tail"}\n')
        f = s.makefile("rb")
        head = json.loads(f.readline() or b"{}")
        if not head.get("ok"):
            print(f"edge-ctl: {head.get('error', 'the gateway closed the connection')}", file=sys.stderr)
            return 1
        for line in f:
            if raw:
                sys.stdout.write(line.decode())
            else:
                sys.stdout.write(render_frame(json.loads(line), style) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `edge-ctl tail | head`
        return 0
    finally:
        s.close()
    return 0


# -- rendering ---------------------------------------------------------------------------------------------


def render_frame(d: dict[str, Any], style: Style = PLAIN) -> str:
    if "dropped" in d:
        return style.warn(f"... {d['dropped']} frames not shown (terminal too slow)")
    ts = d.get("ts", 0)
    t = time.strftime("%H:%M:%S", time.localtime(ts / 1000)) + f".{ts % 1000:03d}"
    kind = "" if d.get("kind", "data") == "data" else f"  [{d['kind']}]"
    q = str(d.get("q"))
    quality = style.good(q) if q == "good" else style.bad(q) if q.startswith("bad") else style.warn(q)
    seq, tag, value = f"{d.get('seq'):>10}", f"{d.get('tag')!s:<28}", f"{_value(d.get('value'))!s:<16}"
    return f"{style.dim(seq)}  {t}  {style.bold(tag)} {value} {quality}{kind}"


def _value(v: Any) -> Any:
    if isinstance(v, dict) and len(v) == 1:
        ((k, x),) = v.items()
        return f"<{k}:{x}>"
    if isinstance(v, float):
        return f"{v:.6g}"
    return v


def render_mapping(d: Any, indent: int = 0) -> str:
    if not isinstance(d, dict):
        return json.dumps(d, default=str)
    width = max((len(str(k)) for k in d), default=0)
    out = []
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.append(" " * indent + f"{k}:")
            out.append(render_mapping(v, indent + 2))
        else:
            out.append(" " * indent + f"{str(k):<{width}} : {'-' if v is None else v}")
    return "\n".join(out)


def _widths(rows: list[list[str]]) -> list[int]:
    n = max((len(r) for r in rows), default=0)
    return [max((len(r[i]) for r in rows if i < len(r)), default=0) for i in range(n)]


def _row(r: list[str], widths: list[int], indent: int, styles: dict[int, Any] | None = None) -> str:
    """One row of aligned columns; `styles[col](text, width)` pads then paints (escapes take no columns)."""
    cells = []
    for i, cell in enumerate(r):
        w = 0 if i == len(r) - 1 else widths[i]
        paint = (styles or {}).get(i)
        cells.append(paint(cell, w) if paint else f"{cell:<{w}}")
    return (" " * indent + "  ".join(cells)).rstrip()


def _table(rows: list[list[str]], indent: int, styles: dict[int, Any] | None = None) -> list[str]:
    widths = _widths(rows)
    return [_row(r, widths, indent, styles) for r in rows]


def _driver_details(d: dict[str, Any], now: int) -> str:
    parts = []
    if d.get("state") == "fault" or d.get("failures"):
        parts.append(f"{d.get('failures')} failed cycle(s)")
    parts.append(f"last good read {ago(d.get('last_ok_ms'), now)}")
    parts.append(f"polls {d.get('polls')}")
    if d.get("skipped"):
        parts.append(f"skipped {d['skipped']}")
    parts.append(f"{d.get('requests')} request(s)/cycle")
    parts.append(f"(re)started {ago(d.get('since_ms'), now)}")
    if d.get("last_error"):
        parts.append(f"last error: {d['last_error']}")
    return ", ".join(parts)


def render_status(s: dict[str, Any], style: Style = PLAIN) -> str:
    now = int(s.get("time_ms") or time.time() * 1000)
    out = [
        style.bold(f"edge-gateway {s.get('version')}") + f"  pid {s.get('pid')}  up {uptime(s.get('uptime_s') or 0)}",
    ]
    health = s.get("health")
    if isinstance(health, dict):
        state = str(health.get("state"))
        out.append(f"health   {style.state(state)}")
        out += [f"         - {reason}" for reason in health.get("reasons", [])]
    live = s.get("liveness") or {}
    sup = s.get("supervisor")
    if not health and not live and sup:  # a gateway from before `health`
        out.append(
            "health   " + ("healthy" if sup.get("healthy") else "DEGRADED: " + "; ".join(sup.get("problems", [])))
        )
    if live:
        if live.get("ok"):
            out.append(f"liveness {style.good('ok')}: every worker thread alive and making progress (watchdog fed)")
        else:
            out.append(f"liveness {style.bad('FAILING')}: " + "; ".join(live.get("problems", [])))
    out.append(f"config   {s.get('config')}  (revision {str(s.get('revision'))[:12]})")
    src = s.get("config_source")
    if isinstance(src, dict):  # from etcd (runtime/fleet.py)
        link = style.good("connected") if src.get("connected") else style.bad("UNREACHABLE")
        where = "  running on its CACHE" if src.get("from_cache") else ""
        rev = src.get("applied_revision")
        out.append(f"etcd     {src.get('url')} as {src.get('gateway_id')}: {link}, revision {rev}{where}")
        rejected = src.get("rejected")
        if isinstance(rejected, dict):
            out.append(f"         refused revision {rejected.get('revision')} ({rejected.get('result')}):")
            out += [f"         - {p}" for p in rejected.get("problems", [])]
    last = s.get("last_reload")
    if last:
        detail = last.get("error") or "; ".join(last.get("problems") or []) or ", ".join(last.get("changes") or [])
        out.append(
            f"reload   {style.state(str(last.get('result')))} ({last.get('reason')})"
            + (f": {detail}" if detail else "")
        )
    lines = s.get("lines") or {}
    heads: dict[str, list[str]] = {}
    units: dict[str, list[list[str]]] = {}
    for ep_id, line in lines.items():
        state = line.get("state") or ("up" if line.get("alive") else "dead")
        heads[ep_id] = [ep_id, str(line.get("scheme")), str(line.get("address")), state]
        if not line.get("alive", True):
            heads[ep_id].append(f"no heartbeat for {duration(line.get('heartbeat_age_s') or 0)}")
        drivers = line.get("drivers")
        units[ep_id] = [
            [d_id, str(d.get("state", "?")), _driver_details(d, now)] if isinstance(d, dict) else [d_id, "?", str(d)]
            for d_id, d in (drivers.items() if isinstance(drivers, dict) else ())
        ]
    if lines:
        out.append("lines")
    head_w = _widths(list(heads.values()))
    unit_w = _widths([r for rows in units.values() for r in rows])
    for ep_id in lines:
        out.append(_row(heads[ep_id], head_w, 2, {3: style.state}))
        out += [_row(r, unit_w, 4, {1: style.state}) for r in units[ep_id]]
    out += render_sources(s.get("sources") or {}, style)
    bus = s.get("bus") or {}
    paused = "  " + style.warn("PAUSED (lines skip polls until the WAL catches up)") if bus.get("paused") else ""
    out.append(f"bus      {bus.get('used')}/{bus.get('capacity')} frames held{paused}")
    wal = s.get("wal") or {}
    if wal:
        out.append("wal      " + render_wal(wal, style))
    up = s.get("uplink")
    if up:
        state = connector_state(up)
        since = f" for {duration(up['connected_for_s'])}" if up.get("connected_for_s") is not None else ""
        out.append(
            f"uplink   {up.get('connector')} {style.state(state)}{since}  {up.get('broker')}"
            f"  qos {up.get('qos_effective')}"
        )
        out.append(
            f"         acked seq {up.get('acked_seq')}  backlog {up.get('lag')} frames  inflight {up.get('inflight')}"
            f"  sent {up.get('frames')} frames in {up.get('batches')} batches, {size(up.get('out_bytes'))}"
        )
        if up.get("last_error"):
            out.append(f"         last error: {up['last_error']}")
    return "\n".join(out)


def connector_state(up: dict[str, Any]) -> str:
    """`idle` after a failed attempt is a broker that is down (retried with backoff)."""
    state = str(up.get("state"))
    return "down" if state == "idle" and up.get("last_error") else state


def render_wal(wal: dict[str, Any], style: Style = PLAIN) -> str:
    parts = []
    if "bytes" in wal:
        parts.append(f"{size(wal['bytes'])} in {wal.get('segments')} segment(s)")
    if "committed_seq" in wal:
        parts.append(f"committed seq {wal['committed_seq']}")
    if "first_seq" in wal:
        parts.append(f"oldest seq {wal['first_seq']}")
    if wal.get("fault"):
        parts.append(style.bad(f"FAULT {wal['fault']}"))
    skip = {"bytes", "segments", "committed_seq", "first_seq", "fault", "next_seq"}
    parts += [
        f"{k} {v}"
        for k, v in wal.items()
        if k not in skip and v not in (None, 0, "") and not isinstance(v, dict | list)
    ]
    return ", ".join(parts)


def render_sources(sources: dict[str, Any], style: Style = PLAIN) -> list[str]:
    """MQTT source endpoints, their drivers' health and counters, and each subscription."""
    if not sources:
        return []
    out = ["mqtt sources"]
    for ep_id, src in sources.items():
        state = str(src.get("state", "?")) if src.get("alive", True) else "dead"
        out += _table(
            [[ep_id, str(src.get("broker", "")), state, f"session {src.get('session', '?')}"]], 2, {2: style.state}
        )
        if src.get("last_error") and not src.get("connected"):
            out.append(f"    last error: {src['last_error']}")
        for d_id, d in (src.get("drivers") or {}).items():
            counts = ", ".join(
                f"{k}={d.get(k)}" for k in ("received", "frames", "dropped", "malformed", "unmapped") if k in d
            )
            out += _table(
                [[d_id, str(d.get("health", "?")), f"queue {d.get('queued')}/{d.get('queue')}  {counts}"]],
                4,
                {1: style.state},
            )
            rows = []
            for sub in d.get("subscriptions") or []:
                granted = sub.get("error") or f"qos {sub.get('granted')}"
                rows.append(
                    [
                        str(sub.get("filter")),
                        str(granted),
                        f"received={sub.get('received')} dropped={sub.get('dropped')}",
                    ]
                )
            out += _table(rows, 6)
    return out


if __name__ == "__main__":
    sys.exit(main())
