"""``meshctl node``: node identities.

* ``meshctl node revoke NAME [--reason TEXT] [-o table|json|yaml]``: revoke every certificate issued to
  node NAME until now (``POST /v1/nodes/{name}/revoke``, admin role). From that moment the control
  plane refuses the node's renewals, workload signing, recovery and agent API calls, and ends its ADS
  streams. The VM comes back only by joining with a new token (``meshctl token create --node NAME``).
* ``meshctl node revocations [-o ...]``: revoked nodes and the intermediates a finished root rotation
  retired (``GET /v1/nodes/revocations``).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any
from urllib.parse import quote

import yaml

from ..errors import ConfigError
from ._client import Client, client_for
from ._commands import HELP
from ._run import dispatch

_NODE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,252}$")
MAX_REASON = 512


def _client(args) -> Client:
    return client_for(args)


def _emit(data: Any, output: str, table) -> None:
    if output == "json":
        print(json.dumps(data, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(data, sort_keys=False), end="")
    else:
        print(table(data))


def _check_name(name: str) -> str:
    if not _NODE_NAME.match(name):
        raise ConfigError(f"{name!r} is not a node name (letters, digits, '.', '-', '_'; at most 253 characters)")
    return name


def _check_reason(reason: str) -> str:
    if len(reason) > MAX_REASON or any(ord(c) < 32 for c in reason):
        raise ConfigError(f"--reason: at most {MAX_REASON} printable characters on one line")
    return reason


def _revoked_table(rev: dict[str, Any]) -> str:
    return (f"node {rev['subject']} revoked at {rev['revoked_at']}"
            f"{' (' + rev['reason'] + ')' if rev.get('reason') else ''}: its renewals, workload signing and ADS "
            f"streams are refused from now on; to bring the VM back, join it with a new token "
            f"(`meshctl token create --node {rev['subject']}`)")


def _list_table(data: dict[str, Any]) -> str:
    revs = data.get("revocations") or []
    if not revs:
        return "No revocations."
    rows = [("KIND", "SUBJECT", "REVOKED AT", "BY", "REASON")]
    rows += [(r["kind"], r["subject"], r["revoked_at"], r.get("by") or "-", r.get("reason") or "-") for r in revs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def cmd_revoke(args) -> int:
    name = _check_name(args.name)  # everything is checked before anything is sent
    reason = _check_reason(args.reason or "")
    rev = _client(args).post(f"/v1/nodes/{quote(name, safe='')}/revoke", {"reason": reason})
    _emit(rev, args.output, _revoked_table)
    return 0


def cmd_revocations(args) -> int:
    _emit(_client(args).get("/v1/nodes/revocations"), args.output, _list_table)
    return 0


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``node revoke`` and ``node revocations``."""
    sp = subparsers.add_parser("node", parents=[common], help=HELP["node"],
                               description="Node identities: revoke a lost or compromised VM's certificates.")
    sub = sp.add_subparsers(dest="node_command", metavar="{revoke,revocations}", required=True)
    rv = sub.add_parser("revoke", parents=[common], help="Revoke every certificate of a node, at once (admin).",
                        description="Revoke every certificate issued to node NAME until now: the control plane "
                                    "refuses its renewals, workload signing and recovery, and ends its ADS streams. "
                                    "Recorded durably in the CA state. The VM comes back only with a new join "
                                    "token (`meshctl token create --node NAME`).")
    rv.add_argument("name", metavar="NAME", help="the node (as in the Consul catalog)")
    rv.add_argument("--reason", default="", help="why (recorded with the revocation, shown in the list)")
    rv.set_defaults(fn=cmd_revoke)
    ls = sub.add_parser("revocations", parents=[common],
                        help="Revoked nodes and intermediates retired by root rotations.")
    ls.set_defaults(fn=cmd_revocations)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="meshctl")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("--token")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    register(p.add_subparsers(dest="command", required=True), common)
    args = p.parse_args(["node", *(sys.argv[1:] if argv is None else argv)])
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
