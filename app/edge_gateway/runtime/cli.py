"""`edge-gateway`: run the gateway on a config directory.

    edge-gateway run --config DIR [--log-level LEVEL] [--log-format json|text]
    edge-gateway --version

SIGHUP, `edge-ctl reload` and any change of the directory's YAML files reload the configuration
live (runtime/reload.py). Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 when the configuration is invalid (every
problem printed as `file:line: message` on stderr), 1 when the gateway cannot start (WAL locked,
control socket in use, port taken…). A second SIGTERM/SIGINT during the graceful stop exits at once
(the WAL is consistent at any instant; only the current flush window is redone on the next start).
`--help` lists every option and these exit codes (EXIT_CODES), and 141 when stdout is closed early.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from edge_gateway import __version__
from edge_gateway.config import stdout
from edge_gateway.config.loader import ConfigError, load_snapshot
from edge_gateway.runtime import logs

log = logging.getLogger("edge_gateway")


EXIT_CODES = """\
exit codes:
  0    clean stop after SIGTERM or SIGINT (Ctrl-C); also --help and --version
  1    the gateway cannot start: WAL locked by another process, control socket
       in use, metrics port taken, ... (logged as "cannot start: ..."); also a
       second SIGTERM/SIGINT during the graceful stop, which exits at once
  2    the configuration is invalid or unreadable (every problem on stderr as
       FILE:LINE: MESSAGE, as `edge-cfg lint` prints it), or the command line
       is wrong; systemd does not restart on 2 (RestartPreventExitStatus=2)
  141  stdout was closed before all was written (a reader such as head left
       early), as for a process killed by SIGPIPE; no traceback
"""

RUN_DESCRIPTION = """\
Run the gateway in the foreground on a config directory (systemd Type=notify:
READY, WATCHDOG and STATUS). SIGHUP, `edge-ctl reload` and any change of the
directory's YAML files reload the configuration live; an invalid one is refused
and the running one kept. SIGTERM or SIGINT stops it gracefully.
"""

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


def _log_level(text: str) -> str:
    """argparse type of --log-level; also applied to the EDGE_GATEWAY_LOG_LEVEL default."""
    level = text.strip().lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a log level (--log-level or EDGE_GATEWAY_LOG_LEVEL): use one of {', '.join(LOG_LEVELS)}"
        )
    return level


@stdout.guard
def main(argv: list[str] | None = None) -> int:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="edge-gateway",
        description="Modbus → WAL → MQTT 5 edge gateway.\nCheck a configuration first with `edge-cfg lint DIR`.",
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    p.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser(
        "run",
        help="run the gateway in the foreground (systemd Type=notify)",
        description=RUN_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=fmt,
    )
    run.add_argument(
        "--config",
        required=True,
        metavar="DIR",
        help="directory with the five YAML files (endpoints, drivers, variables, connector, gateway.yml); "
        "relative paths in them are relative to DIR",
    )
    run.add_argument(
        "--log-level",
        type=_log_level,
        default=os.environ.get("EDGE_GATEWAY_LOG_LEVEL", "info"),
        metavar="LEVEL",
        help=f"least severe log record written: {', '.join(LOG_LEVELS)} (default: $EDGE_GATEWAY_LOG_LEVEL, else info)",
    )
    run.add_argument(
        "--log-format",
        choices=("json", "text"),
        default="json",
        help="log records on stdout as JSON lines (default, for journald and log shippers) "
        "or as plain text for a terminal",
    )
    args = p.parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    return run_gateway(args.config)


def run_gateway(config_dir: str) -> int:
    try:
        snapshot = load_snapshot(config_dir)
    except ConfigError as e:
        for problem in e.problems:
            print(problem, file=sys.stderr)
        log.error("invalid configuration in %s: %d problem(s)", config_dir, len(e.problems))
        return 2
    except OSError as e:
        print(f"{config_dir}: {e}", file=sys.stderr)
        return 2

    from edge_gateway.runtime.gateway import Gateway  # after logging is set up: imports log too
    from edge_gateway.runtime.heap import release_free_memory

    release_free_memory()  # the loader's node trees are gone: their pages need not stay resident

    stop = threading.Event()
    signals = {"n": 0}

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        signals["n"] += 1
        if signals["n"] > 1:
            log.warning("second %s: exiting now", signal.Signals(signum).name)
            os._exit(1)
        log.info("%s: stopping", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    gateway = Gateway(snapshot)
    # SIGHUP only queues a reload (no logging or locks inside a signal handler); its default would kill us.
    signal.signal(signal.SIGHUP, lambda _s, _f: gateway.request_reload("SIGHUP"))
    try:
        gateway.start()
    except Exception as e:  # noqa: BLE001 - reported and turned into the exit code
        log.error("cannot start: %s", e)
        return 1
    while not stop.wait(1.0):
        pass
    gateway.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
