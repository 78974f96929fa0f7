"""``meshctl store``: the resource store's health, and putting back what Consul KV lost.

* ``meshctl store status [-o table|json|yaml]``: backend, location, state (``ok`` or ``suspect``), the
  generation in the store and of the control plane's own sealed copy (``GET /v1/store``); exit 3 when suspect,
  so a script can alarm on it;
* ``meshctl store restore [--force] [--yes] [-o ...]``: write the held generation back
  (``POST /v1/store/restore``), then read the status again to show it took. Without ``--yes`` it shows what it
  will write and asks first (a terminal) or refuses (no terminal).
"""

from __future__ import annotations

import argparse
import sys
import time

from ..errors import MeshError
from ..resources.store import StoreHealth
from ._client import Client, client_for
from ._commands import HELP
from ._output import out

EXIT_SUSPECT = 3


def _client(args) -> Client:
    return client_for(args, timeout=120.0)


def _status(client: Client) -> StoreHealth:
    raw = client.get("/v1/store")
    if not isinstance(raw, dict):
        raise MeshError(f"the control plane answered /v1/store with {type(raw).__name__}, not a store health; "
                        "is it older than this meshctl?")
    return StoreHealth.from_json(raw)


def render(health: StoreHealth) -> None:
    rows = [("BACKEND", health.backend), ("LOCATION", health.location or "-"), ("STATE", health.state),
            ("GENERATION", f"{health.generation} ({health.resources} resources)"),
            ("HELD COPY", f"generation {health.held_generation} ({health.held_resources} resources)"
             if health.held_generation else "none")]
    if health.suspect_since:
        rows.append(("SUSPECT SINCE", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(health.suspect_since))))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k.ljust(width)}  {v}")
    if health.message:
        print(f"\n{health.message}")
    for where, why in health.unreadable:
        print(f"\nunreadable {where}: {why}")


def cmd_status(args) -> int:
    health = _status(_client(args))
    out(health.to_json(), args.output, lambda _: render(health))
    return EXIT_SUSPECT if not health.ok else 0


def cmd_restore(args) -> int:
    client = _client(args)
    progress = sys.stderr if args.output == "table" else None
    before = _status(client)
    if before.ok and not args.force:
        raise MeshError(f"the resource store is not suspect ({before.location}: generation {before.generation}, "
                        f"{before.resources} resources): nothing to restore. --force writes the held copy "
                        f"(generation {before.held_generation}, {before.held_resources} resources) back anyway")
    if not before.held_generation:
        raise MeshError("the control plane holds no copy of the resources to restore (it keeps one only with "
                        "--store consul and its KEK); re-apply your resource files with `meshctl apply -f`")
    plan = (f"write generation {before.held_generation} ({before.held_resources} resources) back to "
            f"{before.location}, replacing its {before.resources} resource(s)")
    if not args.yes:
        if not sys.stdin.isatty():
            raise MeshError(f"restore would {plan}; add --yes to do it without a terminal")
        answer = input(f"Restore will {plan}. Continue? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            print("nothing done", file=sys.stderr)
            return 1
    if progress:
        print(f"[1/2] restoring: {plan} ...", file=progress, flush=True)
    client.post("/v1/store/restore", {"force": bool(args.force)})
    after = _status(client)
    if progress:
        print(f"[2/2] verified: the store is {after.state} at generation {after.generation} "
              f"({after.resources} resources)", file=progress, flush=True)
    out(after.to_json(), args.output, lambda _: render(after))
    return EXIT_SUSPECT if not after.ok else 0


def register(subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``store status`` (the default) and ``store restore``."""
    sp = subparsers.add_parser("store", parents=[common], help=HELP["store"],
                               description="The resource store's health: whether the backend (Consul KV) still "
                                           "holds what the control plane applied, and restoring it when it lost "
                                           f"it. `status` exits {EXIT_SUSPECT} when the store is suspect.")
    sp.set_defaults(fn=cmd_status)
    sub = sp.add_subparsers(dest="store_command", metavar="{status,restore}")
    st = sub.add_parser("status", parents=[common], help="Backend, state (ok/suspect), generations (the default).",
                        description=f"The resource store's health; exits {EXIT_SUSPECT} when it is suspect.")
    st.set_defaults(fn=cmd_status)
    rs = sub.add_parser("restore", parents=[common], help="Write the held generation back to the store.",
                        description="Write the control plane's held copy of the last good generation back to "
                                    "Consul KV, replacing what is there (after Consul lost its data).")
    rs.add_argument("--force", action="store_true", help="restore even when the store is not suspect")
    rs.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    rs.set_defaults(fn=cmd_restore)
