"""Private: the CA's state in a shared :class:`~meshcore.state.StateBackend` (Consul KV), for N replicas.

Keys (under the state prefix, see ``docs/ha.md``)::

    ca/authority               JSON: the root, intermediate and (while a rotation prepares) the next root and
                               intermediate, each a KEK-sealed pair (base64 of the same envelope as root.sealed),
                               and the rotation state (public certificates and the phase)
    ca/issued/<id>             JSON IssuedCertificate (public: metadata and PEMs) of the newest certificate per
                               (spiffe_id, node); <id> = sha256(spiffe_id NUL node)[:32]
    ca/revoked/node/<node>     JSON Revocation of a node
    ca/revoked/issuer/<keyid>  JSON Revocation of an intermediate retired by a finished root rotation

``ca/authority`` is one key so that every CA change (create, intermediate renewal, each rotation step) is one
compare-and-set on its ``ModifyIndex``: a replica that lost the race re-reads and adopts the winner's CA.
Every replica keeps a copy of each prefix in memory, refreshed by a blocking query (:class:`PrefixWatcher`), so
signing and the revocation check never wait on Consul. New issued records are written behind, batched every
:data:`FLUSH_DELAY` (one transaction per 64), like the directory journal's batched ``fdatasync``: a replica
killed inside that window loses those records (never a key); the leaves stay valid. While a root rotation is in
progress a lost record matters (the CA would count a renewed leaf as still on the old root, and finishing the
rotation would wait for a renewal that already happened), so then a signature is answered only once its record's
batch is written (:meth:`SharedIssuedJournal.wait_written`, at most :data:`DURABLE_WAIT` seconds).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from meshcore._files import atomic_write
from meshcore.errors import CAError, MeshError
from meshcore.state import Entry, PrefixWatcher, Put, StateBackend

from ._issued import IssuedJournal
from ._revocations import KIND_NODE, Revocation, RevocationTable
from ._store import KeyPair, RotationState, seal_pair, unseal_pair_blob
from .model import IssuedCertificate

log = logging.getLogger("meshcore.ca.shared")

AUTHORITY_KEY = "ca/authority"
ISSUED_PREFIX = "ca/issued/"
REVOKED_PREFIX = "ca/revoked/"
FLUSH_DELAY = 0.1  # seconds between a signature and its record's write to the shared state, at most
DURABLE_WAIT = 5.0  # seconds a signature during a root rotation waits for its record's write, at most
COMPACT_INTERVAL = 3600.0  # seconds between two removals of records past their retention (by each replica)
ISSUED_WATCH_INTERVAL = 1.0  # seconds between two reads of other replicas' records (each reads the prefix whole)
ISSUED_RECORDS_PER_SECOND = 2000  # ... and at least one second per this many records
ROOT_PURPOSE = "ca-root"
INTERMEDIATE_PURPOSE = "ca-intermediate"


def issued_key(spiffe_id: str, node: str | None) -> str:
    return ISSUED_PREFIX + hashlib.sha256(f"{spiffe_id}\0{node or ''}".encode()).hexdigest()[:32]


def revoked_key(entry: Revocation) -> str:
    return f"{REVOKED_PREFIX}{entry.kind}/{entry.subject.lower() if entry.kind != KIND_NODE else entry.subject}"


@dataclass
class CARecord:
    """What ``ca/authority`` holds."""

    root: KeyPair
    intermediate: KeyPair
    next_ca: tuple[KeyPair, KeyPair] | None
    rotation: RotationState
    trust_domain: str

    def encode(self, kek: bytes) -> bytes:
        def sealed(purpose: str, pair: KeyPair) -> str:
            return base64.b64encode(seal_pair(kek, purpose, pair, self.trust_domain)).decode("ascii")

        body: dict[str, Any] = {
            "version": 1, "trust_domain": self.trust_domain,
            "root": sealed(ROOT_PURPOSE, self.root), "intermediate": sealed(INTERMEDIATE_PURPOSE, self.intermediate),
            "next_root": sealed(ROOT_PURPOSE, self.next_ca[0]) if self.next_ca else None,
            "next_intermediate": sealed(INTERMEDIATE_PURPOSE, self.next_ca[1]) if self.next_ca else None,
            "rotation": self.rotation.to_json() if self.rotation.phase != "idle" else None,
        }
        return json.dumps(body, indent=1).encode()

    @classmethod
    def decode(cls, kek: bytes, value: bytes, where: str) -> CARecord:
        try:
            body = json.loads(value)
            blobs = {k: base64.b64decode(body[k]) if body.get(k) else None
                     for k in ("root", "intermediate", "next_root", "next_intermediate")}
            trust_domain = str(body["trust_domain"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CAError(f"{where} is damaged ({exc}); restore it from a Consul snapshot") from exc
        if blobs["root"] is None or blobs["intermediate"] is None:
            raise CAError(f"{where} holds no root or intermediate; restore it from a Consul snapshot")
        root, _ = unseal_pair_blob(kek, ROOT_PURPOSE, blobs["root"], where=f"{where} (root)", need_key=False)
        inter, _ = unseal_pair_blob(kek, INTERMEDIATE_PURPOSE, blobs["intermediate"], where=f"{where} (intermediate)")
        next_ca = None
        if blobs["next_root"] is not None and blobs["next_intermediate"] is not None:
            next_ca = (unseal_pair_blob(kek, ROOT_PURPOSE, blobs["next_root"], where=f"{where} (next root)",
                                        need_key=False)[0],
                       unseal_pair_blob(kek, INTERMEDIATE_PURPOSE, blobs["next_intermediate"],
                                        where=f"{where} (next intermediate)")[0])
        rotation = RotationState.from_json(body["rotation"], where) if body.get("rotation") else RotationState()
        return cls(root=root, intermediate=inter, next_ca=next_ca, rotation=rotation, trust_domain=trust_domain)


class SharedAuthority:
    """``ca/authority``: read, created once (CAS on absent), changed by CAS; watched for other replicas' changes."""

    def __init__(self, backend: StateBackend, kek: bytes, local_copy: Path | None = None):
        self.backend, self._kek = backend, kek
        self.index = 0
        self._watcher: PrefixWatcher | None = None
        self._held: bytes | None = None  # the stored value of the version this replica holds
        self.local_copy = local_copy  # that value on this host's disk: what brings the CA back if Consul loses it

    def _hold(self, value: bytes) -> None:
        if value == self._held:
            return
        self._held = value
        if self.local_copy is not None:
            try:
                atomic_write(self.local_copy, value)
            except OSError as exc:  # keep serving: the copy catches up on the next change
                log.error("cannot write this host's copy of the shared CA %s: %s", self.local_copy, exc)

    @property
    def where(self) -> str:
        return f"{self.backend.location} key {AUTHORITY_KEY!r}"

    def load(self) -> CARecord | None:
        entry = self.backend.get(AUTHORITY_KEY)
        if entry is None:
            return None
        record = CARecord.decode(self._kek, entry.value, self.where)
        self.index = entry.index
        self._hold(entry.value)
        return record

    def load_or_create(self, make: Callable[[], CARecord]) -> tuple[CARecord, bool]:
        """The stored CA, or ``make()``'s stored with CAS on absent; the loser of a first-start race loads the
        winner's. Returns (record, created)."""
        for _ in range(3):
            record = self.load()
            if record is not None:
                return record, False
            if self.local_copy is not None and self.local_copy.exists():
                # Consul lost the key (restarted empty, an old snapshot): this host held the CA, put it back
                value = self.local_copy.read_bytes()
                record = CARecord.decode(self._kek, value, str(self.local_copy))
                log.error("%s is missing but this host holds a copy of the CA (%s); writing it back instead of "
                          "creating a new root", self.where, self.local_copy)
                if self.backend.put(AUTHORITY_KEY, value, cas=0):
                    self.load()
                    return record, False
                continue
            made = make()
            if self.backend.put(AUTHORITY_KEY, made.encode(self._kek), cas=0):
                self.load()
                return made, True
            log.info("another control plane replica created the CA first; loading it from %s", self.where)
        raise CAError(f"{self.where} keeps appearing and disappearing; check what else writes it")

    def commit(self, record: CARecord, doing: str) -> None:
        """Write ``record`` if nobody changed the CA since this replica read it; CAError otherwise."""
        value = record.encode(self._kek)
        if not self.backend.put(AUTHORITY_KEY, value, cas=self.index):
            raise CAError(f"{doing}: the CA in {self.where} was changed by another control plane replica "
                          "meanwhile; this replica now follows it, look at `meshctl ca status` and try again")
        self._learn_index(value)
        self._hold(value)

    def _learn_index(self, value: bytes) -> None:
        """The index of the version this replica just wrote (a write does not return it): read back; when
        another replica changed the key in between, 0, so the watch follows whatever is there now."""
        entry = self.backend.get(AUTHORITY_KEY)
        self.index = entry.index if entry is not None and entry.value == value else 0

    def watch(self, on_change: Callable[[CARecord, int], None]) -> None:
        """Call ``on_change(record, index)`` for every version newer than the one this replica holds; the
        callee checks ``index`` against :attr:`index` again under its own lock (a commit may have passed it)."""
        def changed(entries: list[Entry]) -> None:
            found = False
            if self._watcher is not None and self._watcher.went_back:
                self.index = 0  # Consul counts from lower indexes again: whatever it holds now is newer
            for e in entries:
                if e.key == AUTHORITY_KEY:
                    found = True
                    if e.index > self.index:
                        on_change(CARecord.decode(self._kek, e.value, self.where), e.index)
                        self._hold(e.value)
            if not found and self._held is not None:
                log.error("%s disappeared (Consul lost its data?); writing back the CA this replica holds", self.where)
                if self.backend.put(AUTHORITY_KEY, self._held, cas=0):
                    self._learn_index(self._held)  # a Consul restarted empty counts from 1 again

        self._watcher = PrefixWatcher(self.backend, AUTHORITY_KEY, changed, name="ca-authority")
        self._watcher.index = 0
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()


class SharedIssuedJournal(IssuedJournal):
    """The issued-certificate record in the shared state (see the module docstring); IssuedJournal's methods."""

    def __init__(self, backend: StateBackend, retention: Callable[[IssuedCertificate], timedelta],
                 clock: Callable[[], datetime] | None = None):
        super().__init__(path=Path(backend.location), retention=retention)
        self.backend = backend
        self._clock = clock
        self._compacted = time.monotonic()
        self._kv: dict[str, int] = {}  # key -> ModifyIndex seen
        self._pending: dict[str, IssuedCertificate] = {}
        self._pending_cv = threading.Condition()
        self._appended = 0  # sequence number of the last record appended ...
        self._written = 0  # ... and of the newest one whose batch is in the shared state (both under _pending_cv)
        self._write_lock = threading.Lock()
        self._index_lock = threading.RLock()
        self._wrote: dict[str, bytes] = {}  # key -> the value this replica wrote last (not parsed again)
        self._watcher = PrefixWatcher(backend, ISSUED_PREFIX, self._changed, name="ca-issued",
                                      min_interval=ISSUED_WATCH_INTERVAL)
        self._stopped = False
        self._writer: threading.Thread | None = None

    def start(self) -> SharedIssuedJournal:
        self._watcher.start()
        return self

    def _newer(self, cert: IssuedCertificate) -> bool:
        """``cert`` (changed in the shared state) replaces the one indexed: not older (issued in the same second
        on two replicas, the one written last wins, as in the shared state)."""
        current = self._newest.get((cert.spiffe_id, cert.node))
        return current is None or cert.not_before >= current.not_before

    def _changed(self, entries: list[Entry]) -> None:
        # each read carries the whole prefix: a large fleet reads it less often (10,000 records: every 5 s)
        self._watcher.min_interval = max(ISSUED_WATCH_INTERVAL, len(entries) / ISSUED_RECORDS_PER_SECOND)
        with self._index_lock:
            present = {e.key for e in entries}
            for gone in [k for k in self._kv if k not in present]:  # removed past retention (or lost)
                self._kv.pop(gone, None)
                self._wrote.pop(gone, None)
            for e in entries:
                if self._kv.get(e.key) == e.index:
                    continue
                self._kv[e.key] = e.index
                if self._wrote.get(e.key) == e.value:
                    continue  # this replica's own record: indexed when it signed
                try:
                    cert = IssuedCertificate.from_dict(json.loads(e.value))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("issued-certificate record %s in %s is damaged (%s); skipping it", e.key,
                                self.backend.location, exc)
                    continue
                if self._newer(cert):
                    self._index(cert)

    def catch_up(self, *, locked: bool) -> None:
        """Nothing to read: the watch keeps the copy current."""

    def append(self, cert: IssuedCertificate, now: datetime) -> int:
        """Index ``cert`` and queue its record; returns the sequence number :meth:`wait_written` takes."""
        with self._index_lock:
            self._index(cert)
            self._drop_expired(now)
        with self._pending_cv:
            self._pending[issued_key(cert.spiffe_id, cert.node)] = cert
            self._appended += 1
            if self._writer is None:
                self._writer = threading.Thread(target=self._write_loop, name="ca-issued-writer", daemon=True)
                self._writer.start()
            self._pending_cv.notify_all()
            return self._appended

    def wait_written(self, seq: int | None, timeout: float) -> bool:
        """Wait until the record appended as ``seq`` (or a newer one of the same identity) is in the shared
        state; False when that took longer than ``timeout`` (Consul slow or unreachable: it is written later)."""
        deadline = time.monotonic() + timeout
        with self._pending_cv:
            while seq is not None and self._written < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cv.wait(left)
            return True

    def _write_loop(self) -> None:
        while True:
            with self._pending_cv:
                while not self._pending and not self._stopped:
                    self._pending_cv.wait()
                if not self._pending:
                    self._writer = None
                    return
            time.sleep(FLUSH_DELAY)  # batch what else arrives meanwhile
            try:
                self._write_pending()
                if self._clock is not None and time.monotonic() - self._compacted > COMPACT_INTERVAL:
                    self._compacted = time.monotonic()
                    self.compact(self._clock())
            except MeshError as exc:
                log.error("cannot write issued-certificate records to %s (%s); retrying", self.backend.location, exc)
                time.sleep(1.0)

    def _write_pending(self) -> None:
        """Write every queued record (one writer at a time: the sequence written only moves past whole batches);
        on failure the batch is queued again (behind any newer record of the same identity) and MeshError raised."""
        with self._write_lock:
            with self._pending_cv:
                batch, self._pending = self._pending, {}
                upto = self._appended  # every record appended so far is in this batch, or superseded in it
            try:
                self._write(batch)
            except MeshError:
                with self._pending_cv:
                    for key, cert in batch.items():
                        self._pending.setdefault(key, cert)
                raise
            with self._pending_cv:
                self._written = max(self._written, upto)
                self._pending_cv.notify_all()

    def recent(self, now: datetime) -> list[IssuedCertificate]:
        with self._index_lock:
            return super().recent(now)

    def newest(self, spiffe_id: str, node: str | None, now: datetime) -> IssuedCertificate | None:
        with self._index_lock:
            return super().newest(spiffe_id, node, now)

    def _write(self, batch: dict[str, IssuedCertificate]) -> None:
        items = list(batch.items())
        for start in range(0, len(items), 64):
            chunk = items[start:start + 64]
            puts = [Put(k, json.dumps(c.to_dict(), separators=(",", ":")).encode(), cas=self._kv.get(k, 0))
                    for k, c in chunk]
            with self._index_lock:
                self._wrote.update((p.key, p.value) for p in puts)
            if self.backend.put_all(puts):
                continue
            for key, cert in chunk:  # another replica wrote one of these identities meanwhile: one by one
                self._write_one(key, cert)

    def _write_one(self, key: str, cert: IssuedCertificate) -> None:
        for _ in range(5):
            stored = self.backend.get(key)
            if stored is not None:
                try:
                    other = IssuedCertificate.from_dict(json.loads(stored.value))
                    if other.not_before > cert.not_before:
                        return  # the stored one is newer
                except (ValueError, KeyError, TypeError):
                    pass
            value = json.dumps(cert.to_dict(), separators=(",", ":")).encode()
            if self.backend.put(key, value, cas=stored.index if stored else 0):
                return

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is pending now; False when it could not be written within ``timeout``."""
        try:
            self._write_pending()
            return True
        except MeshError as exc:
            log.error("cannot write issued-certificate records to %s: %s", self.backend.location, exc)
            return False

    def compact(self, now: datetime) -> None:
        """Remove records past their retention from the shared state (any replica may; CAS keeps newer ones)."""
        for entry in self.backend.list(ISSUED_PREFIX):
            try:
                cert = IssuedCertificate.from_dict(json.loads(entry.value))
            except (ValueError, KeyError, TypeError):
                continue
            if cert.not_after + self.retention(cert) <= now:
                self.backend.delete(entry.key, cas=entry.index)

    def sync(self) -> None:
        self.flush()

    def close(self) -> None:
        """Write what is pending (waiting for the writer's batch in flight), stop following other replicas."""
        self._watcher.stop()
        with self._pending_cv:
            self._stopped = True
            writer = self._writer
            self._pending_cv.notify_all()
        if writer is not None:
            writer.join(timeout=10)
        self.flush()


class SharedRevocations(RevocationTable):
    """The revocation record in the shared state, kept in memory by a watch: RevocationJournal's methods.

    ``on_node_revoked(node)`` runs for a node revocation first seen from another replica (the control plane
    ends that node's ADS streams on every replica, not only on the one that revoked it)."""

    def __init__(self, backend: StateBackend, on_node_revoked: Callable[[str], None] | None = None):
        super().__init__()
        self.backend = backend
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()
        self._started = False
        self.on_node_revoked = on_node_revoked
        self._watcher = PrefixWatcher(backend, REVOKED_PREFIX, self._changed, name="ca-revoked")

    def start(self) -> SharedRevocations:
        self._watcher.start()
        self._started = True
        return self

    def _changed(self, entries: list[Entry]) -> None:
        fresh = []
        present = {e.key for e in entries}
        lost = [r for r in self.nodes() + self.issuers() if revoked_key(r) not in present]
        if lost:  # a revocation is never removed: Consul lost its data, write back what this replica knows
            log.error("%d revocation(s) disappeared from %s (Consul lost its data?); writing them back", len(lost),
                      self.backend.location)
            self.backend.put_all([Put(revoked_key(r), json.dumps(r.to_dict(), separators=(",", ":")).encode(), cas=0)
                                  for r in lost[:64]])
        with self._lock:
            for e in entries:
                if self._seen.get(e.key) == e.index:
                    continue
                self._seen[e.key] = e.index
                try:
                    entry = Revocation.from_dict(json.loads(e.value))
                except (ValueError, KeyError, TypeError) as exc:
                    log.warning("revocation %s in %s is damaged (%s); skipping it", e.key, self.backend.location, exc)
                    continue
                if self._take(entry) and entry.kind == KIND_NODE:
                    fresh.append(entry.subject)
        if self._started and self.on_node_revoked is not None:
            for node in fresh:
                self.on_node_revoked(node)

    def _take(self, entry: Revocation) -> bool:
        table = self._nodes if entry.kind == KIND_NODE else self._issuers
        subject = entry.subject if entry.kind == KIND_NODE else entry.subject.lower()
        old = table.get(subject)
        if old is None or entry.revoked_at > old.revoked_at:
            table[subject] = entry
            return True
        return False

    def refresh(self) -> None:
        """Nothing to read: the watch keeps the copy current."""

    def append(self, entries: list[Revocation]) -> None:
        """Write ``entries`` to the shared state (synchronously: a revocation returns once every replica can see
        it), then take them here at once. Raises OSError like the file journal when the write fails."""
        if not entries:
            return
        puts = [Put(revoked_key(e), json.dumps(e.to_dict(), separators=(",", ":")).encode()) for e in entries]
        try:
            for start in range(0, len(puts), 64):
                self.backend.put_all(puts[start:start + 64])
        except MeshError as exc:
            raise OSError(f"{self.backend.location}: {exc}") from exc
        with self._lock:
            for e in entries:
                self._take(e)

    def stop(self) -> None:
        self._watcher.stop()
