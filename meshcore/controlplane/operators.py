"""Operator authentication for the control plane's operator API (``meshctl``): bearer tokens with roles.

Two roles: ``read-only`` may read (every GET), ``admin`` may also change things (every other method:
apply, delete, join tokens, CA rotation, traffic workflows). ``/healthz`` and ``/metrics`` stay open
so load balancers and Prometheus can scrape them without a secret (they reveal no configuration).

Tokens are stored like join tokens: only their SHA-256, inside a file sealed with the KEK
(``<state-dir>/operator-tokens.sealed``, 0600, written atomically under a file lock). On first start
the control plane makes an ``admin`` token named ``bootstrap`` and writes it to
``<state-dir>/admin.token`` (0600) for the local operator; more tokens are made offline with
``meshcore-control-plane operator-token create --name N --role admin|read-only [--ttl 30d]``.
"""

from __future__ import annotations

import argparse
import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from .._files import atomic_create
from ..ca._sealed import SealedEntries, check_kek
from ..ca.model import parse_rfc3339, rfc3339
from ..errors import ConfigError, Forbidden, MeshError, OperatorAuthError
from ..state import StateBackend
from ._http import Handler, Request, Router

log = logging.getLogger("meshcore.controlplane.operators")

ADMIN, READ_ONLY = "admin", "read-only"
ROLES = (ADMIN, READ_ONLY)
TOKEN_PREFIX = "mco_"
TOKENS_FILE = "operator-tokens.sealed"
SHARED_TOKENS_KEY = "operators/tokens.sealed"  # the store's key in shared state (Consul KV)
ADMIN_TOKEN_FILE = "admin.token"
BOOTSTRAP_NAME = "bootstrap"
OPEN_PATHS = frozenset({"/healthz", "/metrics"})
_PURPOSE = "operator-tokens"
_HOW = ("pass a token with `meshctl --token TOKEN`, $MESHCORE_TOKEN or $MESHCORE_TOKEN_FILE "
        "(on the control plane host: <state-dir>/admin.token; more with "
        "`meshcore-control-plane operator-token create --name NAME --role admin|read-only`)")




@dataclass(frozen=True)
class Operator:
    """Who made a request: the token's name and role."""

    name: str
    role: str

    def may(self, role: str) -> bool:
        return self.role == ADMIN or role == READ_ONLY


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"operator role {role!r} is not one of {', '.join(ROLES)}")
    return role


class OperatorTokenStore:
    """Create, list, revoke and check operator tokens stored (hashed, sealed) in ``path``."""

    def __init__(self, path: Path | str, kek: bytes, clock: Callable[[], datetime] = _utcnow, *,
                 backend: StateBackend | None = None) -> None:
        """``path``: the sealed file in the state directory; with a shared ``backend`` (Consul KV) the store is
        its key ``operators/tokens.sealed`` instead, followed by every replica."""
        check_kek(kek)
        self.path = Path(path)
        self._clock = clock
        self._doc = SealedEntries.at(backend, self.path, SHARED_TOKENS_KEY, kek, _PURPOSE, "operator token store")

    def exists(self) -> bool:
        return self._doc.exists()

    def create(self, name: str, role: str, ttl: timedelta | None = None) -> str:
        """A new token (256 random bits) for operator ``name`` with ``role``; ``ttl`` None never expires."""
        if not name or not isinstance(name, str) or any(c.isspace() for c in name):
            raise ConfigError(f"operator token name {name!r} must be a non-empty word (e.g. alice, ci-readonly)")
        check_role(role)
        if ttl is not None and ttl <= timedelta(0):
            raise ConfigError(f"operator token ttl must be positive, got {ttl}")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        now = self._now()
        entry = {"hash": _hash(token), "name": name, "role": role, "created": rfc3339(now),
                 "expires": rfc3339(now + ttl) if ttl is not None else None}
        self._doc.update(lambda entries: [*entries, entry])
        log.info("created operator token name=%s role=%s", name, role)
        return token

    def authenticate(self, token: str) -> Operator:
        """The operator ``token`` belongs to; :class:`OperatorAuthError` saying why when none."""
        if not token:
            raise OperatorAuthError("no operator token")
        digest = _hash(token)
        entry = next((e for e in self._read() if hmac.compare_digest(e["hash"], digest)), None)
        if entry is None:
            raise OperatorAuthError("unknown operator token (revoked, or from another control plane)")
        if entry["expires"] and parse_rfc3339(entry["expires"]) <= self._now():
            raise OperatorAuthError(f"operator token {entry['name']!r} expired at {entry['expires']}")
        return Operator(name=entry["name"], role=entry["role"])

    def list(self) -> builtins.list[dict[str, Any]]:
        """Every token: id (hash prefix), name, role, created, expires, state. Never the token."""
        now = self._now()
        out = []
        for e in self._read():
            expired = bool(e["expires"]) and parse_rfc3339(e["expires"]) <= now
            out.append({"id": e["hash"][:12], "name": e["name"], "role": e["role"], "created": e["created"],
                        "expires": e["expires"], "state": "expired" if expired else "valid"})
        return sorted(out, key=lambda d: (d["created"], d["name"]))

    def revoke(self, name_or_id: str) -> int:
        """Remove every token named ``name_or_id`` (or whose id it is); returns how many."""
        removed = [0]

        def drop(entries: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
            keep = [e for e in entries if e["name"] != name_or_id and e["hash"][:12] != name_or_id]
            removed[0] = len(entries) - len(keep)
            return keep

        self._doc.update(drop)
        return removed[0]

    def entries(self) -> builtins.list[dict[str, Any]]:
        """Every stored entry (hash, name, role, created, expires): what revocation by id prefix searches."""
        return [dict(e) for e in self._read()]

    def revoke_hash(self, token_hash: str) -> bool:
        """Remove the token with this (full) hash; False when there is none."""
        removed = [False]

        def drop(entries: builtins.list[dict[str, Any]]) -> builtins.list[dict[str, Any]]:
            keep = [e for e in entries if e["hash"] != token_hash]
            removed[0] = len(keep) != len(entries)
            return keep

        self._doc.update(drop)
        return removed[0]

    def close(self) -> None:
        self._doc.close()

    # --- internals -------------------------------------------------------------------------
    def _now(self) -> datetime:
        return self._clock().astimezone(timezone.utc)

    def _read(self) -> builtins.list[dict[str, Any]]:
        return self._doc.read()


def ensure_bootstrap_token(store: OperatorTokenStore, state_dir: Path) -> Path | None:
    """On first start (no token store yet) make an ``admin`` token and write it to
    ``<state_dir>/admin.token`` (0600); returns that path, or None when the store already existed."""
    if store.exists():
        return None
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    token = store.create(BOOTSTRAP_NAME, ADMIN)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale file from a store that was removed: its token is gone
    atomic_create(path, token + "\n", 0o600)
    log.info("created the bootstrap admin operator token in %s (mode 0600)", path)
    return path


def bearer_token(req: Request) -> str:
    value = req.headers.get("Authorization") or ""
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class AuthorizingRouter(Router):
    """A :class:`Router` whose routes need an operator token: GET (and HEAD) need ``read-only``,
    every other method ``admin`` (or the ``role`` given to :meth:`add`); ``OPEN_PATHS`` need none.
    Answers 401 without or with a bad token, 403 for a role that may not; the operator is in
    ``req.operator``."""

    def __init__(self, tokens: OperatorTokenStore, open_paths: frozenset[str] = OPEN_PATHS):
        super().__init__()
        self._tokens = tokens
        self._open = open_paths

    def add(self, method: str, pattern: str, handler: Handler, role: str | None = None) -> None:
        if pattern in self._open and role is None:
            super().add(method, pattern, handler)
            return
        needed = check_role(role or (READ_ONLY if method in ("GET", "HEAD") else ADMIN))

        def guarded(req: Request):
            try:
                operator = self.authenticate(req)
            except OperatorAuthError as exc:
                raise OperatorAuthError(f"{exc}; {_HOW}", {"hint": "meshctl --token TOKEN or MESHCORE_TOKEN"}) from exc
            if not operator.may(needed):
                log.warning("operator=%s role=%s refused %s %s", operator.name, operator.role, req.method, req.path)
                raise Forbidden(f"operator {operator.name!r} has role {operator.role!r}; {req.method} "
                                f"{req.path} needs role {needed!r}: use an admin token "
                                "(meshctl --token TOKEN or MESHCORE_TOKEN)", {"needed_role": needed})
            req.operator = operator  # type: ignore[attr-defined]
            req.authenticated()  # its body may be up to MAX_BODY now (64 KiB before)
            return handler(req)

        super().add(method, pattern, guarded)

    def add_open(self, method: str, pattern: str, handler: Handler) -> None:
        """A route anyone may call, for what carries no data (the dashboard page and its assets)."""
        super().add(method, pattern, handler)

    def authenticate(self, req: Request) -> Operator:
        """Who sent ``req``: its bearer token's operator (subclasses add other credentials)."""
        return self._tokens.authenticate(bearer_token(req))


# --- `meshcore-control-plane operator-token ...` (offline, on the control plane host) -----------

def _parse_ttl(text: str | None) -> timedelta | None:
    if not text or text in ("0", "never"):
        return None
    from ..durations import parse_duration

    return parse_duration(text)


def cli_main(argv: list[str]) -> int:
    """``operator-token create|list|revoke``: works on the state dir with the KEK, no server needed."""
    from ..ca import load_kek

    env = os.environ
    p = argparse.ArgumentParser(prog="meshcore-control-plane operator-token",
                                description="Manage operator API tokens (run on the control plane host).")
    p.add_argument("--state-dir", default=env.get("MESHCORE_STATE_DIR", "/var/lib/meshcore"))
    p.add_argument("--kek-file", default=env.get("MESHCORE_KEK_FILE"),
                   help="key-encryption key file (0600); or set MESHCORE_KEK (base64)")
    p.add_argument("--store", default=env.get("MESHCORE_STORE", ""),
                   help="consul: the tokens shared by the replicas in Consul KV ($CONSUL_HTTP_ADDR, "
                        "$MESHCORE_STATE_PREFIX), as the control plane's --store; default: the state dir")
    sub = p.add_subparsers(dest="action", required=True)
    c = sub.add_parser("create", help="Create a token and print it (once: only its hash is kept).")
    c.add_argument("--name", required=True)
    c.add_argument("--role", required=True, choices=ROLES)
    c.add_argument("--ttl", default=None, help="lifetime, e.g. 12h or 30d (default: never expires)")
    sub.add_parser("list", help="List tokens (names, roles, expiry; never the tokens).")
    r = sub.add_parser("revoke", help="Revoke every token with this name (or id).")
    r.add_argument("name")
    args = p.parse_args(argv)
    try:
        from ..state import open_state_backend

        backend = open_state_backend(args.store, Path(args.state_dir))
        store = OperatorTokenStore(Path(args.state_dir) / TOKENS_FILE, load_kek(args.kek_file), backend=backend)
        try:
            if args.action == "create":
                print(store.create(args.name, args.role, _parse_ttl(args.ttl)))
            elif args.action == "list":
                print(json.dumps(store.list(), indent=2))
            else:
                n = store.revoke(args.name)
                print(f"revoked {n} token(s)")
                return 0 if n else 1
        finally:
            store.close()  # a shared store follows its key in a thread: it ends with the command
    except (MeshError, ValueError, OSError) as exc:
        print(f"meshcore-control-plane operator-token: {exc}", file=sys.stderr)
        return 2
    return 0


__all__ = ["ADMIN", "ADMIN_TOKEN_FILE", "AuthorizingRouter", "Operator", "OperatorAuthError",
           "OperatorTokenStore", "READ_ONLY", "ROLES", "TOKENS_FILE", "bearer_token", "cli_main",
           "ensure_bootstrap_token"]
