"""`edge-cfg opcua browse opc.tcp://HOST:PORT [--node NODEID] [--depth N]`: walk a server's address
space from a node (Objects by default) and print a ready variables.yml fragment: one tag per Variable,
named by its browse path, `datatype` from its DataType, `access` from its UserAccessLevel.
A commissioning tool run by hand: asyncio here is the CLI process's own (asyncio.run), never the
gateway's. Exit codes: 0 variables found, 1 none, 2 cannot connect / bad arguments."""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from typing import Any

# OPC UA built-in DataType (ns=0 numeric id) → our datatype
DATATYPE = {
    1: "bool",
    2: "int16",
    3: "uint16",
    4: "int16",
    5: "uint16",
    6: "int32",
    7: "uint32",
    8: "int64",
    9: "uint64",
    10: "float",
    11: "double",
    12: "string",
    13: "datetime",
    15: "binary",
}  # fmt: skip  (SByte/Byte widen to int16/uint16)
ACCESS_CURRENT_WRITE = 0x02


def add_subparser(sub: Any) -> None:
    p_ua = sub.add_parser("opcua", help="commissioning: browse an OPC UA server")
    usub = p_ua.add_subparsers(dest="opcua_cmd", required=True)
    p = usub.add_parser(
        "browse",
        help="walk the address space and print a variables.yml fragment",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("url", help="opc.tcp://HOST:PORT")
    p.add_argument("--node", default="i=85", help="NodeId to start from (default i=85, Objects)")
    p.add_argument("--depth", type=int, default=4, help="levels below --node (default 4)")
    p.add_argument("--driver-id", default="opcua1", help="driver_id of the printed tags (default opcua1)")
    p.add_argument("--timeout", type=float, default=4.0, help="seconds per request (default 4)")


def _tag(path: list[str]) -> str:
    return ".".join(re.sub(r"[^A-Za-z0-9_]+", "_", p).strip("_").lower() or "x" for p in path)


async def _walk(args: argparse.Namespace) -> list[dict[str, str]]:
    from asyncua import Client, ua

    out: list[dict[str, str]] = []
    async with Client(args.url, timeout=args.timeout) as client:

        async def visit(node: Any, path: list[str], depth: int) -> None:
            for child in await node.get_children(refs=ua.ObjectIds.HierarchicalReferences):
                name = (await child.read_browse_name()).Name
                cls = await child.read_node_class()
                here = [*path, name]
                if cls == ua.NodeClass.Variable:
                    dt = await child.read_data_type()
                    datatype = DATATYPE.get(dt.Identifier) if dt.NamespaceIndex == 0 else None
                    if datatype is not None:
                        level = (await child.read_attribute(ua.AttributeIds.UserAccessLevel)).Value.Value or 0
                        access = "RW" if int(level) & ACCESS_CURRENT_WRITE else "R"
                        out.append(
                            {
                                "tag": _tag(here),
                                "node": child.nodeid.to_string(),
                                "datatype": datatype,
                                "access": access,
                            }
                        )
                if depth > 1 and cls in (ua.NodeClass.Object, ua.NodeClass.Variable):
                    await visit(child, here, depth - 1)

        await visit(client.get_node(args.node), [], max(1, args.depth))
    return out


def run(args: argparse.Namespace) -> int:
    if args.opcua_cmd != "browse":
        return 2
    if not args.url.startswith("opc.tcp://"):
        print(f"edge-cfg opcua browse: {args.url!r} is not an opc.tcp:// URL", file=sys.stderr)
        return 2
    try:
        found = asyncio.run(_walk(args))
    except Exception as e:  # noqa: BLE001 - every failure to reach the server is one status line
        print(f"edge-cfg opcua browse: cannot browse {args.url}: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    if not found:
        print(f"# no variables below {args.node} (depth {args.depth})")
        return 1
    print(f"# variables.yml fragment from {args.url} below {args.node}")
    for v in found:
        access = ", access: RW" if v["access"] == "RW" else ""
        print(
            f"- {{ tag: {v['tag']}, driver_id: {args.driver_id}, datatype: {v['datatype']}{access}, "
            f'address: {{ node: "{v["node"]}" }} }}'
        )
    return 0
