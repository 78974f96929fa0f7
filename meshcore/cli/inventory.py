"""``meshctl inventory``: an Ansible inventory built from the mesh catalog, also a dynamic inventory script.

Ansible runs a dynamic inventory script with ``--list`` (print every group and ``_meta.hostvars`` as
JSON) or ``--host H`` (print one host's variables). A two-line wrapper that execs
``meshctl inventory --catalog consul "$@"`` is therefore a complete dynamic inventory (see
docs/deploy.md). ``-o yaml``/``-o ini`` write the same inventory as a static inventory file.
The inventory itself is built by :mod:`meshcore.deploy.inventory` (pure).
"""

from __future__ import annotations

import argparse
import json
import sys

import yaml

from ..deploy.inventory import build_inventory, host_vars, to_ini, to_yaml
from ..deploy.sources import CATALOG_HELP, catalog_spec, load_catalog
from ..errors import ConfigError
from ._run import dispatch
from ._types import MeshctlParser
from ._commands import HELP

FORMATS = ("json", "yaml", "ini")

DESCRIPTION = ("Print an Ansible inventory built from the catalog: groups meshcore_vms, meshcore_gateways, "
               "svc_<service> and dc_<datacenter>; host vars ansible_host, meshcore_node, meshcore_datacenter, "
               "meshcore_services. Works as an Ansible dynamic inventory script (--list, --host H).")


def inventory_text(args) -> str:
    """What ``meshctl inventory`` prints for ``args`` (reads the catalog once)."""
    if args.host is not None and args.output == "ini":
        raise ConfigError("-o ini writes a whole inventory; use -o json or -o yaml with --host")
    catalog = load_catalog(catalog_spec(args.catalog)).catalog
    if args.host is not None:
        data = host_vars(catalog, args.host)
        if args.output == "yaml":
            return yaml.safe_dump(data, sort_keys=False)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"
    inventory = build_inventory(catalog)
    if args.output == "yaml":
        return to_yaml(inventory)
    if args.output == "ini":
        return to_ini(inventory)
    return json.dumps(inventory, indent=2, sort_keys=True) + "\n"


def cmd_inventory(args) -> int:
    sys.stdout.write(inventory_text(args))
    sys.stdout.flush()
    return 0


def register(subparsers, common: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Add ``meshctl inventory`` to ``subparsers``.

    ``common`` is accepted for symmetry but not used as a parent: its ``-o table|json|yaml`` would
    clash with this command's ``-o json|yaml|ini`` (default json, what Ansible expects), and the
    command needs no control plane (``--server``).
    """
    sp = subparsers.add_parser("inventory", help=HELP["inventory"], description=DESCRIPTION)
    sp.add_argument("--catalog", metavar="SPEC", help=CATALOG_HELP)
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--list", action="store_true", help="the whole inventory (the default; Ansible passes it)")
    mode.add_argument("--host", metavar="HOST", help="one host's variables")
    sp.add_argument("-o", "--output", choices=FORMATS, default="json",
                    help="json (Ansible's dynamic inventory format, default), yaml or ini (static inventory files)")
    sp.set_defaults(fn=cmd_inventory)
    return sp


def main(argv: list[str] | None = None) -> int:
    """``python -m meshcore.cli.inventory ARGS``: the same command without ``meshctl`` (exit 1 on a MeshError)."""
    parser = MeshctlParser(prog="meshctl")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["inventory", *(sys.argv[1:] if argv is None else argv)])
    return dispatch(args)


__all__ = ["cmd_inventory", "inventory_text", "main", "register"]


if __name__ == "__main__":
    sys.exit(main())
