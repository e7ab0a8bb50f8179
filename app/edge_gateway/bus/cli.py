"""edge-bus: look into and maintain a WAL directory, offline or beside a running gateway.

    edge-bus --wal-dir DIR stats [--json]        segments, bytes, seqs, cursors and their lag
    edge-bus --wal-dir DIR replay --from N [--to M] [--tag T]   frames as JSON lines
    edge-bus --wal-dir DIR flush                 recover: truncate a torn tail, fsync, write wal.meta
    edge-bus --wal-dir DIR gc --keep-bytes 512M [--force]       delete acked segments (--force: also unacked)

`stats` and `replay` only read, so they work on the WAL of a running gateway. `flush` and `gc`
change the directory and refuse while a gateway holds the WAL's lock.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

from edge_gateway.bus.cursor import Cursor
from edge_gateway.bus.wal import Wal, WalLocked
from edge_gateway.config import stdout
from edge_gateway.config.clihelp import Help
from edge_gateway.config.model import WalCfg
from edge_gateway.config.units import parse_size
from edge_gateway.core.frame import Frame, Kind

EXIT_CODES = """\
exit codes:
  0    done (stats, replay, flush; gc reached --keep-bytes)
  1    refused: a gateway holds the WAL (flush, gc), or gc stopped at unacked frames
  2    the command line is wrong, or --wal-dir is not a WAL directory
  141  stdout was closed before all was written (`edge-bus replay | head`); no traceback
"""


def frame_json(f: Frame) -> dict[str, object]:
    value: object = f.value
    if isinstance(value, bytes):
        value = {"b64": base64.b64encode(value).decode()}
    out: dict[str, object] = {"seq": f.seq, "ts": f.ts, "tag": f.tag, "value": value, "q": f.q}
    if f.kind is Kind.CMD:
        out["kind"] = "cmd"
    if f.meta:
        out["meta"] = f.meta
    return out


@stdout.guard
def main(argv: list[str] | None = None) -> int:
    ap = Help(EXIT_CODES).parser("edge-bus", "Inspect and maintain an edge-gateway WAL directory.")
    ap.add_argument(
        "--wal-dir",
        required=True,
        metavar="DIR",
        help="the WAL directory (gateway.yml wal.dir), e.g. /var/lib/edge-gateway/wal",
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    st = sub.add_parser("stats", help="segments, bytes, seqs, cursors, lag")
    st.add_argument("--json", action="store_true", help="print the raw figures as JSON")
    rp = sub.add_parser("replay", help="print committed frames as JSON lines")
    rp.add_argument("--from", dest="start", type=int, default=1, metavar="N", help="first seq (default 1)")
    rp.add_argument("--to", dest="end", type=int, default=0, metavar="M", help="last seq (default: the last committed)")
    rp.add_argument("--tag", default=None, help="only this tag")
    sub.add_parser("flush", help="recover and fsync the WAL (refused while a gateway runs)")
    gc = sub.add_parser("gc", help="delete oldest segments down to a size")
    gc.add_argument("--keep-bytes", required=True, help="e.g. 512M, 2GiB")
    gc.add_argument("--force", action="store_true", help="also delete unacked segments (the frames are lost)")
    a = ap.parse_args(argv)
    if not Path(a.wal_dir).is_dir():
        print(
            f"edge-bus: {a.wal_dir} is not a directory (gateway.yml wal.dir names the WAL directory)", file=sys.stderr
        )
        return 2
    cfg = WalCfg(dir=a.wal_dir)
    readonly = a.cmd in ("stats", "replay")
    try:
        wal = Wal.open(cfg, readonly=readonly)
    except WalLocked as e:
        print(f"edge-bus: {e}; stop the gateway first (stats and replay work while it runs)", file=sys.stderr)
        return 1
    except FileNotFoundError as e:
        print(f"edge-bus: {e}", file=sys.stderr)
        return 1
    try:
        if a.cmd == "stats":
            s = wal.stats()
            if a.json:
                print(json.dumps(s, indent=2))
            else:
                print(
                    f"{s['dir']}: {s['segments']} segments, {s['bytes']:,} bytes, "
                    f"seq {s['first_seq']}..{s['committed_seq']}"
                )
                for name, c in s["cursors"].items():  # type: ignore[attr-defined]
                    print(f"  cursor {name}: acked {c['acked']}, lag {c['lag']}")
                print(
                    f"  damage: {s['corrupt_records']} stretches, {s['corrupt_bytes']:,} bytes skipped, "
                    f"{s['corrupt_frames']} frames lost"
                )
                for d in s["damage"]:  # type: ignore[attr-defined]
                    print(f"    {d['segment']} offset {d['offset']}: {d['bytes']} bytes, {d['frames']} frames")
            return 0
        if a.cmd == "replay":
            cur = Cursor(wal, "edge-bus-replay", a.start - 1)
            out = sys.stdout
            while frames := cur.read(4096, 0):
                for f in frames:
                    if a.end and f.seq > a.end:
                        return 0
                    if a.tag is None or f.tag == a.tag:
                        out.write(json.dumps(frame_json(f)) + "\n")
            return 0
        if a.cmd == "flush":
            s = wal.stats()
            print(f"flushed: seq {s['first_seq']}..{s['committed_seq']}, {s['bytes']:,} bytes")
            return 0
        keep = parse_size(a.keep_bytes)
        freed = wal.gc()
        while wal.total_bytes > keep and len(wal.segments) > 1:
            if not a.force and wal.segments[1] - 1 > wal.min_ack():
                print(
                    f"edge-bus: stopping at {wal.total_bytes:,} bytes: the next segment holds unacked frames "
                    "(--force deletes them, and they are lost)",
                    file=sys.stderr,
                )
                return 1
            freed += wal.drop_oldest(f"edge-bus gc --keep-bytes {a.keep_bytes} --force")
        print(f"freed {freed:,} bytes; {wal.total_bytes:,} bytes in {len(wal.segments)} segments")
        return 0
    finally:
        wal.close()


if __name__ == "__main__":
    sys.exit(main())
