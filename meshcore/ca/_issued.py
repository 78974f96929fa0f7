"""Private: the record of issued leaves, an append-only journal with an in-memory index.

``issued.jsonl`` holds one JSON object per line (:meth:`IssuedCertificate.to_dict`), in issuance
order. Signing appends one line (one ``write(2)`` on an ``O_APPEND`` descriptor): the cost per signature
does not grow with the number issued. The line is in the kernel when signing returns, so it survives
the process being killed; it reaches the disk within :data:`SYNC_DELAY` (a short-lived flusher thread
batches the ``fdatasync`` of every line written meanwhile: one sync costs 5-20 ms on common disks,
more than signing itself, and a power cut loses at most that window of records, never a key). The index in memory
maps ``(spiffe_id, node)`` to the newest certificate; expired ones leave it through a heap ordered
by ``not_after`` plus their retention (:attr:`IssuedJournal.retention`: the CA keeps a node certificate for
its recovery grace period after it expired, so an agent can prove it holds the key, and every leaf for a
while so an expired one stays visible as expired until it is renewed). :meth:`IssuedJournal.live` lists
only unexpired ones.

When the journal holds more than twice as many lines as live certificates (and at least
:data:`COMPACT_MIN_LINES`), it is rewritten atomically with only the newest unexpired certificate
per identity and node; the cost of a rewrite is paid for by the appends before it, so it is O(1)
amortised per signature.

Several processes may hold the CA (the control plane, ``meshctl``): writers hold the CA's file lock,
and every reader catches up by reading only the bytes appended since its last look; a journal
replaced by another process's compaction (new inode) is read again whole.

Crash safety: a process killed while appending leaves at most a torn last line, without its
newline. Readers never consume a line without its newline; the next writer (holding the lock, so
no append can be in flight) cuts the torn tail off with a warning before it appends. A damaged
line elsewhere is skipped with a warning, never a reason to refuse signing.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from meshcore._files import atomic_write, fsync_dir

from .model import IssuedCertificate

log = logging.getLogger(__name__)

COMPACT_MIN_LINES = 1024
_line = json.JSONEncoder(separators=(",", ":")).encode  # one journal line (json.dumps with these, made once)
SYNC_DELAY = 0.1  # seconds between an appended line and its fdatasync, at most (plus the sync itself)
Key = tuple[str, str | None]


def _no_retention(cert: IssuedCertificate) -> timedelta:
    return timedelta(0)


@dataclass
class _Position:
    """Where this process stands in the journal file it has read."""

    ino: int = -1
    offset: int = 0  # bytes consumed (always just after a newline)
    lines: int = 0  # complete lines in the file up to offset


@dataclass
class IssuedJournal:
    """The issued-certificate record of one CA state directory (see the module docstring)."""

    path: Path
    legacy_path: Path | None = None  # issued.json of older versions, migrated on first load
    retention: Callable[[IssuedCertificate], timedelta] = _no_retention  # kept this long past not_after
    _newest: dict[Key, IssuedCertificate] = field(default_factory=dict)
    _expiry: list[tuple[datetime, str, Key]] = field(default_factory=list)
    _pos: _Position = field(default_factory=_Position)
    _fd: int | None = None
    _fd_ino: int = -1  # the inode _fd was opened on
    _dirty: bool = False
    _flusher: threading.Thread | None = None
    _sync_lock: threading.Lock = field(default_factory=threading.Lock)

    # --- reading ---------------------------------------------------------------------------

    def live(self, now: datetime) -> list[IssuedCertificate]:
        """The newest unexpired certificate per (spiffe_id, node), sorted by spiffe_id, node."""
        return [c for c in self.recent(now) if c.not_after > now]

    def recent(self, now: datetime) -> list[IssuedCertificate]:
        """The newest certificate per (spiffe_id, node), expired ones included while retained."""
        self.catch_up(locked=False)
        self._drop_expired(now)
        return [self._newest[k] for k in sorted(self._newest, key=lambda k: (k[0], k[1] or ""))]

    def newest(self, spiffe_id: str, node: str | None, now: datetime) -> IssuedCertificate | None:
        """The newest certificate recorded for (spiffe_id, node), expired or not (while retained)."""
        self.catch_up(locked=False)
        self._drop_expired(now)
        return self._newest.get((spiffe_id, node))

    def catch_up(self, *, locked: bool) -> None:
        """Read what was appended since the last look (everything, after a compaction elsewhere).

        ``locked``: the caller holds the CA's file lock, so no writer is mid-line and a line
        without its newline is a crashed writer's torn tail: it is cut off (with a warning).
        """
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            if self._pos.ino != -1:  # removed by hand: start afresh
                self._reset()
            if locked and self.legacy_path is not None and self.legacy_path.exists():
                self._migrate()
            return
        if st.st_ino != self._pos.ino or st.st_size < self._pos.offset:
            self._reset()
            self._pos.ino = st.st_ino
        if st.st_size == self._pos.offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._pos.offset)
            data = fh.read(st.st_size - self._pos.offset)
        end = data.rfind(b"\n") + 1
        for raw in data[:end].splitlines():
            self._pos.lines += 1
            self._apply_line(raw, self._pos.lines)
        self._pos.offset += end
        if end < len(data) and locked:
            log.warning("issued-certificate journal %s ends in a torn line (%d bytes, a writer died mid-append); "
                        "ignoring it", self.path, len(data) - end)
            os.truncate(self.path, self._pos.offset)

    def _apply_line(self, raw: bytes, number: int) -> None:
        try:
            cert = IssuedCertificate.from_dict(json.loads(raw))
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("issued-certificate journal %s line %d is damaged (%s); skipping it", self.path, number, exc)
            return
        self._index(cert)

    def _index(self, cert: IssuedCertificate) -> None:
        key = (cert.spiffe_id, cert.node)
        self._newest.pop(key, None)  # re-insert: dict order stays issuance order of the newest
        self._newest[key] = cert
        heapq.heappush(self._expiry, (cert.not_after + self.retention(cert), cert.serial, key))

    def _drop_expired(self, now: datetime) -> None:
        while self._expiry and self._expiry[0][0] <= now:
            _, serial, key = heapq.heappop(self._expiry)
            current = self._newest.get(key)
            if current is not None and current.serial == serial:
                del self._newest[key]

    def _reset(self) -> None:
        self._close()
        self._newest.clear()
        self._expiry.clear()
        self._pos = _Position()

    # --- writing (the caller holds the CA's file lock) --------------------------------------

    def append(self, cert: IssuedCertificate, now: datetime) -> int | None:
        """Record ``cert``: one appended line; compact when the journal is mostly dead lines."""
        self.catch_up(locked=True)
        line = _line(cert.to_dict()).encode() + b"\n"
        fd = self._append_fd()
        self._write_line(fd, line)
        self._schedule_sync()
        self._pos.offset += len(line)
        self._pos.lines += 1
        self._index(cert)
        self._drop_expired(now)
        if self._pos.lines >= COMPACT_MIN_LINES and self._pos.lines > 2 * len(self._newest):
            self.compact(now)
        return None

    def _write_line(self, fd: int, line: bytes) -> None:
        """Append all of ``line`` or nothing: a short write (the disk filled up mid-line) is continued, and a
        failure leaves the journal cut back to where the line began, so no torn line is left behind and the
        caller sees the OSError (a leaf the journal does not hold is never handed out)."""
        start = os.fstat(fd).st_size  # O_APPEND: the line goes at the end
        rest = memoryview(line)
        try:
            while rest:
                rest = rest[os.write(fd, rest):]
        except OSError:
            try:
                os.ftruncate(fd, start)
            except OSError as exc:
                log.error("cannot cut the partly written line off the issued-certificate journal %s: %s",
                          self.path, exc)
            raise

    def compact(self, now: datetime) -> None:
        """Rewrite the journal with only the newest certificate per identity and node still retained (atomically)."""
        self._drop_expired(now)
        kept = list(self._newest.values())
        body = b"".join(json.dumps(c.to_dict(), separators=(",", ":")).encode() + b"\n" for c in kept)
        before = self._pos.lines
        atomic_write(self.path, body)
        self._reset()
        self._expiry = [(c.not_after + self.retention(c), c.serial, (c.spiffe_id, c.node)) for c in kept]
        heapq.heapify(self._expiry)
        self._newest = {(c.spiffe_id, c.node): c for c in kept}
        self._pos = _Position(ino=os.stat(self.path).st_ino, offset=len(body), lines=len(kept))
        log.info("compacted the issued-certificate journal %s from %d to %d lines", self.path, before, len(kept))

    def _schedule_sync(self) -> None:
        with self._sync_lock:
            self._dirty = True
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="ca-journal-sync", daemon=True)
                self._flusher.start()

    def _flush_loop(self) -> None:
        """Sync the journal while lines keep arriving; exit once a round found nothing new."""
        while True:
            time.sleep(SYNC_DELAY)
            with self._sync_lock:
                if not self._dirty:
                    self._flusher = None
                    return
                self._dirty = False
                fd = os.dup(self._fd) if self._fd is not None else None
            if fd is not None:  # a dup: the journal may close or replace its descriptor meanwhile
                try:
                    os.fdatasync(fd)
                except OSError as exc:
                    log.error("cannot sync the issued-certificate journal %s: %s", self.path, exc)
                finally:
                    os.close(fd)

    def wait_written(self, seq: int | None, timeout: float) -> bool:
        """The shared journal's durability wait (see ``_shared.py``); here a record is in the file once appended
        (a killed process loses none; the batched ``fdatasync`` covers power loss)."""
        return True

    def sync(self) -> None:
        """Write every appended line to the disk now (close() does it too)."""
        with self._sync_lock:
            self._dirty = False
            if self._fd is not None:
                os.fdatasync(self._fd)

    def _append_fd(self) -> int:
        """The descriptor appending to the file at :attr:`path` now (catch_up found its inode): the one held while
        it is that file's (an inode learnt when it was opened), else a new one."""
        if self._fd is not None and self._fd_ino == self._pos.ino:
            return self._fd
        self._close()
        created = not self.path.exists()
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if created:
            fsync_dir(self.path.parent)
        self._pos.ino = self._fd_ino = os.fstat(self._fd).st_ino
        return self._fd

    def _migrate(self) -> None:
        """Turn an older ``issued.json`` into the journal (once; the old file is removed)."""
        assert self.legacy_path is not None
        try:
            data = json.loads(self.legacy_path.read_text())
            certs = [IssuedCertificate.from_dict(d) for d in data.get("certificates", [])]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("cannot read the old issued-certificate list %s (%s); starting a fresh journal, "
                        "the old file stays for inspection", self.legacy_path, exc)
            return
        atomic_write(self.path, b"".join(json.dumps(c.to_dict(), separators=(",", ":")).encode() + b"\n"
                                         for c in certs))
        self.legacy_path.unlink()
        log.info("moved %d issued certificates from %s to the journal %s", len(certs), self.legacy_path, self.path)
        self.catch_up(locked=True)

    def _close(self) -> None:
        with self._sync_lock:
            if self._fd is not None:
                if self._dirty:
                    os.fdatasync(self._fd)
                    self._dirty = False
                os.close(self._fd)
                self._fd = None

    def close(self) -> None:
        self._close()

    def __del__(self) -> None:  # a CA dropped without close(): do not leak the descriptor
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
