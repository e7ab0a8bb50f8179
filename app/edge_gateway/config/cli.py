"""edge-cfg: lint a config directory, print the schemas, diff two configs, list the installed plugins."""

from __future__ import annotations

import argparse
import json
import sys

from edge_gateway.config import schema
from edge_gateway.config.diff import diff
from edge_gateway.config.loader import ConfigError, lint, load_snapshot
from edge_gateway.config.source import printable
from edge_gateway.core import registry


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-cfg", description="Check and compare edge-gateway configurations.")
    sub = p.add_subparsers(dest="cmd", required=True)
    p_lint = sub.add_parser("lint", help="validate a config directory; exit 1 on any error")
    p_lint.add_argument("dir")
    p_schema = sub.add_parser("schema", help="print the JSON Schema of one file (or all)")
    p_schema.add_argument("name", nargs="?", choices=schema.NAMES)
    p_diff = sub.add_parser("diff", help="what a reload from OLD to NEW would touch")
    p_diff.add_argument("old")
    p_diff.add_argument("new")
    p_plugins = sub.add_parser("plugins", help="list the installed driver and connector plugins (entry points)")
    p_plugins.add_argument("--json", action="store_true", help="as JSON")
    # edge-cfg modbus scan: commissioning, all of it in edge_gateway.config.scan
    from edge_gateway.config import scan as modbus_scan

    modbus_scan.add_subparser(sub)
    args = p.parse_args(argv)
    if args.cmd == "modbus":
        return modbus_scan.run(args)

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
        names = [args.name] if args.name else list(schema.NAMES)
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
