"""``meshctl trust-bundle ...`` (federation) and ``meshctl operator cert ...`` (operator client certificates).

* ``meshctl trust-bundle export [-o spiffe|pem] [--out FILE]``: this domain's roots, SPIFFE bundle
  format (JWK Set) by default, to hand to another domain.
* ``meshctl trust-bundle import -f FILE --trust-domain TD`` (admin): trust TD's peers, each checked
  against TD's own roots (SPIFFE bundle JSON or PEM accepted). ``list``, ``remove TD``.
* ``meshctl operator cert issue NAME --role admin|read-only [--ttl 30d] [--out-dir DIR]`` (admin):
  the key is made here and never sent; writes ``NAME.key`` (0600), ``NAME.crt`` and ``ca.pem``.
  ``list``, ``revoke NAME``. Use it with ``meshctl --cert NAME.crt --key NAME.key --server https://...``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from .._files import atomic_write
from ..api.operator import OperatorCertRequest, TrustBundleImport
from ..errors import MeshError
from ._client import Client, client_for
from ._output import out
from ._output import table as _table
from ._commands import HELP
from ._types import duration_text, trust_domain


def _client(args) -> Client:
    return client_for(args)


def _emit(data, fmt: str, table) -> None:
    out(data, fmt, table)


# --- trust-bundle -------------------------------------------------------------------------------------

def cmd_export(args) -> int:
    data = _client(args).spiffe_bundle()
    if args.format == "pem":
        text = data.bundle
    else:
        text = json.dumps(data.spiffe_bundle, indent=2) + "\n"
    if args.out:
        atomic_write(args.out, text, 0o644)
        print(f"wrote the {data.trust_domain} trust bundle ({args.format}) to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def cmd_import(args) -> int:
    try:
        text = sys.stdin.read() if args.filename == "-" else Path(args.filename).read_text()
    except OSError as exc:
        raise MeshError(f"{args.filename}: cannot read: {exc.strerror}") from exc
    entry = _client(args).import_trust_bundle(TrustBundleImport(trust_domain=args.trust_domain, bundle=text))
    _emit(entry, args.output, lambda e: print(
        f"imported {len(e.roots)} root(s) of trust domain {e.trust_domain}; its workloads can now be "
        f"authorized by principal ({e.trust_domain}/ns/NS/sa/SA)"))
    return 0


def _some(names: tuple[str, ...], shown: int = 3) -> str:
    """A few names for a table cell (-o json has them all)."""
    if not names:
        return "-"
    return ", ".join(names[:shown]) + (f" (+{len(names) - shown} more)" if len(names) > shown else "")


def cmd_list(args) -> int:
    entries = _client(args).trust_bundles()
    _emit(entries, args.output, lambda d: _table(
        [[e.trust_domain, r.subject, r.sha256[:16], r.not_after, e.imported_at or "", _some(e.agents_without)]
         for e in d for r in e.roots],
        ["TRUST DOMAIN", "ROOT", "SHA256", "NOT AFTER", "IMPORTED", "AGENTS WITHOUT IT"]))
    return 0


def cmd_remove(args) -> int:
    result = _client(args).remove_trust_bundle(args.trust_domain)
    _emit(result, args.output, lambda r: print(f"removed the trust bundle of {r.removed}; its peers are refused"))
    return 0


# --- operator cert ------------------------------------------------------------------------------------

def cmd_cert_issue(args) -> int:
    from ..ca import key_to_pem, make_csr, new_private_key
    from ..controlplane.operator_certs import check_operator_name
    from ..naming import operator_spiffe_id

    check_operator_name(args.name)
    out = Path(args.out_dir)
    key_path, cert_path, ca_path = out / f"{args.name}.key", out / f"{args.name}.crt", out / "ca.pem"
    if key_path.exists() and not args.force:
        raise MeshError(f"{key_path} exists; pass --force to replace it, or another --out-dir")
    _check_writable(out)  # before the control plane records a certificate nobody could hold
    client = _client(args)
    trust_domain = client.trust_bundle().trust_domain
    key = new_private_key()
    csr = make_csr(key, operator_spiffe_id(trust_domain, args.name))
    issued = client.issue_operator_cert(OperatorCertRequest(name=args.name, role=args.role, ttl=args.ttl, csr=csr))
    atomic_write(key_path, key_to_pem(key), 0o600)
    atomic_write(cert_path, issued.chain, 0o644)
    atomic_write(ca_path, issued.bundle, 0o644)
    result = {"name": issued.name, "role": issued.role, "spiffe_id": issued.spiffe_id, "serial": issued.serial,
              "not_after": issued.not_after, "https": issued.https,
              "key": str(key_path), "cert": str(cert_path), "ca": str(ca_path)}

    def table(r):
        print(f"operator certificate {r['spiffe_id']} (role {r['role']}) until {r['not_after']}")
        print(f"  key {r['key']} (0600, made here, never sent)\n  certificate {r['cert']}\n  trust bundle {r['ca']}")
        server = r["https"] or "https://CONTROL_PLANE:OPERATOR_TLS_PORT"
        print(f"use it: meshctl --server {server} --cert {r['cert']} --key {r['key']} status")
        if not r["https"]:
            print("note: this control plane serves no TLS operator API yet; start it with --operator-tls-bind HOST:PORT")

    _emit(result, args.output, table)
    return 0


def _check_writable(out: Path) -> None:
    """Make ``out`` (and its parents) and prove a file can be written there; MeshError saying why not."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out, prefix=".meshctl-write-check-"):
            pass
    except OSError as exc:
        raise MeshError(f"--out-dir {str(out)!r} is not a writable directory ({exc.strerror or exc}); nothing was "
                        "requested: pick another --out-dir") from exc


def cmd_cert_list(args) -> int:
    certs = _client(args).operator_certs()
    _emit(certs, args.output, lambda d: _table(
        [[c.name, c.role, c.serial[:16], c.not_after, c.state] for c in d],
        ["NAME", "ROLE", "SERIAL", "NOT AFTER", "STATE"]))
    return 0


def cmd_cert_revoke(args) -> int:
    result = _client(args).revoke_operator_cert(args.name)
    _emit(result, args.output, lambda r: print(f"revoked {r.revoked} certificate(s) of operator {r.name}"))
    return 0


# --- parser -------------------------------------------------------------------------------------------

def register(subparsers, common: argparse.ArgumentParser) -> None:
    from ..controlplane.operators import ROLES

    tb = subparsers.add_parser("trust-bundle", help=HELP["trust-bundle"],
                               description="Trust-domain federation with SPIFFE trust bundles.")
    tsub = tb.add_subparsers(dest="trust_bundle_command", required=True)
    conn = argparse.ArgumentParser(add_help=False)  # common's connection options, without its -o
    for action in common._actions:
        if action.dest not in ("help", "output"):
            conn._add_action(action)
    ex = tsub.add_parser("export", parents=[conn], help="Print or write this domain's trust bundle.")
    ex.add_argument("-o", "--output", dest="format", choices=("spiffe", "pem"), default="spiffe",
                    help="SPIFFE bundle format (JWK Set JSON, default) or PEM")
    ex.add_argument("--out", help="write to this file instead of stdout")
    ex.set_defaults(fn=cmd_export, output="table")
    im = tsub.add_parser("import", parents=[common], help="Trust another trust domain's roots (admin).")
    im.add_argument("-f", "--filename", required=True, help="SPIFFE bundle (JSON) or PEM file, or -")
    im.add_argument("--trust-domain", required=True, type=trust_domain, help="the other domain's name, e.g. other.example")
    im.set_defaults(fn=cmd_import)
    tsub.add_parser("list", parents=[common], help="Imported trust domains and their roots.").set_defaults(fn=cmd_list)
    rm = tsub.add_parser("remove", parents=[common], help="Stop trusting a federated domain (admin).")
    rm.add_argument("trust_domain", type=trust_domain)
    rm.set_defaults(fn=cmd_remove)

    op = subparsers.add_parser("operator", help=HELP["operator"])
    osub = op.add_subparsers(dest="operator_command", required=True)
    cert = osub.add_parser("cert", help="Operator client certificates.")
    csub = cert.add_subparsers(dest="operator_cert_command", required=True)
    iss = csub.add_parser("issue", parents=[common], help="Issue an operator certificate (key made here; admin).")
    iss.add_argument("name")
    iss.add_argument("--role", required=True, choices=ROLES)
    iss.add_argument("--ttl", default="30d", type=duration_text(low=1, high=365 * 86400),
                     help="lifetime (default %(default)s, at most 365d)")
    iss.add_argument("--out-dir", default=".", help="where to write NAME.key, NAME.crt, ca.pem (default: here)")
    iss.add_argument("--force", action="store_true", help="replace an existing NAME.key")
    iss.set_defaults(fn=cmd_cert_issue)
    csub.add_parser("list", parents=[common], help="Issued operator certificates.").set_defaults(fn=cmd_cert_list)
    rv = csub.add_parser("revoke", parents=[common], help="Refuse every certificate of an operator (admin).")
    rv.add_argument("name")
    rv.set_defaults(fn=cmd_cert_revoke)


__all__ = ["register"]
