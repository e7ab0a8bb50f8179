"""`edge-ctl`: talk to a running gateway over its control socket.

    edge-ctl [--socket PATH | --config DIR] [--json] status
    edge-ctl ... tail                       live committed frames until Ctrl-C
    edge-ctl ... connector mqtt stats       uplink figures
    edge-ctl ... connector mqtt reconnect   finish in-flight batches, reconnect with fresh credentials/TLS files
    edge-ctl ... reload                     re-read the configuration and apply the smallest change

The socket is `control.socket` of gateway.yml (`--config DIR` reads it from there), else
/run/edge-gateway/control.sock. Output is human-readable; `--json` prints the raw answer.
Exit codes: 0 ok, 1 the gateway refused the request (for reload: the new configuration is invalid
or was rolled back), 2 no gateway answers on the socket.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import time
from typing import Any

from edge_gateway.config.loader import ConfigError, load_snapshot
from edge_gateway.config.model import GatewayCfg
from edge_gateway.runtime.control import request


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-ctl", description="control a running edge-gateway")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--socket", metavar="PATH", help=f"control socket (default {GatewayCfg.control_socket})")
    where.add_argument("--config", metavar="DIR", help="take the socket path from DIR/gateway.yml")
    p.add_argument("--json", action="store_true", help="print the raw JSON answer")
    p.add_argument("--timeout", type=float, default=10.0)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("status", help="lines, drivers, uplink, WAL, revision")
    sub.add_parser("tail", help="stream committed frames")
    sub.add_parser("reload", help="reload the configuration")
    con = sub.add_parser("connector", help="connector commands")
    con.add_argument("name", help="mqtt (or the connector id)")
    con.add_argument("action", choices=("stats", "reconnect"))
    args = p.parse_args(argv)

    path = args.socket or GatewayCfg.control_socket
    if args.config:
        try:
            path = load_snapshot(args.config).gateway.control_socket
        except ConfigError as e:
            print("\n".join(str(x) for x in e.problems), file=sys.stderr)
            return 2
    try:
        if args.command == "tail":
            return tail(path, args.json)
        if args.command == "connector":
            answer = request(path, f"connector.{args.action}", args.timeout, name=args.name)
        else:
            answer = request(path, args.command, args.timeout)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"edge-ctl: no gateway on {path}: {e.strerror}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as e:
        print(f"edge-ctl: {path}: {e}", file=sys.stderr)
        return 2
    if not answer.get("ok"):
        print(f"edge-ctl: {answer.get('error')}", file=sys.stderr)
        return 1
    result = answer.get("result")
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    elif args.command == "status":
        print(render_status(result if isinstance(result, dict) else {}))
    elif args.command == "reload":
        print(render_reload(result if isinstance(result, dict) else {}))
    else:
        print(render_mapping(result))
    if args.command == "reload" and not (isinstance(result, dict) and result.get("applied")):
        return 1
    return 0


def render_reload(r: dict[str, Any]) -> str:
    rev = str(r.get("revision") or "")[:12]
    if r.get("result") == "invalid":
        return "\n".join(
            ["invalid configuration, the running one is kept:", *(f"  {p}" for p in r.get("problems", []))]
        )
    if r.get("result") == "rollback":
        return f"applying {rev} failed and was rolled back: {r.get('error')}"
    out = [f"{r.get('result')}: revision {rev}", *(f"  {c}" for c in r.get("changes", []))]
    if r.get("restart_required"):
        out.append(f"  needs a restart to take effect: {', '.join(r['restart_required'])}")
    return "\n".join(out)


def tail(path: str, raw: bool) -> int:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"edge-ctl: no gateway on {path}: {e.strerror}", file=sys.stderr)
        return 2
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
                sys.stdout.write(render_frame(json.loads(line)) + "\n")
            sys.stdout.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `edge-ctl tail | head`
        return 0
    finally:
        s.close()
    return 0


# -- rendering ---------------------------------------------------------------------------------------------


def render_frame(d: dict[str, Any]) -> str:
    if "dropped" in d:
        return f"... {d['dropped']} frames not shown (terminal too slow)"
    ts = d.get("ts", 0)
    t = time.strftime("%H:%M:%S", time.localtime(ts / 1000)) + f".{ts % 1000:03d}"
    kind = "" if d.get("kind", "data") == "data" else f"  [{d['kind']}]"
    return f"{d['seq']:>10}  {t}  {d['tag']:<28} {_value(d.get('value'))!s:<16} {d.get('q')}{kind}"


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


def render_status(s: dict[str, Any]) -> str:
    out = [
        f"edge-gateway {s.get('version')}  pid {s.get('pid')}  up {s.get('uptime_s')}s",
        f"config   {s.get('config')}  (revision {str(s.get('revision'))[:12]})",
    ]
    last = s.get("last_reload")
    if last:
        out.append(f"reload   {last.get('result')} ({last.get('reason')})")
    sup = s.get("supervisor")
    if sup:
        health = "healthy" if sup.get("healthy") else "DEGRADED: " + "; ".join(sup.get("problems", []))
        out.append(f"health   {health}")
    out.append("lines")
    for ep_id, line in (s.get("lines") or {}).items():
        state = "up" if line.get("alive") else "DEAD"
        out.append(f"  {ep_id:<14} {line.get('scheme'):<8} {line.get('address'):<28} {state}")
        drivers = line.get("drivers")
        if isinstance(drivers, dict):
            for d_id, d in drivers.items():
                if isinstance(d, dict):
                    extra = ", ".join(f"{k}={v}" for k, v in d.items() if k != "state" and v not in (None, ""))
                    out.append(f"    {d_id:<12} {d.get('state', '?'):<6} {extra}")
                else:
                    out.append(f"    {d_id:<12} {d}")
    out += render_sources(s.get("sources") or {})
    bus = s.get("bus") or {}
    out.append(f"bus      {bus.get('used')}/{bus.get('capacity')} frames{'  PAUSED' if bus.get('paused') else ''}")
    wal = s.get("wal") or {}
    if wal:
        out.append("wal      " + ", ".join(f"{k}={v}" for k, v in wal.items() if not isinstance(v, dict | list)))
    up = s.get("uplink")
    if up:
        out.append(
            f"uplink   {up.get('connector')} {up.get('state')} {up.get('broker')}  qos {up.get('qos_effective')}"
            f"  acked {up.get('acked_seq')}  lag {up.get('lag')}  inflight {up.get('inflight')}"
        )
        if up.get("last_error"):
            out.append(f"         last error: {up['last_error']}")
    return "\n".join(out)


def render_sources(sources: dict[str, Any]) -> list[str]:
    """MQTT source endpoints, their drivers' health and counters, and each subscription."""
    if not sources:
        return []
    out = ["mqtt sources"]
    for ep_id, src in sources.items():
        state = src.get("state", "?") if src.get("alive", True) else "DEAD"
        out.append(f"  {ep_id:<14} {src.get('broker', ''):<36} {state}  session {src.get('session', '?')}")
        if src.get("last_error") and not src.get("connected"):
            out.append(f"    last error: {src['last_error']}")
        for d_id, d in (src.get("drivers") or {}).items():
            counts = ", ".join(
                f"{k}={d.get(k)}" for k in ("received", "frames", "dropped", "malformed", "unmapped") if k in d
            )
            out.append(f"    {d_id:<12} {d.get('health', '?'):<8} queue {d.get('queued')}/{d.get('queue')}  {counts}")
            for sub in d.get("subscriptions") or []:
                granted = sub.get("error") or f"qos {sub.get('granted')}"
                counts = f"received={sub.get('received')} dropped={sub.get('dropped')}"
                out.append(f"      {sub.get('filter'):<24} {granted}  {counts}")
    return out


if __name__ == "__main__":
    sys.exit(main())
