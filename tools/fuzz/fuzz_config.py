#!/usr/bin/env python3
"""Config fuzzer: seeded mutants of the demo config/ through `edge-cfg lint` and a live reload.

    tools/fuzz/fuzz_config.py --seed 1 --count 500 --out build/fuzz [--max-seconds 900] [--only N]

Each mutant is the demo config (ports and paths pointed at a scratch directory) with one to three
mutations: byte flips, line deletions/duplications/swaps, uncommented lines, type swaps, deep
nesting, huge integers, control characters, invalid UTF-8, scalars or lists as tables, unicode,
truncated, emptied or deleted files, YAML tags/anchors, hostile scale expressions and periods.
Mutant N depends only on (seed, N), so `--only N` replays one.

Every mutant goes through
1. `edge-cfg lint DIR` as a subprocess. The contract: exit 0 or 1 (never a signal, never another
   code); stdout holds only problem lines `FILE.yml:LINE: [warning: ]MESSAGE` (LINE ≥ 1, MESSAGE
   non-empty, the whole line printable: no control, separator, bidi or non-ASCII space character); stderr holds exactly one line, the summary `DIR: N error(s), M warning(s)` (so no
   traceback); exit 1 exactly when some problem line is an error.
2. one real `edge-gateway run` (started once, on the unmutated base, in its own network namespace
   when `unshare -rn` works, so a mutated port never reaches another process on this machine): the
   mutant's files are renamed into its directory, then a SIGHUP (every other mutant) and a `reload`
   on the control socket (every tenth through the real `edge-ctl reload`). After each: the process
   is alive, `status` answers, and the reload's verdict agrees with lint (`invalid` exactly when
   lint exits 1). At the end the base config is restored and must be running again.

Writes DIR/fuzz_config.json (figures and failures) and keeps each failing mutant in
DIR/fuzz_config/failures/N/. Exit 1 on any failure or when the time budget ends the run early.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_gateway.runtime.control import request
from edge_gateway.testkit import free_port

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FILES = (
    "endpoints.yml",
    "drivers.yml",
    "variables.yml",
    "connector.yml",
    "gateway.yml",
)
PROBLEM_LINE = re.compile(r"^[^\n]+\.yml:[1-9][0-9]*: (warning: )?\S.*$")
SUMMARY_LINE = re.compile(r"^.+: [0-9]+ error\(s\), [0-9]+ warning\(s\)$")
LINT_TIMEOUT = 60.0
RELOAD_TIMEOUT = 130.0  # beyond the gateway's own 120 s bound on one reload

Files = dict[str, bytes]  # file name → content; a missing key is a deleted file

# -- mutations ----------------------------------------------------------------------------------------------------
ODD_VALUES = [
    "42",
    "-1",
    "0",
    "-0.0",
    "1.0",
    "1e309",
    "-.inf",
    ".nan",
    "null",
    "~",
    "true",
    "on",
    "no",
    "''",
    '""',
    "[]",
    "{}",
    "[1, 2]",
    "{a: 1}",
    "0x10",
    "0o17",
    "012345",
    "1_000",
    "12:30:00",
    "2026-13-45",
    "99999999999999999999",
    "'\\u0000'",
    '"\\x00"',
    '"\\u2028"',
    "!!binary AAAA",
    "!!int nope",
    "!!float x",
    "!!python/object:os.system {}",
    "!!set {a, b}",
    "*nowhere",
    "&a [*a]",
    "0s",
    "0ms",
    "0pps",
    "-5s",
    '"value / 0"',
    '"1e309 * value"',
    '"value ** 99"',
    "\"__import__('os')\"",
    "'" + "x" * 5000 + "'",
]
UNICODE = [
    "é",
    "ü",
    "日本",
    "😀",
    "\u202e",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\u0301",
    "\u00a0",
    "\uffff",
    "𝕏",
]
CONTROL = [
    b"\x00",
    b"\x01",
    b"\x07",
    b"\x08",
    b"\x0b",
    b"\x0c",
    b"\x1b",
    b"\x7f",
    b"\x85",
    b"\r",
    b"\t",
]
SCALES = [
    "value / 0",
    "value // 0.0",
    "value % (3 - 3)",
    "1e309 * value",
    "value * 1e300 ** 2",
    "value ** 65",
    "value ** value",
    "round(value, -10**9)",
    "abs()",
    "min(value)",
    "value.real",
    "value[0]",
    "lambda: 1",
    "'s' * value",
    "value if value else 0",
    "(" * 50 + "value" + ")" * 50,
    "-" * 500 + "value",
    "value / 1e-320",
]
LAUGHS = (
    "a: &a [1,1,1,1,1,1,1,1,1]\n"
    + "".join(  # a "billion laughs": 9**7 nodes once aliases expand
        f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n"
        for a, b in zip("abcdef", "bcdefg", strict=True)
    )
)
PERIOD_KEYS = [
    "polling",
    "timeout",
    "keepalive",
    "max_interval",
    "base",
    "max",
    "turnaround",
    "session_expiry",
]


def _lines(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True) or [b""]


def m_byte_flip(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    data = bytearray(f[name])
    if not data:
        return "byte-flip(empty)"
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data))
        data[i] = (
            data[i] ^ (1 << rng.randrange(8))
            if rng.random() < 0.7
            else rng.randrange(256)
        )
    f[name] = bytes(data)
    return "byte-flip"


def m_line_delete(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    lines = _lines(f[name])
    del lines[rng.randrange(len(lines))]
    f[name] = b"".join(lines)
    return "line-delete"


def m_line_duplicate(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    lines = _lines(f[name])
    i = rng.randrange(len(lines))
    lines.insert(i, lines[i])
    f[name] = b"".join(lines)
    return "line-duplicate"


def m_line_swap(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    lines = _lines(f[name])
    i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
    lines[i], lines[j] = lines[j], lines[i]
    f[name] = b"".join(lines)
    return "line-swap"


def m_uncomment(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    lines = _lines(f[name])
    comments = [i for i, line in enumerate(lines) if line.lstrip().startswith(b"#")]
    if not comments:
        return "uncomment(none)"
    i = rng.choice(comments)
    lines[i] = re.sub(rb"#\s?", b"", lines[i], count=1)
    f[name] = b"".join(lines)
    return "uncomment"


def m_type_swap(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    lines = _lines(f[name])
    values = [
        i
        for i, line in enumerate(lines)
        if re.search(rb":\s+\S", line) and not line.lstrip().startswith(b"#")
    ]
    if not values:
        return "type-swap(none)"
    i = rng.choice(values)
    lines[i] = re.sub(
        rb"(:\s+)([^#\n]*[^#\s])",
        lambda m: m.group(1) + rng.choice(ODD_VALUES).encode(),
        lines[i],
        1,
    )
    f[name] = b"".join(lines)
    return "type-swap"


def m_deep_nesting(rng: random.Random, f: Files) -> str:
    name = rng.choice(FILES)
    n = rng.choice([31, 33, 100, 5000, 100_000])
    form = rng.choice(["[", "{a: ", "- ", "indent"])
    if form == "indent":
        text = "".join(" " * i + "k:\n" for i in range(min(n, 3000)))
    else:
        text = form * n + ("x\n" if form == "- " else "")
    if rng.random() < 0.5:
        f[name] = text.encode()
    else:  # nested inside an entry of the real file
        f[name] = f.get(name, b"") + b"\nextra: " + text.encode() + b"\n"
    return f"deep-nesting({form.strip() or 'indent'},{n})"


def m_huge_int(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    digits = rng.choice([101, 4301, 5000, 20000])
    big = rng.choice(
        [
            "9" * digits,
            "-" + "1" * digits,
            "0x" + "f" * digits,
            ":".join(["59"] * (digits // 3)),
        ]
    )
    new, n = re.subn(
        rb"(:\s+)([0-9]+)\b", lambda m: m.group(1) + big.encode(), f[name], count=1
    )
    f[name] = new if n else f[name] + f"\nhuge: {big}\n".encode()
    return "huge-int"


def m_control_char(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    data = f[name]
    i = rng.randrange(len(data) + 1)
    f[name] = data[:i] + rng.choice(CONTROL) * rng.randint(1, 3) + data[i:]
    return "control-char"


def m_invalid_utf8(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    data = f[name]
    i = rng.randrange(len(data) + 1)
    f[name] = (
        data[:i]
        + rng.choice(
            [b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82"]
        )
        + data[i:]
    )
    return "invalid-utf8"


def m_unicode(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    data = f[name].decode("utf-8", "replace")
    i = rng.randrange(len(data) + 1)
    f[name] = (
        data[:i] + "".join(rng.choices(UNICODE, k=rng.randint(1, 4))) + data[i:]
    ).encode()
    return "unicode"


def m_scalar_table(rng: random.Random, f: Files) -> str:
    name = rng.choice(FILES)
    text = rng.choice(
        [
            "42",
            "-0.0",
            "text",
            "true",
            "null",
            "~",
            "[1, 2]",
            "- a\n- b",
            "'{}'",
            "!!binary AA==",
        ]
    )
    f[name] = text.encode() + b"\n"
    return "scalar-table"


def m_empty(rng: random.Random, f: Files) -> str:
    name = rng.choice(FILES)
    choice = rng.choice(
        ["empty", "delete", "whitespace", "comment", "bom", "document-markers"]
    )
    if choice == "delete":
        f.pop(name, None)
    else:
        f[name] = {
            "empty": b"",
            "whitespace": b"  \n\t\n",
            "comment": b"# nothing\n",
            "bom": b"\xef\xbb\xbf",
            "document-markers": b"---\n...\n---\n",
        }[choice]
    return f"empty({choice})"


def m_truncate(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    f[name] = f[name][: rng.randrange(len(f[name]) + 1)]
    return "truncate"


def m_yaml_features(rng: random.Random, f: Files) -> str:
    name = rng.choice(sorted(f))
    snippet = rng.choice(
        [
            "a: &x [*x]\n",
            LAUGHS,
            "<<: 5\n",
            "<<: *undefined\n",
            "? [complex, key]\n: v\n",
            "? {a: 1}\n: v\n",
            "!!python/object/apply:os.system ['true']\n",
            "x: !!timestamp nope\n",
            "x: !!bool maybe\n",
            "x: !custom tag\n",
            "%YAML 1.1\n---\nx: 1\n",
            "--- a\n--- b\n",
            "x: 'unterminated\n",
            'x: "\\q bad escape"\n',
            "\tx: tab indented\n",
        ]
    )
    f[name] = (
        snippet.encode() if rng.random() < 0.4 else f[name] + b"\n" + snippet.encode()
    )
    return "yaml-features"


def m_scale(rng: random.Random, f: Files) -> str:
    if "variables.yml" not in f:
        return "scale(none)"
    new, n = re.subn(
        rb'scale: "[^"]*"',
        lambda _m: b"scale: " + json.dumps(rng.choice(SCALES)).encode(),
        f["variables.yml"],
        1,
    )
    f["variables.yml"] = new
    return "scale" if n else "scale(none)"


def m_period(rng: random.Random, f: Files) -> str:
    key = rng.choice(PERIOD_KEYS).encode()
    value = rng.choice(
        [
            b"0s",
            b"0ms",
            b"0.0s",
            b"0",
            b"-1s",
            b"0.0001ms",
            b"1d",
            b"99999999d",
            b"0pps",
        ]
    )
    for name in rng.sample(sorted(f), len(f)):
        new, n = re.subn(
            rb"(\b" + key + rb":\s*)([0-9][0-9a-z.]*)",
            lambda m: m.group(1) + value,
            f[name],
            count=1,
        )
        if n:
            f[name] = new
            return "period"
    return "period(none)"


def m_splice(rng: random.Random, f: Files) -> str:
    if len(f) < 2:
        return "splice(none)"
    a, b = rng.sample(sorted(f), 2)
    lines = _lines(f[a])
    i = rng.randrange(len(lines))
    f[b] = f[b] + b"\n" + b"".join(lines[i : i + rng.randint(1, 8)])
    return "splice"


MUTATORS: list[tuple[Callable[[random.Random, Files], str], int]] = [
    (m_byte_flip, 6),
    (m_line_delete, 4),
    (m_line_duplicate, 3),
    (m_line_swap, 2),
    (m_uncomment, 2),
    (m_type_swap, 8),
    (m_deep_nesting, 3),
    (m_huge_int, 2),
    (m_control_char, 3),
    (m_invalid_utf8, 2),
    (m_unicode, 3),
    (m_scalar_table, 3),
    (m_empty, 2),
    (m_truncate, 2),
    (m_yaml_features, 3),
    (m_scale, 3),
    (m_period, 3),
    (m_splice, 2),
]


def mutate(base: Files, seed: int, index: int) -> tuple[Files, list[str]]:
    """Mutant `index` of the run `seed`: reproducible alone."""
    rng = random.Random(f"{seed}:{index}")
    files = dict(base)
    applied = []
    for _ in range(rng.choice([1, 1, 1, 2, 2, 3])):
        fn = rng.choices([m for m, _ in MUTATORS], weights=[w for _, w in MUTATORS])[0]
        if not files:
            files["endpoints.yml"] = b""
        applied.append(fn(rng, files))
    return files, applied


def write_dir(d: Path, files: Files) -> None:
    """Make `d`'s YAML files exactly `files`, each replaced by rename (as a deployment tool does)."""
    d.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        path = d / name
        if name in files:
            tmp = d / f".{name}.tmp~"
            tmp.write_bytes(files[name])
            os.replace(tmp, path)
        elif path.exists():
            path.unlink()


# -- lint -----------------------------------------------------------------------------------------------------------
@dataclass
class LintResult:
    code: int | None
    problems: list[str]
    failures: list[str]  # contract breaches, empty when fine
    seconds: float
    bad_lines: int = 0


def lint(directory: Path) -> LintResult:
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            [str(BIN / "edge-cfg"), "lint", str(directory)],
            capture_output=True,
            timeout=LINT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:  # run() killed it (by its own PID) before raising
        return LintResult(
            None,
            [],
            [f"lint hung for more than {LINT_TIMEOUT:.0f}s"],
            time.monotonic() - t0,
        )
    seconds = time.monotonic() - t0
    failures = []
    if r.returncode < 0:
        failures.append(f"lint died of signal {signal.Signals(-r.returncode).name}")
    elif r.returncode not in (0, 1):
        failures.append(f"lint exit code {r.returncode}")
    out = r.stdout.decode("utf-8", "backslashreplace")
    err = r.stderr.decode("utf-8", "backslashreplace")
    if "Traceback" in err or "Traceback" in out:
        failures.append(
            "traceback: " + err.strip().splitlines()[-1][:300]
            if err.strip()
            else "traceback"
        )
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    bad = [x for x in lines if not (PROBLEM_LINE.match(x) and x.isprintable())]
    if bad:
        failures.append(f"{len(bad)} line(s) without file:line, first {bad[0][:200]!r}")
    err_lines = err.split("\n")
    if err_lines and err_lines[-1] == "":
        err_lines.pop()
    if r.returncode in (0, 1) and (
        len(err_lines) != 1 or not SUMMARY_LINE.match(err_lines[0])
    ):
        failures.append(f"stderr is not one summary line: {err[-300:]!r}")
    errors = [
        x
        for x in lines
        if PROBLEM_LINE.match(x) and not re.match(r"^[^\n]+\.yml:[0-9]+: warning: ", x)
    ]
    if r.returncode in (0, 1) and (r.returncode == 1) != bool(errors):
        failures.append(f"exit {r.returncode} with {len(errors)} error line(s)")
    return LintResult(r.returncode, lines, failures, seconds, len(bad))


# -- the live gateway -----------------------------------------------------------------------------------------------
def base_config(work: Path) -> Files:
    """The demo config, pointed at `work` (WAL, control socket, a serial path that does not exist)."""
    files = {name: (ROOT / "config" / name).read_bytes() for name in FILES}

    def edit(name: str, old: str, new: str) -> None:
        assert old.encode() in files[name], (name, old)
        files[name] = files[name].replace(old.encode(), new.encode(), 1)

    edit("endpoints.yml", "../build/demo/ttyGW", str(work / "ttyGW"))
    # Free ports (nothing listens there); in the gateway's own network namespace any port would do.
    edit("endpoints.yml", "port: 15020", f"port: {free_port()}")
    edit("endpoints.yml", "port: 14840", f"port: {free_port()}")  # the OPC UA server
    edit("endpoints.yml", "port: 10102", f"port: {free_port()}")  # the S7 PLC
    edit("connector.yml", "tcp://127.0.0.1:18830", f"tcp://127.0.0.1:{free_port()}")
    edit("gateway.yml", "127.0.0.1:9108", f"127.0.0.1:{free_port()}")
    edit("gateway.yml", "../build/demo/wal", str(work / "wal"))
    edit("gateway.yml", "../build/demo/control.sock", str(work / "control.sock"))
    return files


def netns_prefix() -> list[str]:
    """`unshare -rn` (a private network with only loopback) when the kernel allows it."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return []
    probe = subprocess.run([unshare, "-rn", "true"], capture_output=True, check=False)
    return [unshare, "-rn"] if probe.returncode == 0 else []


class Gateway:
    """The one real `edge-gateway run` the mutants are reloaded into; ended by its PID."""

    def __init__(self, work: Path, live: Path) -> None:
        self.work, self.live = work, live
        self.control = str(work / "control.sock")
        self.log_path = work / "gateway.log"
        self.netns = netns_prefix()
        log = self.log_path.open("ab")
        # In the namespace `unshare -rn` execs the gateway: the PID is the gateway's.
        self.proc = subprocess.Popen(
            [
                *self.netns,
                str(BIN / "edge-gateway"),
                "run",
                "--config",
                str(live),
                "--log-format",
                "text",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(os.environ, EDGE_GATEWAY_LOG_LEVEL="warning"),
        )
        log.close()

    def request(self, cmd: str, timeout: float = 10.0) -> dict[str, Any]:
        return request(self.control, cmd, timeout)

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"the gateway exited with {self.proc.returncode}\n{self.log_tail()}"
                )
            try:
                self.request("status", 2.0)
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"the gateway did not answer within {timeout}s\n{self.log_tail()}"
        )

    def reload(self, index: int) -> tuple[str | None, str]:
        """SIGHUP on odd mutants, then a `reload` (the real edge-ctl every tenth): the answer of the
        last, which the reload queue serves after the SIGHUP's. (result, problem or '')."""
        if index % 2:
            self.proc.send_signal(signal.SIGHUP)
        if index % 10 == 0:
            r = subprocess.run(
                [str(BIN / "edge-ctl"), "--socket", self.control, "--json", "reload"],
                capture_output=True,
                text=True,
                timeout=RELOAD_TIMEOUT,
                check=False,
            )
            try:
                answer = json.loads(r.stdout)
            except ValueError:
                return (
                    None,
                    f"edge-ctl reload exit {r.returncode}: {(r.stdout + r.stderr)[-300:]!r}",
                )
            return answer.get("result"), ""
        reply = self.request("reload", RELOAD_TIMEOUT)
        if not reply.get("ok"):
            return None, f"reload refused by the control socket: {reply.get('error')!r}"
        return reply["result"].get("result"), ""

    def alive(self) -> str:
        """'' when the process runs and answers `status`, else what is wrong."""
        if self.proc.poll() is not None:
            return f"the gateway exited with {self.proc.returncode}"
        try:
            reply = self.request("status", 10.0)
        except (OSError, ValueError) as e:
            return f"status did not answer: {e}"
        return "" if reply.get("ok") else f"status failed: {reply.get('error')!r}"

    def revision(self) -> str:
        return str(self.request("status")["result"]["revision"])

    def log_tail(self, n: int = 2000) -> str:
        return (
            self.log_path.read_text(errors="replace")[-n:]
            if self.log_path.exists()
            else ""
        )

    def stop(self) -> int | None:
        """SIGTERM by PID, SIGKILL after 30 s; the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


# -- the run --------------------------------------------------------------------------------------------------------
@dataclass
class Figures:
    configs: int = 0
    lint_exit: Counter[str] = field(default_factory=Counter)
    crashes: int = 0  # lint: a signal, a traceback, another exit code or a hang
    signals: int = 0
    tracebacks: int = 0
    lines_without_file_line: int = 0
    problem_lines: int = 0
    reloads: int = 0
    reload_results: Counter[str] = field(default_factory=Counter)
    gateway_deaths: int = 0
    verdict_mismatches: int = 0
    mutations: Counter[str] = field(default_factory=Counter)
    failures: list[dict[str, Any]] = field(default_factory=list)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--count", type=int, default=500)
    p.add_argument("--out", type=Path, default=ROOT / "build/fuzz")
    p.add_argument(
        "--max-seconds",
        type=float,
        default=1200.0,
        help="time budget; exceeding it is a failure",
    )
    p.add_argument("--only", type=int, help="run mutant N alone (replay a failure)")
    p.add_argument(
        "--jobs",
        type=int,
        default=2,
        help="lint processes in parallel with the reloads",
    )
    args = p.parse_args(argv)
    t0 = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    keep = args.out / "fuzz_config"
    shutil.rmtree(keep, ignore_errors=True)
    indices = [args.only] if args.only is not None else list(range(args.count))
    fig = Figures()
    stopped_early = False
    end_failure = ""

    with tempfile.TemporaryDirectory(prefix="fuzz-config-") as tmp:
        work = Path(tmp)
        live = work / "live"
        base = base_config(work)
        write_dir(live, base)
        gw = Gateway(work, live)
        try:
            gw.wait_ready()
            base_revision = gw.revision()

            def prepare(i: int) -> tuple[Files, list[str], Path, LintResult]:
                files, applied = mutate(base, args.seed, i)
                d = work / "mutants" / str(i)
                write_dir(d, files)
                return files, applied, d, lint(d)

            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                ahead: dict[int, Future[tuple[Files, list[str], Path, LintResult]]] = {}
                for n, i in enumerate(indices):
                    for j in indices[n : n + 2 * max(1, args.jobs)]:
                        if j not in ahead:
                            ahead[j] = pool.submit(prepare, j)
                    if time.monotonic() - t0 > args.max_seconds:
                        stopped_early = True
                        for f in ahead.values():
                            f.cancel()
                        break
                    files, applied, d, res = ahead.pop(i).result()
                    fig.configs += 1
                    fig.mutations.update(a.split("(")[0] for a in applied)
                    fig.lint_exit[str(res.code)] += 1
                    fig.problem_lines += len(res.problems)
                    fig.lines_without_file_line += res.bad_lines
                    problems = list(res.failures)
                    fig.crashes += any(
                        f.startswith(
                            ("lint died", "lint exit", "traceback", "lint hung")
                        )
                        for f in problems
                    )
                    fig.signals += any(f.startswith("lint died") for f in problems)
                    fig.tracebacks += any(f.startswith("traceback") for f in problems)

                    write_dir(live, files)
                    fig.reloads += 1
                    try:
                        result, why = gw.reload(i)
                    except (OSError, ValueError, subprocess.TimeoutExpired) as e:
                        result, why = None, f"reload failed: {type(e).__name__}: {e}"
                    fig.reload_results[str(result)] += 1
                    if why:
                        problems.append(why)
                    dead = gw.alive()
                    if dead:
                        fig.gateway_deaths += 1
                        problems.append(dead)
                    elif (
                        result is not None
                        and res.code in (0, 1)
                        and (result == "invalid") != (res.code == 1)
                    ):
                        fig.verdict_mismatches += 1
                        problems.append(
                            f"reload says {result!r} but lint exited {res.code}"
                        )
                    if problems:
                        shutil.copytree(
                            d, keep / "failures" / str(i), dirs_exist_ok=True
                        )
                        (keep / "failures" / str(i) / "lint.out").write_text(
                            "\n".join(res.problems) + "\n"
                        )
                        fig.failures.append(
                            {"mutant": i, "mutations": applied, "problems": problems}
                        )
                        print(
                            f"mutant {i} {applied}: {'; '.join(problems)}",
                            file=sys.stderr,
                        )
                    shutil.rmtree(d, ignore_errors=True)
                    if dead:
                        end_failure = f"the gateway died at mutant {i}\n{gw.log_tail()}"
                        break
                    if fig.configs % 50 == 0:
                        print(
                            f"fuzz_config: {fig.configs}/{len(indices)} in {time.monotonic() - t0:.0f}s"
                        )

            if not end_failure:
                write_dir(live, base)
                result, why = gw.reload(0)
                if (
                    why
                    or result not in ("ok", "unchanged")
                    or gw.alive()
                    or gw.revision() != base_revision
                ):
                    end_failure = f"the base config is not running again at the end: {result!r} {why}"
        finally:
            code = gw.stop()
        if not end_failure and code != 0:
            end_failure = (
                f"the gateway's SIGTERM exit code was {code}, not 0\n{gw.log_tail()}"
            )
        netns = bool(gw.netns)

    seconds = time.monotonic() - t0
    command = " ".join(
        ["tools/fuzz/fuzz_config.py", *(argv if argv is not None else sys.argv[1:])]
    )
    failed = bool(fig.failures or end_failure or stopped_early)
    summary = {
        "fuzzer": "fuzz_config",
        "command": command,
        "seed": args.seed,
        "count": args.count,
        "configs_tried": fig.configs,
        "seconds": round(seconds, 1),
        "stopped_early_by_time_budget": stopped_early,
        "lint": {
            "exit_codes": dict(fig.lint_exit),
            "crashes": fig.crashes,
            "signals": fig.signals,
            "tracebacks": fig.tracebacks,
            "lines_without_file_line": fig.lines_without_file_line,
            "problem_lines": fig.problem_lines,
        },
        "reload": {
            "reloads": fig.reloads,
            "results": dict(fig.reload_results),
            "gateway_deaths": fig.gateway_deaths,
            "verdict_mismatches": fig.verdict_mismatches,
            "network_namespace": netns,
        },
        "mutations": dict(sorted(fig.mutations.items())),
        "failures": fig.failures[:100],
        "end_failure": end_failure,
        "ok": not failed,
    }
    (args.out / "fuzz_config.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(
        f"fuzz_config: {fig.configs} configs in {seconds:.0f}s (seed {args.seed}): {fig.crashes} crashes, "
        f"{fig.signals} signals, {fig.lines_without_file_line} lines without file:line, "
        f"{fig.reloads} reloads {dict(fig.reload_results)}, {fig.gateway_deaths} gateway deaths, "
        f"{len(fig.failures)} failing mutants -> {args.out / 'fuzz_config.json'}"
    )
    if end_failure:
        print(end_failure, file=sys.stderr)
    if stopped_early:
        print(
            f"time budget of {args.max_seconds:.0f}s ended the run after {fig.configs} configs",
            file=sys.stderr,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
