"""``meshctl ca`` (root rotation, CA state) and ``meshctl certs list`` (with expiry warnings).

Wire into meshctl with ``register(subparsers, common)``; ``python -m meshcore.cli.ca`` runs the
same commands on their own.

* ``meshctl ca status [-o json]``: mode, phase, roots, signing intermediate, leaves on an old root.
* ``meshctl ca rotate [--wait] [--timeout D] [--force]``: start a root rotation; with ``--wait``
  show progress until no unexpired leaf chains to the old root. ``--hold`` starts one that keeps
  signing from the old root until ``meshctl ca rotate --resume`` (federated domains import the new root first).
* ``meshctl ca rotate --finish [--force]``: retire the old root (drop it from the bundle).
* ``meshctl certs list [-o json]``: every SVID with ``spiffe_id``, ``serial``, ``not_after``
  (RFC 3339), ``node``, ``renew_at``, ``root`` and ``expiring``; the table warns about expiring ones.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import yaml

from ..api._wire import encode
from ..api.operator import CaCert, CaRotateRequest, CaState, IssuedCert
from ..errors import ApiError, MeshError
from ._client import Client, client_for
from ._output import table as _table
from ._run import dispatch
from ._types import MeshctlParser, number, seconds
from ._commands import HELP

OUTPUTS = ("table", "json", "yaml")


def _client(args) -> Client:
    return client_for(args)


def _emit(data: Any, fmt: str, table: Callable[[Any], None]) -> None:
    if fmt == "json":
        print(json.dumps(encode(data), indent=2, sort_keys=True))
    elif fmt == "yaml":
        print(yaml.safe_dump(encode(data), sort_keys=False), end="")
    else:
        table(data)


# --- certs list --------------------------------------------------------------------------------

def _parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def _with_expiry(cert: IssuedCert, now: datetime) -> CaCert:
    """``renew_at``/``expiring`` for a control plane that only serves ``/v1/certs`` (its root: unknown)."""
    start, end = _parse_time(cert.not_before), _parse_time(cert.not_after)
    life = end - start
    return CaCert(spiffe_id=cert.spiffe_id, serial=cert.serial, node=cert.node, not_before=cert.not_before,
                  not_after=cert.not_after, renew_at=(start + life / 2).isoformat().replace("+00:00", "Z"),
                  expiring=now >= start + life * 0.55)


def fetch_certs(client: Client) -> list[CaCert]:
    try:
        return client.ca_certs()
    except ApiError as exc:
        if exc.status != 404:
            raise
    now = datetime.now(timezone.utc)
    return [_with_expiry(c, now) for c in client.certs()]


def cmd_certs_list(args) -> int:
    certs = fetch_certs(_client(args))

    def table(rows: list[CaCert]) -> None:
        _table([[c.spiffe_id, c.node or "", c.serial[:16], c.not_after,
                 c.root, "EXPIRING" if c.expiring else ""] for c in rows],
               ["SPIFFE ID", "NODE", "SERIAL", "NOT AFTER", "ROOT", ""])
        expiring = [c for c in rows if c.expiring]
        if expiring:
            print(f"WARNING: {len(expiring)} certificate(s) past their renewal point (half life) and not yet "
                  "renewed: check those nodes' agents (`meshctl status`, the agent's status.json)")

    _emit(certs, args.output, table)
    return 0


# --- ca status / rotate ------------------------------------------------------------------------

def _print_state(state: CaState) -> None:
    held = " (held: `meshctl ca rotate --resume` releases it)" if state.held else ""
    print(f"trust domain {state.trust_domain}  mode {state.mode}  key {state.key_type}  phase {state.phase}{held}")
    for root in state.roots:
        print(f"  root ({root.role}): {root.subject}  sha256 {root.sha256[:16]}  until {root.not_after}")
    inter = state.intermediate
    print(f"  signing intermediate: {inter.subject}  until {inter.not_after}")
    if state.phase != "idle":
        left = state.old_root_certificates
        print(f"  certificates still on the old root: {len(left)}")
        for c in left[:20]:
            print(f"    {c.spiffe_id}  node={c.node or '-'}  serial={c.serial[:16]}")
        if state.nodes_without_bundle:
            print(f"  nodes still without the new trust bundle: {', '.join(state.nodes_without_bundle)}")


def cmd_ca_status(args) -> int:
    _emit(_client(args).ca_state(), args.output, _print_state)
    return 0


def _progress_line(state: CaState) -> str:
    if state.phase == "preparing" and state.held:
        return ("preparing (held): the new root is in the trust bundle, certificates still come from the old one "
                "until `meshctl ca rotate --resume`")
    if state.phase == "preparing":
        waiting = state.nodes_without_bundle
        return (f"preparing: distributing the new trust bundle; {len(waiting)} node(s) still without it"
                + (f" ({', '.join(waiting)})" if waiting else ""))
    left = state.old_root_certificates
    names = ", ".join(f"{c.spiffe_id.rsplit('/', 1)[-1]}@{c.node or 'control-plane'}" for c in left[:6])
    return f"{state.phase}: {len(left)} certificate(s) still chain to the old root" + (f": {names}" if names else "")


def wait_for_rotation(client: Client, timeout: float | None, interval: float,
                      out: Callable[[str], None]) -> CaState:
    """Poll ``GET /v1/ca`` until the rotation is active and no leaf chains to the old root."""
    deadline = None if not timeout else time.monotonic() + timeout
    last = ""
    while True:
        state = client.ca_state()
        line = _progress_line(state)
        if line != last:
            out(line)
            last = line
        if state.phase != "preparing" and not state.old_root_certificates:
            return state
        if deadline is not None and time.monotonic() >= deadline:
            raise MeshError(f"timed out after {timeout:.0f}s: {line}; `meshctl ca status` shows what is left, "
                            "`meshctl ca rotate --wait` waits again")
        time.sleep(interval)


def cmd_ca_rotate(args) -> int:
    client = _client(args)

    def progress(message: str) -> None:
        print(f"==> {message}", file=sys.stderr, flush=True)

    started = time.monotonic()
    if args.hold and (args.wait or args.resume or args.finish or args.force):
        raise MeshError("--hold starts a rotation that waits for `meshctl ca rotate --resume`: it goes with no "
                        "--wait, --resume, --finish or --force")
    if args.finish:
        state = client.ca_rotate(CaRotateRequest(finish=True, force=args.force))
        progress(f"old root retired; the trust bundle now holds {len(state.roots)} root(s)")
        _emit(state, args.output, _print_state)
        return 0
    if not args.resume:
        state = client.ca_rotate(CaRotateRequest(force=args.force, hold=args.hold))
        wanted = "next" if state.phase == "preparing" else "current"
        new = next((r for r in state.roots if r.role == wanted), state.roots[0])
        progress(f"rotation started ({state.phase}{', held' if state.held else ''}): new root {new.subject}"
                 + ("; hand the new bundle to federated trust domains, then `meshctl ca rotate --resume`"
                    if state.held else ""))
    elif client.ca_state().held:
        client.ca_rotate(CaRotateRequest(release=True))
        progress("held rotation released: signing moves to the new root once every node holds the bundle")
    if args.wait or args.resume:
        state = wait_for_rotation(client, args.timeout, args.interval, progress)  # both parsed by argparse
        progress(f"every certificate chains to the new root ({time.monotonic() - started:.1f}s); "
                 "retire the old one with `meshctl ca rotate --finish`")
    else:
        state = client.ca_state()
    _emit(state, args.output, _print_state)
    return 0


# --- registration ------------------------------------------------------------------------------

def register(subparsers, common: argparse.ArgumentParser, *, certs: bool = True) -> None:
    """Add ``ca status``, ``ca rotate`` and (unless ``certs=False``) ``certs list`` to ``subparsers``."""
    sp = subparsers.add_parser("ca", parents=[common], help=HELP["ca"],
                               description="The mesh CA: state and root rotation.")
    sub = sp.add_subparsers(dest="ca_command", required=True)
    st = sub.add_parser("status", parents=[common], help="Mode, rotation phase, roots, signing intermediate.")
    st.set_defaults(fn=cmd_ca_status)
    rot = sub.add_parser(
        "rotate", parents=[common], help="Rotate the root CA with an overlapping trust bundle.",
        description="Start a root rotation: a new root and intermediate; the bundle holds both roots; once every "
                    "connected node has it, new certificates come from the new root and agents renew theirs "
                    "early. --wait shows progress until no certificate chains to the old root; then "
                    "--finish drops the old root from the bundle.")
    rot.add_argument("--wait", action="store_true", help="wait until no unexpired certificate chains to the old root")
    rot.add_argument("--resume", action="store_true",
                     help="do not start a rotation; release a held one and wait for the one in progress")
    rot.add_argument("--hold", action="store_true",
                     help="start a rotation that keeps signing from the old root (the new one already in the "
                          "bundle) until --resume: time to import the new bundle into federated trust domains")
    rot.add_argument("--finish", action="store_true", help="retire the old root (after --wait)")
    rot.add_argument("--force", action="store_true",
                     help="start: sign from the new root at once, without waiting for every node to hold the new "
                          "bundle; --finish: retire the old root even while certificates still chain to it")
    rot.add_argument("--timeout", type=seconds(low=1), default=None,
                     help="give up waiting after this long (e.g. 10m; default: no limit)")
    rot.add_argument("--interval", type=number(low=0.05, high=3600), default=1.0, help=argparse.SUPPRESS)
    rot.set_defaults(fn=cmd_ca_rotate)
    if certs:
        cp = subparsers.add_parser("certs", parents=[common], help=HELP["certs"],
                                   description="Certificates the CA issued.")
        csub = cp.add_subparsers(dest="certs_command", required=True)
        cl = csub.add_parser("list", parents=[common],
                             help="Every SVID: identity, serial, not-after, node; warns about expiring ones.")
        cl.set_defaults(fn=cmd_certs_list)


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (``python -m meshcore.cli.ca``), the same options as meshctl's."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="control plane HTTP API URL")
    common.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="output format")
    p = MeshctlParser(prog="meshctl", description="meshcore CA and certificates.")
    register(p.add_subparsers(dest="command", required=True, metavar="COMMAND"), common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(args)


__all__ = ["register", "main", "fetch_certs", "wait_for_rotation", "cmd_certs_list"]

if __name__ == "__main__":
    sys.exit(main())
