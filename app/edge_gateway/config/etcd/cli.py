"""`edge-cfg push|diff|watch|history|rollback|fleet status` against etcd, every one naming the store with the
URL the gateway's `--config` takes (`etcd://HOST:PORT[,HOST:PORT…]/PREFIX`).

Wired into config/cli.py (`add_parsers`, `run`); `edge-cfg diff DIR URL` is the `diff` command with an
etcd URL as its second argument. Problems go to stderr as one line each, results to stdout; no
message carries a secret (passwords come from files, never from the command line).
"""

from __future__ import annotations

import argparse
import difflib
import json
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from edge_gateway.config.etcd.store import (
    DEFAULT_MAX_REQUEST_BYTES,
    TABLES,
    Compacted,
    Conflict,
    EtcdError,
    Snapshot,
    Store,
    TooLarge,
    make_meta,
    read_tables,
    request_size,
    rollback_tables,
    write_tables,
)
from edge_gateway.config.etcd.url import ENV, SCHEME, Credentials, EtcdUrl, UrlError
from edge_gateway.config.loader import lint
from edge_gateway.config.problems import printable

OK, INVALID, NETWORK, CONFLICT = 0, 1, 2, 3
COMMANDS = ("push", "watch", "history", "rollback", "fleet")

ETCD_EXIT_CODES = """\
exit codes:
  0    push, rollback: written (the new revision on stdout), or nothing differed
       and nothing was written; diff, history, fleet status: printed; watch:
       --count changes seen
  1    push, rollback: the configuration has an error (lint's FILE:LINE:
       MESSAGE on stdout), a table is larger than etcd takes in one request, or
       the revision to roll back to is empty or compacted; nothing written
  2    the command line is wrong, or etcd is unreachable or refused the request
       (TLS, user, permission); nothing written
  3    push, rollback: the store changed since it was read (someone else
       pushed); nothing written: diff and push again. watch: --from-revision
       is compacted away
  141  stdout was closed before all was written, as for SIGPIPE
"""

URL_HELP = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX, e.g. etcd://10.0.0.5:2379/edge/config/v1/gw-01"

PUSH_HELP = """\
Lint DIR (any error: exit 1, nothing written), compare it with what the store
holds, and write the tables that differ plus a _meta record (who, host, when,
--message) in one etcd transaction, guarded by the revision it was compared
against: if anyone changed the store in between, nothing is written (exit 3).
A file missing from DIR deletes its table. Prints the new revision.
"""

ROLLBACK_HELP = """\
Write the tables (all, or the TABLEs named) as they were at revision N as a new
revision, in one guarded transaction. The resulting configuration is linted
first (in a temporary directory) and refused with exit 1 on any error; --no-lint
skips that, for a configuration whose relative files exist only on the gateway.
"""


def add_etcd_options(p: argparse.ArgumentParser) -> None:
    """The connection options (they win over the EDGE_ETCD_* environment), in the options section."""
    g = p
    g.add_argument("--etcd-ca", metavar="FILE", help=f"CA of the etcd servers; turns TLS on (${ENV['ca']})")
    g.add_argument("--etcd-cert", metavar="FILE", help=f"client certificate (${ENV['cert']})")
    g.add_argument("--etcd-key", metavar="FILE", help=f"its private key (${ENV['key']})")
    g.add_argument("--etcd-user", metavar="NAME", help=f"etcd user (${ENV['user']})")
    g.add_argument(
        "--etcd-password-file", metavar="FILE", help=f"file holding that user's password (${ENV['password_file']})"
    )
    g.add_argument("--timeout", type=float, default=5.0, metavar="SECONDS", help="per request and endpoint (5)")


def add_parsers(sub: Any, fmt: type[argparse.HelpFormatter]) -> None:
    def parser(name: str, help: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(  # type: ignore[no-any-return]
            name, help=help, description=description, epilog=ETCD_EXIT_CODES, formatter_class=fmt
        )

    p = parser("push", "lint DIR and write it to etcd in one guarded transaction", PUSH_HELP)
    p.add_argument("dir", metavar="DIR", help="the directory with the five YAML files")
    p.add_argument("url", metavar="URL", help=URL_HELP)
    p.add_argument("-m", "--message", default="", help="why, recorded in _meta and shown by history")
    p.add_argument(
        "--max-request-bytes",
        type=int,
        default=DEFAULT_MAX_REQUEST_BYTES,
        metavar="N",
        help=f"the etcd servers' --max-request-bytes ({DEFAULT_MAX_REQUEST_BYTES})",
    )
    add_etcd_options(p)

    p = parser(
        "watch",
        "print each change of the store as it happens",
        "One line per revision that changed the prefix: revision, the tables written\n"
        "(+) or deleted (-), who, host, when and the message of its _meta.",
    )
    p.add_argument("url", metavar="URL", help=URL_HELP)
    p.add_argument("--from-revision", type=int, metavar="N", help="start at revision N (default: from now on)")
    p.add_argument("--count", type=int, metavar="N", help="exit after N changes")
    p.add_argument("--json", action="store_true", help="one JSON object per change")
    add_etcd_options(p)

    p = parser(
        "history",
        "list the revisions that changed the store",
        "Newest first: revision, when, who, host, the tables written and the message.\n"
        "Revisions older than etcd's last compaction are gone (said on stderr).",
    )
    p.add_argument("url", metavar="URL", help=URL_HELP)
    p.add_argument("-n", "--limit", type=int, default=20, metavar="N", help="at most N revisions (20)")
    p.add_argument("--json", action="store_true", help="as JSON")
    add_etcd_options(p)

    p = parser("rollback", "write the tables of an older revision as a new one", ROLLBACK_HELP)
    p.add_argument("url", metavar="URL", help=URL_HELP)
    p.add_argument("tables", nargs="*", metavar="TABLE", help=f"only these tables ({', '.join(TABLES)})")
    p.add_argument("--to", required=True, metavar="rev=N", help="the revision to restore (rev=N or N)")
    p.add_argument("-m", "--message", default="", help="recorded in _meta (default: rollback to N)")
    p.add_argument("--no-lint", action="store_true", help="write without linting the result")
    add_etcd_options(p)

    fleet = parser("fleet", "the gateways of a store", "Fleet-wide views.")
    fsub = fleet.add_subparsers(dest="fleet_cmd", required=True, metavar="COMMAND")
    p = fsub.add_parser(
        "status",
        help="every gateway: presence, applied and rejected revision, health, version",
        description="Every gateway with a status or presence key under /edge/status/v1/ and\n"
        "/edge/presence/v1/: present (its lease alive), the revision it applied, the\n"
        "revision it rejected and how many problems, health and version.",
        epilog=ETCD_EXIT_CODES,
        formatter_class=fmt,
    )
    p.add_argument("url", metavar="URL", help="etcd://HOST:PORT[,HOST:PORT...] (a prefix is ignored)")
    p.add_argument("--json", action="store_true", help="the status documents as JSON")
    add_etcd_options(p)


def _store(args: argparse.Namespace, need_prefix: bool = True) -> Store:
    url = EtcdUrl.parse(args.url)
    if need_prefix:
        url.require_prefix()
    creds = Credentials.from_options_env(
        ca=args.etcd_ca,
        cert=args.etcd_cert,
        key=args.etcd_key,
        user=args.etcd_user,
        password_file=args.etcd_password_file,
    )
    limit = getattr(args, "max_request_bytes", None) or DEFAULT_MAX_REQUEST_BYTES
    return Store(url, creds, timeout=args.timeout, max_request_bytes=limit)


def run(args: argparse.Namespace) -> int:
    """One etcd command; the exit code of ETCD_EXIT_CODES."""
    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "push": _push,
        "diff": _diff,
        "watch": _watch,
        "history": _history,
        "rollback": _rollback,
        "fleet": _fleet,
    }
    try:
        return commands[args.cmd](args)
    except UrlError as e:
        _err(f"edge-cfg {args.cmd}: {e}")
        return NETWORK
    except Conflict as e:
        _err(f"edge-cfg {args.cmd}: {e}")
        return CONFLICT
    except TooLarge as e:  # the server's own refusal, when its limit is below --max-request-bytes
        _err(f"edge-cfg {args.cmd}: {e}")
        return INVALID
    except EtcdError as e:
        _err(f"edge-cfg {args.cmd}: {e}")
        return NETWORK


def is_url(text: str) -> bool:
    return text.startswith(SCHEME)


def _err(text: str) -> None:
    print(printable(text), file=sys.stderr)


def _lint(directory: str | Path, shown: str) -> bool:
    """lint's output (problems on stdout, the summary on stderr); False on any error."""
    problems = lint(directory)
    for p in problems:
        print(p)
    errors = sum(p.is_error for p in problems)
    print(f"{printable(shown)}: {errors} error(s), {len(problems) - errors} warning(s)", file=sys.stderr)
    return errors == 0


def _too_large(tables: dict[str, str], base: Snapshot, limit: int, where: Callable[[str], str]) -> bool:
    """The changed tables would make a request etcd refuses: say which, in file:line form."""
    changed = {n: t for n, t in tables.items() if t != base.tables.get(n)}
    size = request_size(changed)
    if size <= limit:
        return False
    for name, text in sorted(changed.items(), key=lambda kv: -len(kv[1])):
        print(
            f"{where(name)}:1: {len(text.encode())} bytes; one push carries at most {limit} bytes in all "
            f"(etcd's --max-request-bytes; this push: {size}): raise the servers' limit and --max-request-bytes"
        )
        break
    return True


def _push(args: argparse.Namespace) -> int:
    directory = Path(args.dir)
    if not _lint(directory, args.dir):
        return INVALID
    tables = read_tables(directory)
    with _store(args) as store:
        base = store.snapshot()
        if _too_large(tables, base, args.max_request_bytes, lambda n: str(directory / f"{n}.yml")):
            return INVALID
        rev = store.push(tables, base.revision, make_meta(args.message), base=base)
        if rev is None:
            _err(f"{store.url}: no change (revision {base.config_revision})")
            print(base.config_revision)
            return OK
        changed = [n for n in TABLES if tables.get(n) != base.tables.get(n)]
        _err(f"{store.url}: revision {rev} ({', '.join(_mark(n, tables) for n in changed)})")
        print(rev)
        return OK


def _mark(name: str, tables: dict[str, str] | dict[str, str | None]) -> str:
    return f"+{name}" if tables.get(name) is not None else f"-{name}"


def diff_against_store(args: argparse.Namespace) -> int:
    """`edge-cfg diff DIR URL`: a unified diff per table, etcd's text first (what a push would change)."""
    args.dir, args.url = args.old, args.new
    return run(args)


def _diff(args: argparse.Namespace) -> int:
    local = read_tables(args.dir) if Path(args.dir).is_dir() else None
    if local is None:
        _err(f"{printable(args.dir)}: not a directory")
        return INVALID
    with _store(args) as store:
        snap = store.snapshot()
    same = True
    for name in TABLES:
        old, new = snap.tables.get(name), local.get(name)
        if old == new:
            continue
        same = False
        lines = difflib.unified_diff(
            (old or "").splitlines(keepends=True),
            (new or "").splitlines(keepends=True),
            fromfile=f"{store.url}/{name}.yml@{snap.config_revision}" if old is not None else "/dev/null",
            tofile=str(Path(args.dir) / f"{name}.yml") if new is not None else "/dev/null",
        )
        for line in lines:
            sys.stdout.write(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    if same:
        print(f"no change (revision {snap.config_revision})")
    return OK


def _watch(args: argparse.Namespace) -> int:
    with _store(args) as store:
        start = args.from_revision if args.from_revision is not None else store.revision() + 1
        seen = 0
        if args.count == 0:
            return OK
        try:
            watch = store.watch(start)
            for change in watch:
                meta = change.meta or {}
                if args.json:
                    print(json.dumps({"revision": change.revision, "tables": change.tables, "meta": change.meta}))
                else:
                    tables = " ".join(_mark(n, change.tables) for n in TABLES if n in change.tables) or "-"
                    print(
                        f"{change.revision}\t{tables}\t{_who(meta)}\t{meta.get('when', '?')}\t"
                        f"{printable(str(meta.get('message', '')))}"
                    )
                sys.stdout.flush()
                seen += 1
                if args.count is not None and seen >= args.count:
                    watch.close()
                    break
        except Compacted as e:
            _err(f"edge-cfg watch: {e}")
            return CONFLICT
        except KeyboardInterrupt:
            return OK
    return OK


def _who(meta: dict[str, Any]) -> str:
    if not meta:
        return "(no _meta: written without edge-cfg)"
    return printable(f"{meta.get('who', '?')}@{meta.get('host', '?')}")


def _history(args: argparse.Namespace) -> int:
    with _store(args) as store:
        entries, truncated = store.history(args.limit)
    if args.json:
        rows = [{"revision": e.revision, "tables": list(e.tables), "meta": e.meta} for e in entries]
        print(json.dumps({"revisions": rows, "compacted_before": truncated}, indent=2))
    else:
        _table(
            ["REVISION", "WHEN", "WHO", "TABLES", "MESSAGE"],
            [
                [
                    str(e.revision),
                    str((e.meta or {}).get("when", "?")),
                    _who(e.meta or {}),
                    ",".join(e.tables) or "-",
                    str((e.meta or {}).get("message", "")),
                ]
                for e in entries
            ],
        )
    if truncated:
        _err("(older revisions were compacted away)")
    return OK


def _revision(text: str) -> int:
    value = text.removeprefix("rev=")
    if not value.isdigit() or int(value) < 1:
        raise UrlError(f"--to {text!r}: want rev=N with N >= 1")
    return int(value)


def _rollback(args: argparse.Namespace) -> int:
    to = _revision(args.to)
    bad = [t for t in args.tables if t not in TABLES]
    if bad:
        raise UrlError(f"unknown table {bad[0]!r} (one of {', '.join(TABLES)})")
    with _store(args) as store:
        try:
            old = store.snapshot(to)
        except Compacted as e:
            _err(f"edge-cfg rollback: revision {to} is compacted away ({e}); see `edge-cfg history`")
            return INVALID
        except EtcdError as e:
            if "future revision" not in str(e):
                raise
            _err(f"edge-cfg rollback: revision {to} does not exist yet; see `edge-cfg history`")
            return INVALID
        if not old.tables:
            _err(f"edge-cfg rollback: {store.url} held no configuration at revision {to}")
            return INVALID
        now = store.snapshot()
        tables = rollback_tables(old, now, args.tables or None)
        if not args.no_lint:
            with tempfile.TemporaryDirectory(prefix="edge-cfg-rollback-") as tmp:
                write_tables(tables, tmp)
                problems = lint(tmp)
                for p in problems:
                    print(str(p).replace(tmp, f"{store.url}@{to}"))
                errors = sum(p.is_error for p in problems)
                _err(f"{store.url}@{to}: {errors} error(s), {len(problems) - errors} warning(s)")
                if errors:
                    return INVALID
        message = args.message or f"rollback to {to}" + (f" ({', '.join(args.tables)})" if args.tables else "")
        rev = store.push(tables, now.revision, make_meta(message), base=now)
        if rev is None:
            _err(f"{store.url}: already as at revision {to}; nothing written")
            print(now.config_revision)
            return OK
        _err(f"{store.url}: revision {rev} = revision {to}" + (f" for {', '.join(args.tables)}" if args.tables else ""))
        print(rev)
        return OK


def _fleet(args: argparse.Namespace) -> int:
    with _store(args, need_prefix=False) as store:
        fleet = store.fleet()
    if args.json:
        docs = [
            {"gateway_id": f.gateway_id, "present": f.present, "status": f.status, "presence": f.presence}
            for f in fleet
        ]
        print(json.dumps(docs, indent=2))
        return OK
    rows = []
    for f in fleet:
        st = f.status or {}
        problems = st.get("problems")
        rows.append(
            [
                f.gateway_id,
                "yes" if f.present else "NO",
                _cell(st.get("applied_revision")),
                _cell(st.get("rejected_revision")),
                str(len(problems)) if isinstance(problems, list) else "-",
                _cell(st.get("health")),
                _cell(st.get("version")),
            ]
        )
    _table(["GATEWAY", "PRESENT", "APPLIED", "REJECTED", "PROBLEMS", "HEALTH", "VERSION"], rows)
    if not fleet:
        _err("(no gateway has written a status or presence key)")
    return OK


def _cell(value: Any) -> str:
    return "-" if value in (None, "", 0) else printable(str(value))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    rows = [[printable(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    for r in [list(header), *rows]:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
