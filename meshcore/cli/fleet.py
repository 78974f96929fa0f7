"""``meshctl fleet status|logs|restart`` and ``meshctl bug-report``: operations on every host over SSH.

Hosts and SSH settings come from an Ansible inventory (``-i``, or $MESHCORE_INVENTORY), read with
``ansible-inventory --list``. Wire into meshctl with ``register(subparsers, common)``.

Exit codes: 0 all good; 1 a host could not be reached or a command failed on it (the others are
still reported); 2 (``fleet status``) every host answered but a unit or Envoy is not active.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import yaml

from ..errors import MeshError
from ..fleet import (bug_report, find_host, fleet_logs, fleet_restart, fleet_status, format_table,
                     load_inventory)
from ..fleet.operations import SERVICES
from ._run import dispatch
from ._commands import HELP
from ._types import MeshctlParser, integer


def _inventory(args) -> str:
    path = args.inventory or os.environ.get("MESHCORE_INVENTORY")
    if not path:
        raise MeshError("no inventory: pass -i INVENTORY (an Ansible inventory) or set $MESHCORE_INVENTORY")
    return path


def cmd_status(args) -> int:
    reports = fleet_status(load_inventory(_inventory(args), limit=args.limit))
    fmt = getattr(args, "output", "table")
    data = [r.to_json() for r in reports]
    if fmt == "json":
        print(json.dumps(data, indent=2))
    elif fmt == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(format_table(reports))
    for r in reports:
        if r.error:
            print(f"meshctl: {r.host}: {r.error}", file=sys.stderr)
    if any(r.error for r in reports):
        return 1
    return 0 if all(r.healthy for r in reports) else 2


def cmd_logs(args) -> int:
    host = find_host(load_inventory(_inventory(args)), args.host)
    sys.stdout.write(fleet_logs(host, args.unit, args.lines))
    return 0


def cmd_restart(args) -> int:
    host = find_host(load_inventory(_inventory(args)), args.host)
    state = fleet_restart(host, args.service)
    print(f"{host.name}: {SERVICES[args.service]} {state}")
    return 0


def cmd_bug_report(args) -> int:
    out = Path(args.out)
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):  # before connecting to any host
        raise MeshError(f"--out {args.out!r}: {out.parent} is not a writable directory; pick another --out")
    manifest = bug_report(load_inventory(_inventory(args), limit=args.limit), Path(args.out), lines=args.lines)
    for name in manifest["failed"]:
        print(f"meshctl: {name}: {manifest['hosts'][name]['error']}", file=sys.stderr)
    print(args.out)
    return 1 if manifest["failed"] else 0


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``fleet`` (status, logs, restart) and ``bug-report`` to meshctl's ``subparsers``."""
    inv = argparse.ArgumentParser(add_help=False)
    inv.add_argument("-i", "--inventory", help="Ansible inventory (YAML, INI or script); default $MESHCORE_INVENTORY")
    fp = subparsers.add_parser("fleet", parents=[common], help=HELP["fleet"],
                               description="Status, logs and restarts on every host of an Ansible inventory, "
                                           "over SSH (Fabric).")
    sub = fp.add_subparsers(dest="fleet_command", required=True)
    st = sub.add_parser("status", parents=[common, inv],
                        help="Agent, Envoy and control plane units and certificate expiry on every host.")
    st.add_argument("--limit", help="an Ansible host pattern (e.g. meshcore_vms, vm1)")
    st.set_defaults(fn=cmd_status)
    lg = sub.add_parser("logs", parents=[common, inv], help="A host's journal for a meshcore unit.")
    lg.add_argument("host", metavar="VM")
    lg.add_argument("-n", "--lines", type=integer(low=1, high=1_000_000), default=200, help="how many lines (default %(default)s)")
    lg.add_argument("--unit", choices=sorted(SERVICES), default="agent")
    lg.set_defaults(fn=cmd_logs)
    rs = sub.add_parser("restart", parents=[common, inv], help="Restart a meshcore unit on one host.")
    rs.add_argument("host", metavar="VM")
    rs.add_argument("--service", choices=sorted(SERVICES), required=True)
    rs.set_defaults(fn=cmd_restart)
    br = subparsers.add_parser(
        "bug-report", parents=[common, inv],
        help=HELP["bug-report"],
        description="Collect Envoy config dumps, unit status, recent journal, the agent's status.json, "
                    "certificate metadata and the control plane's status from every host into one .tar.gz. "
                    "Private keys and join tokens are never collected.")
    br.add_argument("--out", required=True, help="FILE.tar.gz to write")
    br.add_argument("-n", "--lines", type=integer(low=1, high=1_000_000), default=500, help="journal lines per unit (default %(default)s)")
    br.add_argument("--limit", help="an Ansible host pattern")
    br.set_defaults(fn=cmd_bug_report)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help=argparse.SUPPRESS)
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format")
    p = MeshctlParser(prog="meshctl", description="meshcore fleet operations.")
    register(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(args)


__all__ = ["register", "main", "build_parser"]

if __name__ == "__main__":
    sys.exit(main())
