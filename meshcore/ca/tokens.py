"""One-time join tokens: how a new VM proves it may obtain its first identity.

An operator (``meshctl``) creates a token scoped to one node; the VM agent presents it once.
Only the SHA-256 of each token is stored, sealed with the KEK (0600). A file lock plus a thread
lock make consume-once hold across threads and processes.

Storage: ``<path>`` is a sealed snapshot of every entry (written atomically); ``<path>.journal``
holds what happened since, one sealed event per line (``create`` an entry, ``use`` a token), so
creating or consuming a token appends one line instead of rewriting every token (a 1,000-node join
storm is O(1) per join). Each store keeps the entries in memory and reads only what other
processes appended since its last look. When the journal outgrows the entries it is folded into a
new snapshot (replaying a journal over a snapshot that already holds it changes nothing, so a crash
between the two steps is harmless).

A call returns only once its line is on disk (``fdatasync``): a consumed token stays consumed
after a power cut. Concurrent callers share one sync (group commit). A torn last line (a writer
killed mid-append) is cut off with a warning; any other line that does not decrypt and parse is an
error: losing a ``use`` would make a token usable twice.
"""

from __future__ import annotations

import base64
import builtins
import contextlib
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Protocol

from meshcore._files import ensure_private_dir, file_lock
from meshcore.errors import CAError, JoinTokenError

from ._sealed import check_kek, read_sealed_entries, seal, unseal, write_sealed_entries
from .model import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

_PURPOSE = "join-tokens"
_JOURNAL_PURPOSE = "join-tokens-journal"
TOKEN_BYTES = 32  # 256 bits of randomness
KEEP_AFTER_EXPIRY = timedelta(days=7)
COMPACT_MIN_LINES = 256  # the journal is folded into the snapshot once it has more lines than this and than entries


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


TOKEN_PREFIX = "mjt_"


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _new_token(node: str, ttl: timedelta) -> str:
    """A new token for ``node`` (its arguments checked). A fixed prefix: recognisable in a leak scan, and never
    a leading "-" that a command line would take for an option (`--join-token -x...`)."""
    if not node or not isinstance(node, str):
        raise JoinTokenError("a join token must be scoped to a node name")
    if ttl <= timedelta(0):
        raise JoinTokenError(f"join token ttl must be positive, got {ttl}")
    return TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)


class JoinTokenStore:
    """Create and consume single-use join tokens stored (hashed, sealed) in ``path`` (see the module docstring)."""

    def __init__(self, path: Path | str, kek: bytes, clock: Callable[[], datetime] = _utcnow) -> None:
        check_kek(kek)
        self.path = Path(path)
        self.journal_path = self.path.with_name(f"{self.path.name}.journal")
        self._kek = bytes(kek)
        self._clock = clock
        self._lock = threading.Lock()
        self._lock_path = self.path.with_name(f".{self.path.name}.lock")
        self._entries: dict[str, dict[str, Any]] = {}  # token hash -> entry, in creation order
        self._base_stamp: tuple[int, int, int] | None = None  # (inode, mtime_ns, size) of the snapshot read
        self._journal_ino = -1
        self._offset = 0  # bytes of the journal applied
        self._journal_lines = 0
        self._fd: int | None = None  # append descriptor of the journal
        self._sync = threading.Condition()
        self._written = 0  # appends made / made durable (group commit)
        self._synced = 0
        self._syncing = False
        self._sync_fd: int | None = None  # what the group commit syncs (guarded by _sync, not _lock)

    def create(self, node: str, ttl: timedelta = timedelta(hours=1)) -> str:
        """A new url-safe token (256 random bits) valid for ``ttl``, usable once, by ``node`` only."""
        token = _new_token(node, ttl)
        with self._locked():
            now = self._now()
            entry = {"hash": _hash(token), "node": node, "created": rfc3339(now), "expires": rfc3339(now + ttl),
                     "used": None}
            ticket = self._append({"op": "create", "entry": entry}, now)
        self._wait_durable(ticket)
        log.info("created join token node=%s expires=%s", node, rfc3339(now + ttl), extra={"node": node})
        return token

    def consume(self, token: str, node: str) -> None:
        """Use ``token`` for ``node``; raise :class:`JoinTokenError` saying why when it cannot be used."""
        digest = _hash(token) if isinstance(token, str) else ""
        with self._locked():
            now = self._now()
            entry = self._entries.get(digest)
            if entry is None or not hmac.compare_digest(entry["hash"], digest):
                raise JoinTokenError("unknown join token; ask the operator for a new one (meshctl token create)")
            if entry["node"] != node:
                log.warning("join token presented by another node node=%s", node, extra={"node": node})
                raise JoinTokenError(
                    f"this join token is scoped to another node, not {node!r}; create one for {node!r}"
                )
            if entry.get("revoked"):
                raise JoinTokenError(f"join token revoked (at {entry['revoked']}); create a new one")
            if entry["used"] is not None:
                raise JoinTokenError(f"join token already used (at {entry['used']}); create a new one")
            if parse_rfc3339(entry["expires"]) <= now:
                raise JoinTokenError(f"join token expired (at {entry['expires']}); create a new one")
            ticket = self._append({"op": "use", "hash": digest, "at": rfc3339(now)}, now)
        self._wait_durable(ticket)
        log.info("join token consumed node=%s", node, extra={"node": node})

    def revoke(self, token_hash: str) -> bool:
        """Make the token with this (full) hash unusable from now on, used or not; False when unknown or
        already revoked. It stays listed (state ``revoked``) as long as other tokens."""
        with self._locked():
            now = self._now()
            entry = self._entries.get(token_hash)
            if entry is None or entry.get("revoked"):
                return False
            ticket = self._append({"op": "revoke", "hash": token_hash, "at": rfc3339(now)}, now)
        self._wait_durable(ticket)
        log.warning("join token revoked node=%s id=%s", entry["node"], token_hash[:12], extra={"node": entry["node"]})
        return True

    def list(self) -> list[dict[str, Any]]:
        """Tokens known (including used/expired ones for a week): id (hash prefix), node, created,
        expires, used (RFC 3339 or None), state. Never the token itself."""
        with self._locked():
            now = self._now()
            entries = [dict(e) for e in self._entries.values()]
        return _listing(entries, now)

    def entries(self) -> builtins.list[dict[str, Any]]:
        """Every stored entry (hash, node, created, expires, used): what a migration copies. Never a token."""
        with self._locked():
            return [dict(e) for e in self._entries.values()]

    def close(self) -> None:
        """Release the journal's descriptor (the store stays usable)."""
        with self._lock:
            self._close_fd()

    def __del__(self) -> None:  # dropped without close(): do not leak the descriptor
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    # --- internals -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        with self._lock, file_lock(self._lock_path):
            self._catch_up()
            yield

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise CAError("the join token clock must return timezone-aware datetimes (UTC)")
        return now.astimezone(timezone.utc)

    def _catch_up(self) -> None:
        """Bring the entries in memory up to the files (both locks held): only what is new is read."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            write_sealed_entries(self.path, self._kek, _PURPOSE, [])  # the store exists from its first use
            st = os.stat(self.path)
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        try:
            jst = os.stat(self.journal_path)
        except FileNotFoundError:
            jst = None
        if jst is None:
            replaced = self._journal_ino != -1  # the journal went (removed by hand): read the snapshot again
        else:
            replaced = jst.st_ino != self._journal_ino or jst.st_size < self._offset
        if stamp != self._base_stamp or replaced:
            self._entries = {e["hash"]: e for e in read_sealed_entries(self.path, self._kek, _PURPOSE,
                                                                       "join token store")}
            self._base_stamp = stamp
            self._offset = self._journal_lines = 0
            self._journal_ino = jst.st_ino if jst is not None else -1
        if jst is None or jst.st_size == self._offset:
            return
        with open(self.journal_path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(jst.st_size - self._offset)
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            self._journal_lines += 1
            self._apply(self._decode(raw, self._journal_lines))
        self._offset += end
        if end < len(data):
            log.warning("join token journal %s ends in a torn line (%d bytes, a writer died mid-append); "
                        "ignoring it", self.journal_path, len(data) - end)
            os.truncate(self.journal_path, self._offset)

    def _decode(self, raw: bytes, number: int) -> dict[str, Any]:
        where = f"{self.journal_path} line {number}"
        try:
            blob = base64.b64decode(raw, validate=True)
        except ValueError as exc:
            raise CAError(f"{where} is damaged ({exc}); restore the join token files from backup, or remove "
                          f"{self.path} and its journal to revoke every token") from exc
        body = unseal(self._kek, _JOURNAL_PURPOSE, blob, where=where)
        try:
            event = json.loads(body)
            if event.get("op") not in ("create", "use", "revoke"):
                raise ValueError(f"unknown op {event.get('op')!r}")
            return event
        except (ValueError, AttributeError) as exc:
            raise CAError(f"{where} decrypted but is damaged: {exc}") from exc

    def _apply(self, event: dict[str, Any]) -> None:
        """Replay one event (idempotent: a snapshot may already hold it)."""
        if event["op"] == "create":
            entry = event["entry"]
            self._entries.setdefault(entry["hash"], dict(entry))
        elif event["op"] == "revoke":
            entry = self._entries.get(event["hash"])
            if entry is not None and not entry.get("revoked"):
                entry["revoked"] = event["at"]
        else:
            entry = self._entries.get(event["hash"])
            if entry is not None and entry["used"] is None:
                entry["used"] = event["at"]

    def _append(self, event: dict[str, Any], now: datetime) -> int:
        """Append ``event`` (both locks held); returns the ticket :meth:`_wait_durable` waits for."""
        line = base64.b64encode(seal(self._kek, _JOURNAL_PURPOSE, json.dumps(event).encode())) + b"\n"
        if self._fd is None:
            self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        os.write(self._fd, line)
        self._journal_ino = os.fstat(self._fd).st_ino
        self._offset += len(line)
        self._journal_lines += 1
        self._apply(event)
        if self._journal_lines > max(COMPACT_MIN_LINES, len(self._entries)):
            self._compact(now)
            return 0  # the snapshot is written and synced already
        with self._sync:
            self._sync_fd = self._fd
            self._written += 1
            return self._written

    def _compact(self, now: datetime) -> None:
        """Fold the journal into a new snapshot, dropping entries a week past their expiry."""
        kept = _prune([*self._entries.values()], now)
        write_sealed_entries(self.path, self._kek, _PURPOSE, kept)
        os.truncate(self.journal_path, 0)
        self._entries = {e["hash"]: e for e in kept}
        st = os.stat(self.path)
        self._base_stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        self._offset = self._journal_lines = 0

    def _wait_durable(self, ticket: int) -> None:
        """Return once append ``ticket`` is on disk; one caller syncs for everyone waiting (group commit)."""
        with self._sync:
            while self._synced < ticket:
                if self._syncing:
                    self._sync.wait()
                    continue
                self._syncing = True
                target = self._written
                fd = os.dup(self._sync_fd) if self._sync_fd is not None else None  # lock order: never _lock here
                self._sync.release()
                try:
                    if fd is not None:
                        os.fdatasync(fd)
                finally:
                    if fd is not None:
                        os.close(fd)
                    self._sync.acquire()
                    self._syncing = False
                    self._synced = max(self._synced, target)
                    self._sync.notify_all()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with self._sync:
                os.fdatasync(self._fd)
                os.close(self._fd)
                self._fd = self._sync_fd = None


def _listing(entries: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """What ``list()`` shows of stored entries: id (hash prefix), node, times, state; never a token."""
    out = []
    for e in entries:
        if e.get("revoked"):
            state = "revoked"
        else:
            state = "used" if e["used"] else ("expired" if parse_rfc3339(e["expires"]) <= now else "valid")
        out.append({"id": e["hash"][:12], "node": e["node"], "created": e["created"],
                    "expires": e["expires"], "used": e["used"], "state": state})
    return sorted(out, key=lambda d: (d["created"], d["node"]))


def _prune(entries: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """Entries still worth listing: up to a week past their expiry."""
    return [e for e in entries if parse_rfc3339(e["expires"]) + KEEP_AFTER_EXPIRY > now]


SHARED_PREFIX = "tokens/join/"
_SHARED_PURPOSE = "join-token"


class SharedJoinTokenStore:
    """:class:`JoinTokenStore` on a :class:`~meshcore.state.StateBackend` shared by every control plane replica.

    One key per token, ``tokens/join/<sha256 of the token>``, holding the entry sealed with the KEK (node,
    created, expires, used). Consuming reads the key and writes it back marked used with a compare-and-set on
    the index it read (Consul's ``ModifyIndex``): of two replicas presented the same token at the same moment,
    exactly one write succeeds; the other re-reads, finds it used and refuses. Same methods as
    :class:`JoinTokenStore`."""

    def __init__(self, backend: Any, kek: bytes, clock: Callable[[], datetime] = _utcnow) -> None:
        check_kek(kek)
        self.backend = backend
        self._kek = bytes(kek)
        self._clock = clock

    def _now(self) -> datetime:
        now = self._clock()
        if now.tzinfo is None:
            raise CAError("the join token clock must return timezone-aware datetimes (UTC)")
        return now.astimezone(timezone.utc)

    def _seal(self, entry: dict[str, Any]) -> bytes:
        return seal(self._kek, _SHARED_PURPOSE, json.dumps(entry).encode())

    def _unseal(self, key: str, value: bytes) -> dict[str, Any]:
        where = f"{self.backend.location} key {key!r}"
        try:
            entry = json.loads(unseal(self._kek, _SHARED_PURPOSE, value, where=where))
            if not isinstance(entry, dict) or not isinstance(entry.get("hash"), str):
                raise ValueError("not a join token entry")
            return entry
        except (ValueError, TypeError) as exc:
            raise CAError(f"{where} decrypted but is damaged: {exc}; delete it (that token is then unknown)") from exc

    def create(self, node: str, ttl: timedelta = timedelta(hours=1)) -> str:
        """A new token for ``node`` valid for ``ttl`` (see :meth:`JoinTokenStore.create`)."""
        token = _new_token(node, ttl)
        now = self._now()
        entry: dict[str, Any] = {"hash": _hash(token), "node": node, "created": rfc3339(now),
                                 "expires": rfc3339(now + ttl), "used": None}
        if not self.backend.put(SHARED_PREFIX + entry["hash"], self._seal(entry), cas=0):
            raise JoinTokenError("a freshly made join token collided with a stored one; create another")
        log.info("created join token node=%s expires=%s", node, entry["expires"], extra={"node": node})
        return token

    def consume(self, token: str, node: str) -> None:
        """Use ``token`` for ``node`` once across every replica; :class:`JoinTokenError` saying why it cannot be."""
        digest = _hash(token) if isinstance(token, str) else ""
        key = SHARED_PREFIX + digest
        stored = self.backend.get(key) if digest else None
        if stored is None:
            raise JoinTokenError("unknown join token; ask the operator for a new one (meshctl token create)")
        entry = self._unseal(key, stored.value)
        now = self._now()
        if not hmac.compare_digest(entry["hash"], digest):
            raise JoinTokenError("unknown join token; ask the operator for a new one (meshctl token create)")
        if entry["node"] != node:
            log.warning("join token presented by another node node=%s", node, extra={"node": node})
            raise JoinTokenError(f"this join token is scoped to another node, not {node!r}; create one for {node!r}")
        if entry.get("revoked"):
            raise JoinTokenError(f"join token revoked (at {entry['revoked']}); create a new one")
        if entry["used"] is not None:
            raise JoinTokenError(f"join token already used (at {entry['used']}); create a new one")
        if parse_rfc3339(entry["expires"]) <= now:
            raise JoinTokenError(f"join token expired (at {entry['expires']}); create a new one")
        used = dict(entry, used=rfc3339(now))
        if not self.backend.put(key, self._seal(used), cas=stored.index):
            # another replica wrote the key since we read it: only a use does that
            log.warning("join token used by another replica at the same moment node=%s", node, extra={"node": node})
            raise JoinTokenError("join token already used (by a concurrent join on another control plane "
                                 "replica); create a new one")
        log.info("join token consumed node=%s", node, extra={"node": node})

    def entries(self) -> list[dict[str, Any]]:
        """Every stored entry, unsealed (migration and listing)."""
        return [self._unseal(e.key, e.value) for e in self.backend.list(SHARED_PREFIX)]

    def import_entry(self, entry: dict[str, Any]) -> bool:
        """Store ``entry`` (from a state directory) unless its token is there already; True when written."""
        return bool(self.backend.put(SHARED_PREFIX + entry["hash"], self._seal(entry), cas=0))

    def list(self) -> list[dict[str, Any]]:
        """As :meth:`JoinTokenStore.list`: never the token itself."""
        return _listing(self.entries(), self._now())

    def revoke(self, token_hash: str) -> bool:
        """As :meth:`JoinTokenStore.revoke`, on every replica at once (a compare-and-set on the token's key:
        a join that won the race used it first, and the revocation still lands on the used entry)."""
        key = SHARED_PREFIX + token_hash
        for _ in range(5):
            stored = self.backend.get(key)
            if stored is None:
                return False
            entry = self._unseal(key, stored.value)
            if entry.get("revoked"):
                return False
            if self.backend.put(key, self._seal(dict(entry, revoked=rfc3339(self._now()))), cas=stored.index):
                log.warning("join token revoked node=%s id=%s", entry["node"], token_hash[:12],
                            extra={"node": entry["node"]})
                return True
        raise JoinTokenError("the join token kept changing while it was being revoked; try again")

    def prune(self) -> int:
        """Remove entries a week past their expiry (singleton cleanup work: the leader calls it); how many."""
        now, removed = self._now(), 0
        for stored in self.backend.list(SHARED_PREFIX):
            entry = self._unseal(stored.key, stored.value)
            if parse_rfc3339(entry["expires"]) + KEEP_AFTER_EXPIRY <= now and \
                    self.backend.delete(stored.key, cas=stored.index):
                removed += 1
        return removed

    def close(self) -> None:
        pass


class JoinTokens(Protocol):
    """What the agent and operator APIs use of a join token store (:class:`JoinTokenStore`, :class:`SharedJoinTokenStore`)."""

    def create(self, node: str, ttl: timedelta = ...) -> str: ...

    def consume(self, token: str, node: str) -> None: ...

    def list(self) -> builtins.list[dict[str, Any]]: ...

    def entries(self) -> builtins.list[dict[str, Any]]: ...

    def revoke(self, token_hash: str) -> bool: ...

    def close(self) -> None: ...


def open_join_tokens(backend: Any, kek: bytes, clock: Callable[[], datetime] = _utcnow) -> JoinTokens:
    """The join token store on ``backend``: shared (one key per token) on Consul KV, today's files in a directory."""
    if getattr(backend, "shared", False):
        return SharedJoinTokenStore(backend, kek, clock)
    return JoinTokenStore(Path(backend.root) / "join-tokens.sealed", kek, clock)
