"""edge-cfg: lint a config directory, print the schemas, diff two configs, list the installed plugins; push,
diff, watch, list and roll back a configuration in etcd, and show the fleet (config/etcd/cli.py)."""

from __future__ import annotations

import argparse
import json
import sys

from edge_gateway.config import schema, stdout
from edge_gateway.config.clihelp import Help
from edge_gateway.config.diff import diff
from edge_gateway.config.etcd import cli as etcd_cli
from edge_gateway.config.loader import ConfigError, lint, load_snapshot
from edge_gateway.config.model import NAMES
from edge_gateway.config.problems import printable
from edge_gateway.core import registry

EXIT_CODES = """\
exit codes:
  0    lint: no error (warnings allowed); schema: printed; diff: printed,
       whether or not anything changed; plugins: listed
  1    lint: at least one error; diff: OLD or NEW is not a valid configuration
       (its problems on stderr as FILE:LINE: MESSAGE)
  2    the command line is wrong (unknown command or schema name, missing DIR)
  141  stdout was closed before all was written (`edge-cfg schema | head`), as
       for a process killed by SIGPIPE; no traceback
"""

# The top level also names the etcd commands' code 3 (their own --help has the full list).
TOP_EXIT_CODES = EXIT_CODES.replace(
    "  141",
    "       etcd commands (push, diff DIR URL, watch, history, rollback, fleet\n"
    "       status): etcd unreachable or refusing (`edge-cfg push --help`)\n"
    "  3    push, rollback: the store changed since it was read; nothing written\n"
    "  141",
)

LINT_HELP = """\
Validate the five YAML files of DIR against their schemas and the rules a schema
cannot say (references, overlapping addresses, len against datatype, topics...).
Every problem is one line on stdout, FILE:LINE: MESSAGE or FILE:LINE: warning:
MESSAGE, naming the entry (tag or id) and the key, with the nearest valid word
for a typo; a summary `DIR: N error(s), M warning(s)` goes to stderr.
"""

DIFF_HELP = """\
What a hot reload from OLD to NEW would touch: lines reopened, drivers
restarted, tag maps swapped, connector and gateway.yml sections; `no change`
when nothing would.
NEW is compared as if installed in OLD's directory: a path NEW writes relative
(wal.dir, control.socket, password_file, TLS files, a serial device) is resolved
against OLD, so two copies of one configuration are `no change` wherever they
sit; an absolute path compares as written.

With an etcd URL as NEW (`edge-cfg diff DIR URL`): a unified diff of each table
as etcd holds it against DIR's file (what `edge-cfg push DIR URL` would write),
`no change (revision N)` when they agree; exit 2 when etcd cannot be read.
"""


@stdout.guard
def main(argv: list[str] | None = None) -> int:
    h = Help(EXIT_CODES)
    p = Help(TOP_EXIT_CODES).parser(
        "edge-cfg",
        "Check and compare edge-gateway configurations.",
        epilog="  modbus scan: see `edge-cfg modbus scan --help`\n",
    )
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    h.command(sub, "lint", "validate a config directory; exit 1 on any error", LINT_HELP).add_argument(
        "dir", metavar="DIR", help="the directory with the five YAML files"
    )
    h.command(
        sub,
        "schema",
        "print the JSON Schema of one file (or all)",
        "Print the JSON Schema of one file, or of all five as one JSON object keyed by\nname.",
    ).add_argument("name", nargs="?", choices=NAMES, metavar="NAME", help=f"one of {', '.join(NAMES)}")
    p_diff = h.command(sub, "diff", "what a reload from OLD to NEW would touch", DIFF_HELP)
    p_diff.add_argument("old", metavar="OLD", help="the running (or current) config directory")
    p_diff.add_argument("new", metavar="NEW", help="the edited copy, or an etcd URL (etcd://HOST:PORT/PREFIX)")
    etcd_cli.add_etcd_options(p_diff)
    h.command(
        sub,
        "plugins",
        "list the installed driver and connector plugins (entry points)",
        "Every entry-point name of the groups edge_gateway.drivers and edge_gateway.connectors,\n"
        "with the object it names and the distribution it comes from.",
    ).add_argument("--json", action="store_true", help="as JSON")
    etcd_cli.add_parsers(sub, argparse.RawDescriptionHelpFormatter)
    # Commands a driver plugin brings (`edge-cfg modbus scan`, its own exit codes): its `cli` hook.
    plugin_cli = {}
    for name, plugin in registry.drivers().items():
        hook = getattr(plugin, "cli", None)
        if hook is not None:
            hook.add_subparser(sub)
            plugin_cli[name] = hook
    args = p.parse_args(argv)
    if args.cmd in plugin_cli:
        return int(plugin_cli[args.cmd].run(args))

    if args.cmd in etcd_cli.COMMANDS:
        return etcd_cli.run(args)
    if args.cmd == "diff" and etcd_cli.is_url(args.new):
        return etcd_cli.diff_against_store(args)
    if args.cmd == "plugins":
        return _plugins(args.json)
    if args.cmd == "lint":
        problems = lint(args.dir)
        for problem in problems:
            print(problem)
        errors = sum(p.severity == "error" for p in problems)
        warnings = len(problems) - errors
        print(f"{printable(args.dir)}: {errors} error(s), {warnings} warning(s)", file=sys.stderr)
        return 1 if errors else 0
    if args.cmd == "schema":
        names = [args.name] if args.name else list(NAMES)
        out = schema.schema(names[0]) if args.name else {n: schema.schema(n) for n in names}
        print(json.dumps(out, indent=2))
        return 0
    try:
        old, new = load_snapshot(args.old), load_snapshot(args.new)
    except ConfigError as e:
        print(e, file=sys.stderr)
        return 1
    for line in diff(old, new).lines():
        print(line)
    return 0


def _plugins(as_json: bool) -> int:
    """Every entry-point name of every plugin group, with where it comes from; exit 0."""
    listing = registry.listing()
    if as_json:
        print(json.dumps(listing, indent=2))
        return 0
    for group, rows in listing.items():
        print(f"{group}:")
        if not rows:
            print("  (none)")
        for row in rows:
            err = f"  FAILED TO LOAD: {row['error']}" if "error" in row else ""
            print(f"  {row['name']:<12} {row['value']}  [{row['dist']}]{err}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
