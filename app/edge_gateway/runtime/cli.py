"""`edge-gateway`: run the gateway on a config directory.

    edge-gateway run --config DIR [--log-level info] [--log-format json|text]
    edge-gateway --version

SIGHUP, `edge-ctl reload` and any change of the directory's YAML files reload the configuration
live (runtime/reload.py). Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 when the configuration is invalid (every
problem printed as `file:line: message` on stderr), 1 when the gateway cannot start (WAL locked,
control socket in use, port taken…). A second SIGTERM/SIGINT during the graceful stop exits at once
(the WAL is consistent at any instant; only the current flush window is redone on the next start).
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


@stdout.guard
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-gateway", description="Modbus → WAL → MQTT 5 edge gateway")
    p.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run the gateway in the foreground (systemd Type=notify)")
    run.add_argument("--config", required=True, metavar="DIR", help="directory with the five YAML files")
    run.add_argument("--log-level", default=os.environ.get("EDGE_GATEWAY_LOG_LEVEL", "info"))
    run.add_argument("--log-format", choices=("json", "text"), default="json")
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
