"""One-time join tokens: how a new VM proves it may obtain its first identity.

An operator (``meshctl``) creates a token scoped to one node; the VM agent presents it once.
Only the SHA-256 of each token is stored, inside a file sealed with the KEK (0600, written
atomically). A file lock plus a thread lock make consume-once hold across threads and processes.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from meshcore._files import ensure_private_dir, file_lock
from meshcore.errors import CAError, JoinTokenError

from ._sealed import check_kek, read_sealed_entries, write_sealed_entries
from .model import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

_PURPOSE = "join-tokens"
TOKEN_BYTES = 32  # 256 bits of randomness
KEEP_AFTER_EXPIRY = timedelta(days=7)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


TOKEN_PREFIX = "mjt_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class JoinTokenStore:
    """Create and consume single-use join tokens stored (hashed, sealed) in ``path``."""

    def __init__(self, path: Path | str, kek: bytes, clock: Callable[[], datetime] = _utcnow) -> None:
        check_kek(kek)
        self.path = Path(path)
        self._kek = bytes(kek)
        self._clock = clock
        self._lock = threading.Lock()
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")

    def create(self, node: str, ttl: timedelta = timedelta(hours=1)) -> str:
        """A new url-safe token (256 random bits) valid for ``ttl``, usable once, by ``node`` only."""
        if not node or not isinstance(node, str):
            raise JoinTokenError("a join token must be scoped to a node name")
        if ttl <= timedelta(0):
            raise JoinTokenError(f"join token ttl must be positive, got {ttl}")
        # A fixed prefix: recognisable in a leak scan, and never a leading "-" that a command line
        # would take for an option (`--join-token -x...`).
        token = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
        with self._locked():
            now = self._now()
            entries = self._prune(self._read(), now)
            entries.append({
                "hash": _hash(token),
                "node": node,
                "created": rfc3339(now),
                "expires": rfc3339(now + ttl),
                "used": None,
            })
            self._write(entries)
        log.info("created join token node=%s expires=%s", node, rfc3339(now + ttl), extra={"node": node})
        return token

    def consume(self, token: str, node: str) -> None:
        """Use ``token`` for ``node``; raise :class:`JoinTokenError` saying why when it cannot be used."""
        digest = _hash(token) if isinstance(token, str) else ""
        with self._locked():
            now = self._now()
            entries = self._read()
            entry = next((e for e in entries if hmac.compare_digest(e["hash"], digest)), None)
            if entry is None:
                raise JoinTokenError("unknown join token; ask the operator for a new one (meshctl token create)")
            if entry["node"] != node:
                log.warning("join token presented by another node node=%s", node, extra={"node": node})
                raise JoinTokenError(
                    f"this join token is scoped to another node, not {node!r}; create one for {node!r}"
                )
            if entry["used"] is not None:
                raise JoinTokenError(f"join token already used (at {entry['used']}); create a new one")
            if parse_rfc3339(entry["expires"]) <= now:
                raise JoinTokenError(f"join token expired (at {entry['expires']}); create a new one")
            entry["used"] = rfc3339(now)
            self._write(self._prune(entries, now))
        log.info("join token consumed node=%s", node, extra={"node": node})

    def list(self) -> list[dict[str, Any]]:
        """Tokens known (including used/expired ones for a week): id (hash prefix), node, created,
        expires, used (RFC 3339 or None), state. Never the token itself."""
        with self._locked():
            now = self._now()
            entries = self._read()
        out = []
        for e in entries:
            state = "used" if e["used"] else ("expired" if parse_rfc3339(e["expires"]) <= now else "valid")
            out.append({
                "id": e["hash"][:12], "node": e["node"], "created": e["created"],
                "expires": e["expires"], "used": e["used"], "state": state,
            })
        return sorted(out, key=lambda d: (d["created"], d["node"]))

    # --- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        with self._lock, file_lock(self._lock_path):
            yield

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise CAError("the join token clock must return timezone-aware datetimes (UTC)")
        return now.astimezone(timezone.utc)

    def _read(self) -> list[dict[str, Any]]:
        return read_sealed_entries(self.path, self._kek, _PURPOSE, "join token store")

    def _write(self, entries: list[dict[str, Any]]) -> None:
        write_sealed_entries(self.path, self._kek, _PURPOSE, entries)

    @staticmethod
    def _prune(entries: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        return [e for e in entries if parse_rfc3339(e["expires"]) + KEEP_AFTER_EXPIRY > now]

