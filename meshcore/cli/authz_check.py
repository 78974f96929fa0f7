"""``meshctl authz check --jwt FILE|-``: the same check with a JWT, taken as the destination's proxy would take it
(:mod:`meshcore.authz.token`): refused (401/403) before any policy, or its claims and principal decide. (``--jwt``,
not ``--token``: every command's ``--token`` is the operator API credential.)

The token goes to the control plane in a POST body (never in a URL, so no access log holds it); ``--jwks FILE``
gives a key set to check its signature with where the rule's keys are remote. Without ``--jwt`` the command is
the plain ``authz check`` (:func:`_plain_check`). ``--to`` an ingress gateway is decided on
each of its listeners (AuthorizationPolicy at the gateway), ``--remote-ip`` naming the client as X-Forwarded-For
would.
"""

from __future__ import annotations

import argparse
import sys

from ..errors import MeshError
from ._types import ip_address


def _read(path: str, what: str) -> str:
    try:
        text = sys.stdin.read() if path == "-" else open(path, encoding="utf-8").read()
    except OSError as exc:
        raise MeshError(f"{what} {path}: {exc.strerror or exc}") from exc
    return text.strip()


def _token(path: str) -> str:
    text = _read(path, "--jwt")
    if text.lower().startswith("bearer "):
        text = text[7:].strip()
    if text.count(".") != 2 or any(c.isspace() for c in text):
        raise MeshError(f"--jwt {path}: expected one JWT (header.payload.signature), optionally after 'Bearer '")
    return text


def _plain_check(args) -> int:
    """Which AuthorizationPolicy and rule decide a request from --from to --to (evaluated by the control plane)."""
    from ..api.operator import AuthzCheckQuery, AuthzCheckResponse
    from ._client import client_for
    from ._output import out

    headers = []
    for h in args.header or []:
        name, sep, value = h.partition("=")
        if not sep or not name:
            raise MeshError(f"--header {h!r}: expected NAME=VALUE, e.g. --header x-env=prod")
        headers.append((name, value))
    result = client_for(args).authz_check(AuthzCheckQuery(
        to=args.to, source=args.source or "", method=args.method, path=args.path, host=args.host or "",
        source_ip=args.source_ip or "", headers=tuple(headers), sni=args.sni or ""))

    def table(d: AuthzCheckResponse) -> None:
        who = d.caller.service or d.caller.principal or "a plaintext client"
        print(f"{who} -> {d.to.service}  {d.request.method} {d.request.path}")
        for r in d.results:
            verdict = "ALLOWED" if r.allowed else "DENIED"
            print(f"  {','.join(r.instances)}: {verdict}: {r.reason}")
            if r.audit:
                print(f"    audited by {', '.join(r.audit)}")
            if r.dry_run:
                print(f"    dry-run policies (not enforced): {r.dry_run}")

    out(result, args.output, table)
    return 0


def cmd_authz_check(args) -> int:
    if not args.jwt and not args.remote_ip:
        return _plain_check(args)
    from ..api.operator import AuthzCheckRequest, AuthzCheckResponse
    from ..authz.token import read_jwks
    from ._client import client_for
    from ._output import out

    jwks = ""
    if args.jwks:
        try:
            jwks = read_jwks(_read(args.jwks, "--jwks"))
        except ValueError as exc:
            raise MeshError(f"--jwks {args.jwks}: {exc}") from exc
    headers = tuple((h.partition("=")[0], h.partition("=")[2]) for h in args.header or [])  # checked by its type
    request = AuthzCheckRequest(to=args.to, source=args.source or "", method=args.method, path=args.path,
                                host=args.host or "", source_ip=args.source_ip or "", headers=headers,
                                token=_token(args.jwt) if args.jwt else "", jwks=jwks, remote_ip=args.remote_ip or "",
                                sni=args.sni or "")
    client = client_for(args)
    result = client._typed(AuthzCheckResponse, client.post("/v1/authz/check", request.to_json()), "/v1/authz/check")

    def table(d: AuthzCheckResponse) -> None:
        who = d.caller.service or d.caller.principal or "a plaintext client"
        print(f"{who} -> {d.to.service}  {d.request.method} {d.request.path}"
              + ("  (with a token)" if args.jwt else "") + (f"  (client {args.remote_ip})" if args.remote_ip else ""))
        for r in d.results:
            print(f"  {','.join(r.instances)} port {r.port}: {'ALLOWED' if r.allowed else 'DENIED'}: {r.reason}")
            t = r.token
            if t is not None:
                who_token = f"{t.issuer}/{t.subject}" if t.issuer else "token"
                rule = f" (rule {t.rule})" if t.rule else ""
                detail = f" {t.signature_detail}" if t.signature_detail else ""
                print(f"    {who_token}{rule}: {t.reason if t.status else 'passes RequestAuthentication'}; "
                      f"signature {t.signature}{detail}")
            if r.audit:
                print(f"    audited by {', '.join(r.audit)}")

    out(result.to_json(), args.output, lambda _: table(result))
    return 0


def add_token_options(check: argparse.ArgumentParser) -> None:
    """``--jwt``, ``--jwks`` and ``--remote-ip`` on ``authz check`` (registered by :mod:`meshcore.cli.main`)."""
    check.add_argument("--jwt", metavar="FILE|-", help="a JWT (file, or - for stdin) sent as Authorization: Bearer: "
                                                         "checked as the destination's proxy would (401/403, claims)")
    check.add_argument("--jwks", metavar="FILE", help="a JSON Web Key Set to check --jwt's signature with where "
                                                      "the rule's keys are remote (jwksUri, OIDC discovery)")
    check.add_argument("--remote-ip", type=ip_address, help="the client's address as X-Forwarded-For names it "
                                                           "(--to an ingress gateway: remoteIpBlocks)")
    check.set_defaults(fn=cmd_authz_check)


__all__ = ["add_token_options", "cmd_authz_check"]
