"""`edge-gateway`: run the gateway on a config directory or from a configuration store.

    edge-gateway run --config DIR [--log-level LEVEL] [--log-format json|text]
    edge-gateway run --config etcd://HOST:PORT[,HOST:PORT…]/PREFIX [--state-dir DIR] [--gateway-id ID]
                     [--etcd-ca F --etcd-cert F --etcd-key F --etcd-user U --etcd-password-file F]
    edge-gateway --version

A DIR whose gateway.yml holds a `config_source:` block is the store's bootstrap (config/bootstrap.py).
From etcd, every revision is cached under the state directory (runtime/cfgcache.py) and the gateway
starts from that cache when the store is unreachable (runtime/fleet.py).

SIGHUP, `edge-ctl reload` and any change of the directory's YAML files reload the configuration
live (runtime/reload.py). Exit codes: 0 after a clean stop (SIGTERM/SIGINT), 2 when the configuration is invalid (every
problem printed as `file:line: message` on stderr), 1 when the gateway cannot start (WAL locked,
control socket in use, port taken…). A second SIGTERM/SIGINT during the graceful stop exits at once
(the WAL is consistent at any instant; only the current flush window is redone on the next start).
`--help` lists every option and these exit codes (EXIT_CODES), and 141 when stdout is closed early.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from edge_gateway import __version__
from edge_gateway.config import isolated, stdout
from edge_gateway.config.clihelp import Help
from edge_gateway.config.model import EtcdSourceCfg, Snapshot
from edge_gateway.config.problems import ConfigError
from edge_gateway.core import registry
from edge_gateway.runtime import logs

if TYPE_CHECKING:
    from edge_gateway.runtime.fleet import EtcdSource

log = logging.getLogger("edge_gateway")


EXIT_CODES = """\
exit codes:
  0    clean stop after SIGTERM or SIGINT (Ctrl-C); also --help and --version
  1    the gateway cannot start: WAL locked by another process, control socket
       in use, metrics port taken, etcd unreachable with no cached configuration
       ... (logged as "cannot start: ..."); also a second SIGTERM/SIGINT during
       the graceful stop, which exits at once
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

From etcd (--config etcd://HOST:PORT[,...]/PREFIX, or a DIR whose gateway.yml
holds a config_source: block) every pushed revision is applied the same way and
cached under the state directory; started with etcd unreachable, the gateway
runs on that cache and says so. An empty prefix is waited on.
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
    h = Help(EXIT_CODES)
    p = h.parser(
        "edge-gateway", "Modbus → WAL → MQTT 5 edge gateway.\nCheck a configuration first with `edge-cfg lint DIR`."
    )
    p.add_argument("--version", action="version", version=f"edge-gateway {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = h.command(sub, "run", "run the gateway in the foreground (systemd Type=notify)", RUN_DESCRIPTION)
    run.add_argument(
        "--config",
        required=True,
        metavar="DIR|URL",
        help="directory with the five YAML files (endpoints, drivers, variables, connector, gateway.yml); "
        "relative paths in them are relative to DIR. Or etcd://HOST:PORT[,HOST:PORT...]/PREFIX, or a DIR "
        "whose gateway.yml has a config_source: block: the configuration comes from etcd",
    )
    run.add_argument(
        "--state-dir",
        default=os.environ.get("STATE_DIRECTORY", "/var/lib/edge-gateway").split(":")[0],
        metavar="DIR",
        help="from etcd: where revisions are cached (DIR/etcd/) and what relative paths in the store's "
        "files are relative to (default: $STATE_DIRECTORY, as systemd sets it, else /var/lib/edge-gateway)",
    )
    run.add_argument(
        "--gateway-id", metavar="ID", help="from etcd: this gateway's id (default: the prefix's last segment)"
    )
    for opt, what in (
        ("ca", "CA certificate file (TLS)"),
        ("cert", "client certificate file (TLS)"),
        ("key", "client key file (TLS)"),
        ("user", "RBAC user name"),
        ("password-file", "file holding the RBAC user's password"),
    ):
        env = "EDGE_ETCD_" + opt.upper().replace("-", "_")
        run.add_argument(f"--etcd-{opt}", metavar="FILE" if opt != "user" else "USER", help=f"etcd {what} (or ${env})")
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
    answer = isolated.start(args.config)  # read and validated in a child: this process imports no YAML ...
    from edge_gateway.runtime import gateway  # noqa: F401 - ... but its runtime and plugins, meanwhile

    registry.drivers()
    try:
        first = answer()
    except ConfigError as e:
        return _invalid(args.config, e)
    except OSError as e:
        print(f"{args.config}: {e}", file=sys.stderr)
        return 2
    if isinstance(first, Snapshot):
        return run_gateway(args.config, first)
    store_cfg = dataclasses.replace(
        first,
        gateway_id=first.gateway_id or args.gateway_id,
        ca=first.ca or args.etcd_ca,
        cert=first.cert or args.etcd_cert,
        key=first.key or args.etcd_key,
        username=first.username or args.etcd_user,
        password_file=first.password_file or args.etcd_password_file,
    )
    return run_gateway(args.config, None, store_cfg, Path(args.state_dir))


def _first_from_store(cfg: EtcdSourceCfg, state: Path, stop: threading.Event) -> tuple[Snapshot, EtcdSource] | int:
    """(snapshot, source) to start with from the store or its cache, or the exit code."""
    from edge_gateway.runtime import fleet

    try:
        store, gateway_id = fleet.make_store(cfg)
    except (ValueError, OSError) as e:
        print(f"{cfg.origin}: {e}", file=sys.stderr)
        return 2
    source = fleet.EtcdSource(cfg, store, gateway_id, state)
    try:
        return source.bootstrap(stop.wait), source
    except fleet.NoConfiguration as e:
        if stop.is_set():
            return 0
        log.error("cannot start: %s", e)
        return 1


def _invalid(config: str, e: ConfigError) -> int:
    for problem in e.problems:
        print(problem, file=sys.stderr)
    log.error("invalid configuration in %s: %d problem(s)", config, len(e.problems))
    return 2


def run_gateway(
    config_dir: str, snapshot: Snapshot | None, store_cfg: EtcdSourceCfg | None = None, state: Path | None = None
) -> int:
    """Run on `snapshot`, or on the first configuration of the store `store_cfg` (cached under `state`)."""
    stop = threading.Event()
    source: EtcdSource | None = None
    if snapshot is None:
        assert store_cfg is not None and state is not None
        for sig in (signal.SIGTERM, signal.SIGINT):  # while waiting for a first revision
            signal.signal(sig, lambda _s, _f: stop.set())
        try:
            first = _first_from_store(store_cfg, state, stop)
        except ConfigError as e:
            return _invalid(config_dir, e)
        except OSError as e:
            print(f"{config_dir}: {e}", file=sys.stderr)
            return 2
        if isinstance(first, int):
            return first
        snapshot, source = first

    from edge_gateway.runtime.gateway import Gateway  # imported by main() already, while the child loaded

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
    gateway = Gateway(snapshot, source=source)
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
