"""DirectoryStore: the embedded-default resource store, one JSON file per resource on local disk.

Layout under ``root``::

    root/<Kind>/<namespace>/<name>.json   canonical JSON of one resource (Resource.canonical_json())
    root/.index                           {"index": N, "hash": "<sha256 of the contents>"}
    root/.lock                            flock(2) target serialising writers (and readers, shared)
    root/.journal                         only while a change is being rolled forward (see below)

* ``apply``/``delete`` are all-or-nothing, also under ``kill -9`` or a power cut at any point. A change
  is staged as temporary files (``.tmp-*``, not synced), then *committed* by one atomic write of
  ``root/.journal`` (the whole change: every file's new content or removal and its old content; written
  to a temporary name, fsynced, renamed into place). Then the files are renamed into place, the
  filesystem is synced once (syncfs(2)), the index is bumped and the journal removed. A crash before
  the journal exists leaves only temporary files, which are removed at start: none of the change. A
  crash after it is finished from the journal by the next reader or writer (the constructor, i.e. the
  control plane's start, does it first): all of the change. An I/O error while rolling forward (disk
  full) undoes the change from the journal's old contents and raises :class:`StoreError`.
* Writers hold an exclusive ``flock`` on ``root/.lock``, readers a shared one, so two processes
  (``meshctl apply`` and the control plane) never interleave or see half a batch.
* The index is a counter that only grows; it is bumped once per apply/delete that changed anything.
  ``watch`` sleeps on inotify (watches on the root and every kind and namespace directory, made per
  call); an event wakes it within milliseconds and it checks the counter and hashes the contents, so
  an operator editing a file by hand is noticed too (the watcher bumps the index for it). An idle
  store costs no CPU. Where inotify cannot be used (another OS, no watches left) it polls every
  :data:`POLL_INTERVAL` seconds as before.
* Reads and hashes touch only what changed: each file's hash and parsed document are kept with its
  ``stat`` (inode, size, mtime, ctime), and a file is read again only when that moved, so the content hash
  and a watch's answer cost a ``stat`` per stored file, not a read and parse of each. A file changed within
  :data:`RACY_NS` of when it was read (a timestamp that cannot tell two writes apart, git's "racy" case)
  is read again until that has passed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
import builtins
from typing import Any, Callable, Iterator, Sequence

from meshcore._files import TEMP_PREFIX, atomic_write, fsync_dir
from meshcore.errors import StoreError

from .model import Resource, ResourceKey
from .store import StoreHealth, UnreadableDocuments

try:
    import inotify_simple
except ImportError:  # pragma: no cover - non-Linux platforms
    inotify_simple = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
CORRUPT_GRACE = 1.0  # seconds watch() waits for a half-written hand edit before leaving the file out
INDEX_FILE = ".index"
JOURNAL_FILE = ".journal"
LOCK_FILE = ".lock"
FILE_MODE = 0o644  # resources and the index are configuration, not secrets: readable like before
_Resources = list[Resource]  # (the class's list() method shadows the builtin in its annotations)
SETTLE = 0.02  # seconds to let a burst of events (an editor's save, a batch of renames) arrive before reading
RACY_NS = 100_000_000  # a file's memo is trusted only once it was read this long after its last change


@dataclass(frozen=True)
class _Seen:
    """One stored file as it was last read: its ``stat`` signature, when it was read, the sha256 of its bytes
    and the resource it holds (or why it holds none)."""

    signature: tuple[int, int, int, int]  # inode, size, mtime_ns, ctime_ns
    read_ns: int  # time.time_ns() just before the read
    digest: bytes
    resource: Resource | None
    error: str  # "" when ``resource`` is set


def _signature(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


@dataclass(frozen=True)
class _Change:
    """One file of a change: its new bytes (None: remove it) and what it held before (None: nothing)."""

    target: Path
    new: bytes | None
    old: bytes | None


def _write_unsynced(target: Path, data: bytes) -> Path:
    """A temporary file beside ``target`` holding ``data`` (not fsynced: the journal covers a crash)."""
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            fh.write(data)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # write/fsync errors (a full disk) name no file
            exc.filename = str(target)
        raise
    return Path(tmp)


def _libc_syncfs() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.syncfs  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # pragma: no cover - not Linux/glibc
        return None


_SYNCFS = _libc_syncfs()


def _sync_filesystem(root: Path) -> None:
    """Flush the store's filesystem: one syncfs(2) instead of an fsync per file (1,500 fsyncs take seconds)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _SYNCFS is None or _SYNCFS(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


class _Watcher:
    """inotify watches on the store's root and every kind and namespace directory under it."""

    def __init__(self, root: Path):
        assert inotify_simple is not None
        flags = inotify_simple.flags
        self._mask = (flags.CREATE | flags.DELETE | flags.MODIFY | flags.CLOSE_WRITE | flags.MOVED_FROM
                      | flags.MOVED_TO | flags.ATTRIB | flags.DELETE_SELF | flags.MOVE_SELF | flags.ONLYDIR)
        self._isdir = flags.ISDIR
        self.root = root
        self.inotify = inotify_simple.INotify(nonblocking=True)
        self.add_directories()

    def add_directories(self) -> None:
        """Watch the root and each kind/namespace directory (adding a watch twice is harmless)."""
        self.inotify.add_watch(self.root, self._mask)
        for kind_dir in self.root.iterdir():
            if kind_dir.name.startswith(".") or not kind_dir.is_dir():
                continue
            self.inotify.add_watch(kind_dir, self._mask)
            for ns_dir in kind_dir.iterdir():
                if not ns_dir.name.startswith(".") and ns_dir.is_dir():
                    self.inotify.add_watch(ns_dir, self._mask)

    def wait(self, timeout: float) -> None:
        """Return after an event (and :data:`SETTLE`) or after ``timeout`` seconds."""
        ready, _, _ = select.select([self.inotify.fileno()], [], [], max(timeout, 0.0))
        if not ready:
            return
        time.sleep(SETTLE)
        events = self.inotify.read(timeout=0)
        if any(e.mask & self._isdir for e in events):  # a new kind or namespace directory: watch it too
            try:
                self.add_directories()
            except OSError:
                pass  # removed again meanwhile: the content check that follows sees the state

    def close(self) -> None:
        self.inotify.close()


def _subdirs(parent: str) -> builtins.list[str]:
    """The names of the non-hidden directories in ``parent``, sorted (none when it went away)."""
    try:
        entries = sorted(os.scandir(parent), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise StoreError(f"cannot list {parent}: {exc}") from exc
    out = []
    for entry in entries:
        try:
            if not entry.name.startswith(".") and entry.is_dir():
                out.append(entry.name)
        except OSError:
            continue
    return out


class DirectoryStore:
    """A :class:`~meshcore.resources.store.ResourceStore` backed by a local directory (see module doc)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self._unreadable = UnreadableDocuments(log, "file")  # of the last read (see unreadable())
        self._seen: dict[str, _Seen] = {}  # each stored file (path under root) as last read (see the module docstring)
        self._seen_lock = threading.Lock()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create resource store directory {self.root}: {exc}") from exc
        self.recover()

    # --- locking and paths ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            fh = open(self.root / LOCK_FILE, "a+b")
        except OSError as exc:
            raise StoreError(f"cannot open lock file {self.root / LOCK_FILE}: {exc}") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            if (self.root / JOURNAL_FILE).exists():  # a writer died after committing: finish its change first
                if not exclusive:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX)  # (a conversion drops the shared lock first)
                if (self.root / JOURNAL_FILE).exists():
                    self._recover_locked()
                if not exclusive:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_SH)
            yield
        finally:
            fh.close()  # closing releases the flock

    def recover(self) -> None:
        """Finish or discard what an interrupted writer left (the constructor does this; safe at any time)."""
        with self._locked(exclusive=True):
            self._recover_locked()

    def path_of(self, key: ResourceKey) -> Path:
        """File holding ``key``: ``root/<Kind>/<namespace>/<name>.json``."""
        for part in (key.kind, key.namespace, key.name):
            if not part or "/" in part or part.startswith(".") or "\0" in part:
                raise StoreError(f"refusing unsafe resource key {key}: parts must be non-empty, without '/' or a leading '.'")
        return self.root / key.kind / key.namespace / f"{key.name}.json"

    def _resource_files(self) -> builtins.list[Path]:
        return [self.root / rel for rel, _st in self._stat_files()]

    def _stat_files(self) -> builtins.list[tuple[str, os.stat_result]]:
        """Every resource file (``Kind/namespace/name.json`` under the root), sorted, with its ``stat`` (one
        call each; the listing itself needs none). Plain strings: pathlib costs more than the stat."""
        files: builtins.list[tuple[str, os.stat_result]] = []
        root = str(self.root)
        for kind in _subdirs(root):
            for ns in _subdirs(os.path.join(root, kind)):
                prefix = f"{kind}/{ns}/"
                try:
                    entries = sorted(os.scandir(os.path.join(root, kind, ns)), key=lambda e: e.name)
                except FileNotFoundError:  # removed while we looked; the next poll sees the new state
                    continue
                except OSError as exc:
                    raise StoreError(f"cannot list {self.root / kind / ns}: {exc}") from exc
                for entry in entries:
                    name = entry.name
                    if not name.endswith(".json") or name.startswith("."):
                        continue
                    try:
                        if entry.is_file():
                            files.append((prefix + name, entry.stat()))
                    except FileNotFoundError:
                        continue
        return files

    def _seen_file(self, rel: str, st: os.stat_result) -> _Seen | None:
        """The file ``rel`` as it is now: from the memo when its ``stat`` did not move, else read (and parsed)
        again; None when it went away meanwhile."""
        signature = _signature(st)
        with self._seen_lock:
            seen = self._seen.get(rel)
        if seen is not None and seen.signature == signature and \
                seen.read_ns - max(signature[2], signature[3]) > RACY_NS:
            return seen
        f = self.root / rel
        read_ns = time.time_ns()
        try:
            with open(f, "rb") as fh:
                signature = _signature(os.fstat(fh.fileno()))  # what was read is at least this new
                data = fh.read()
        except FileNotFoundError:
            with self._seen_lock:
                self._seen.pop(rel, None)
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {f}: {exc}") from exc
        try:
            resource, error = self._parse(f, data), ""
        except StoreError as exc:
            resource, error = None, str(exc)
        seen = _Seen(signature, read_ns, hashlib.sha256(data).digest(), resource, error)
        with self._seen_lock:
            self._seen[rel] = seen
        return seen

    def _current_files(self) -> builtins.list[tuple[str, _Seen]]:
        """Every resource file as it is now (see :meth:`_seen_file`); files gone are dropped from the memo."""
        out = []
        for rel, st in self._stat_files():
            seen = self._seen_file(rel, st)
            if seen is not None:
                out.append((rel, seen))
        with self._seen_lock:
            if len(self._seen) > len(out):
                present = {rel for rel, _ in out}
                for gone in [rel for rel in self._seen if rel not in present]:
                    del self._seen[gone]
        return out

    @staticmethod
    def _hash_of(files: builtins.list[tuple[str, _Seen]]) -> str:
        h = hashlib.sha256()
        for rel, seen in files:
            h.update(rel.encode() + b"\0" + seen.digest)
        return h.hexdigest()

    # --- index ---------------------------------------------------------------------------

    def _content_hash(self) -> str:
        return self._hash_of(self._current_files())

    def _read_index(self) -> tuple[int, str | None]:
        try:
            raw = json.loads((self.root / INDEX_FILE).read_text())
            return int(raw["index"]), raw.get("hash")
        except FileNotFoundError:
            return 0, None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"index file {self.root / INDEX_FILE} is corrupt ({exc}); delete it to reset the index") from exc

    def _write_index(self, index: int, content_hash: str) -> None:
        atomic_write(self.root / INDEX_FILE, json.dumps({"index": index, "hash": content_hash}), FILE_MODE)

    def _bump(self) -> int:
        """Under the exclusive lock: record the current contents under the next index."""
        index, _ = self._read_index()
        index += 1
        self._write_index(index, self._content_hash())
        return index

    def _current_index(self) -> int:
        """The index for the contents on disk now; bumps it if files changed behind our back."""
        index, recorded = self._read_index()
        if index > 0 and recorded == self._content_hash():
            return index
        with self._locked(exclusive=True):
            index, recorded = self._read_index()
            now = self._content_hash()
            if index == 0 or recorded != now:
                index += 1
                self._write_index(index, now)
                if recorded is not None:
                    log.info("resource store changed outside meshcore root=%s index=%d", self.root, index)
            return index

    @property
    def index(self) -> int:
        return self._current_index()

    def health(self) -> StoreHealth:
        """Always ``ok``: the directory is the store's own state (no backend that can lose it behind our back);
        files the last read could not use are listed in ``unreadable``."""
        with self._locked(exclusive=False):
            return StoreHealth(backend="dir", location=str(self.root), generation=self._read_index()[0],
                               resources=len(self._resource_files()),
                               unreadable=tuple(sorted(self.unreadable().items())))

    # --- reads ---------------------------------------------------------------------------

    def _read_resource(self, f: Path) -> Resource:
        try:
            data = f.read_bytes()
        except OSError as exc:
            raise StoreError(f"resource file {f} is corrupt ({type(exc).__name__}: {exc}); fix or delete it") from exc
        return self._parse(f, data)

    def _parse(self, f: Path, data: bytes) -> Resource:
        try:
            doc: Any = json.loads(data.decode("utf-8"))
            meta = doc["metadata"]
            res = Resource(
                api_version=doc["apiVersion"],
                kind=doc["kind"],
                name=meta["name"],
                namespace=meta["namespace"],
                spec=doc.get("spec"),
                labels=tuple(sorted((meta.get("labels") or {}).items())),
                annotations=tuple(sorted((meta.get("annotations") or {}).items())),
            )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"resource file {f} is corrupt ({type(exc).__name__}: {exc}); fix or delete it") from exc
        expected = self.path_of(res.key)
        if expected != f:
            raise StoreError(f"resource file {f} holds {res.key}, which belongs in {expected}; move or delete it")
        return res

    def _where(self, f: Path) -> str:
        """``Kind/namespace/name (path)`` of a resource file, as the control plane names stored documents."""
        rel = f.relative_to(self.root)
        return f"{rel.parts[0]}/{rel.parts[1]}/{f.stem} ({f})" if len(rel.parts) == 3 else str(f)

    def _read_all(self, files: builtins.list[tuple[str, _Seen]] | None = None
                  ) -> tuple[builtins.list[Resource], dict[str, str]]:
        """Every readable resource, sorted, and the unreadable files (where -> why), each left out on its own.
        Only files whose ``stat`` moved since they were last read are read and parsed again (``files``: the
        listing, when at hand)."""
        out = []
        unreadable: dict[str, str] = {}
        for rel, seen in self._current_files() if files is None else files:
            if seen.resource is not None:
                out.append(seen.resource)
            else:
                unreadable[self._where(self.root / rel)] = seen.error
        return sorted(out, key=lambda r: (r.kind, r.namespace, r.name)), unreadable

    def _list_unlocked(self) -> builtins.list[Resource]:
        resources, unreadable = self._read_all()
        self._unreadable.note(unreadable)
        return resources

    def unreadable(self) -> dict[str, str]:
        """Files of the last read that hold no usable resource document (where -> why); they are left out."""
        return self._unreadable.get()

    def list(self) -> builtins.list[Resource]:
        """Every readable resource, sorted by (kind, namespace, name). A file that is not a resource document
        (unparsable, or at the wrong path) is left out, logged once and kept in :meth:`unreadable`."""
        with self._locked(exclusive=False):
            return self._list_unlocked()

    def get(self, key: ResourceKey) -> Resource | None:
        with self._locked(exclusive=False):
            f = self.path_of(key)
            return self._read_resource(f) if f.exists() else None

    # --- writes --------------------------------------------------------------------------

    def apply(self, resources: Sequence[Resource]) -> None:
        """Write every resource, or none. Unchanged resources are not rewritten; the index moves only on change."""
        keys = [r.key for r in resources]
        if len(set(keys)) != len(keys):
            dupes = sorted({str(k) for k in keys if keys.count(k) > 1})
            raise StoreError(f"apply batch names the same resource twice: {', '.join(dupes)}")
        with self._locked(exclusive=True):
            plan: builtins.list[_Change] = []
            for res in resources:
                target = self.path_of(res.key)
                data = (res.canonical_json() + "\n").encode()
                try:
                    old = target.read_bytes() if target.is_file() else None
                except OSError as exc:
                    raise StoreError(f"cannot read {target} before overwriting it: {exc}") from exc
                if old != data:
                    plan.append(_Change(target, data, old))
            if not plan:
                return
            index = self._commit(plan, "apply")
            log.info("resources applied root=%s count=%d index=%d", self.root, len(plan), index)

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:
        """Remove every existing key, or none; return the keys that existed (in the order given)."""
        with self._locked(exclusive=True):
            present: builtins.list[ResourceKey] = []
            plan: builtins.list[_Change] = []
            for key in dict.fromkeys(keys):
                target = self.path_of(key)
                if target.is_file():
                    try:
                        old = target.read_bytes()
                    except OSError as exc:
                        raise StoreError(f"cannot read {target} before removing it: {exc}") from exc
                    present.append(key)
                    plan.append(_Change(target, None, old))
            if not plan:
                return []
            index = self._commit(plan, "delete")
            log.info("resources deleted root=%s count=%d index=%d", self.root, len(present), index)
            return present

    def _commit(self, plan: builtins.list[_Change], what: str) -> int:
        """Under the exclusive lock: make ``plan`` happen as one unit (see the module docstring); the new index."""
        nothing = "apply failed, nothing was changed" if what == "apply" else "delete failed, nothing was removed"
        index = self._read_index()[0] + 1
        temps: dict[Path, Path] = {}
        created_dirs: builtins.list[Path] = []
        try:  # 1. stage: directories and temporary files (cleaned at start if we die here)
            for change in plan:
                if change.new is None:
                    continue
                for d in (change.target.parent.parent, change.target.parent):
                    if not d.is_dir():
                        d.mkdir()
                        created_dirs.append(d)
                temps[change.target] = _write_unsynced(change.target, change.new)
        except OSError as exc:
            self._discard(list(temps.values()), created_dirs)
            raise StoreError(f"{nothing}: cannot write {exc.filename or change.target}: {exc.strerror or exc}") from exc
        try:  # 2. the commit point: the journal appears whole (fsynced, renamed) or not at all
            atomic_write(self.root / JOURNAL_FILE, self._journal_bytes(plan, index), FILE_MODE)
        except OSError as exc:
            self._discard(list(temps.values()), created_dirs)
            raise StoreError(f"{nothing}: cannot write the journal {self.root / JOURNAL_FILE}: "
                             f"{exc.strerror or exc}") from exc
        try:  # 3. roll forward
            self._roll_forward(plan, index, temps)
        except OSError as exc:
            where = getattr(exc, "filename", None) or f"{self.root} (syncing the store, writing its index)"
            problems = self._undo(plan)
            self._discard(list(temps.values()), created_dirs)
            if problems:  # the journal stays: the next reader or writer finishes the change (all, not half)
                raise StoreError(f"{what} failed at {where} ({exc.strerror or exc}) and could not be undone "
                                 f"({'; '.join(problems)}); it will be completed from {self.root / JOURNAL_FILE} "
                                 "once the problem is fixed") from exc
            with contextlib.suppress(OSError):
                (self.root / JOURNAL_FILE).unlink()
                fsync_dir(self.root)
            raise StoreError(f"{nothing}: cannot write {where}: {exc.strerror or exc}") from exc
        return index

    def _journal_bytes(self, plan: builtins.list[_Change], index: int) -> bytes:
        return json.dumps({"version": 1, "index": index, "changes": [
            {"file": str(c.target.relative_to(self.root)), "new": None if c.new is None else c.new.decode("utf-8"),
             "old": None if c.old is None else c.old.decode("utf-8", "surrogateescape")} for c in plan]}).encode()

    def _roll_forward(self, plan: builtins.list[_Change], index: int, temps: dict[Path, Path] | None = None) -> None:
        """Make the files say what ``plan`` says, sync them, record ``index``, drop the journal. Idempotent."""
        temps = temps or {}
        for change in plan:
            target = change.target
            if change.new is None:
                target.unlink(missing_ok=True)
                continue
            tmp = temps.get(target)
            if tmp is None:  # replaying after a crash: the journal holds the content
                for d in (target.parent.parent, target.parent):
                    if not d.is_dir():
                        d.mkdir()
                tmp = _write_unsynced(target, change.new)
            try:
                os.replace(tmp, target)
            except OSError as exc:
                exc.filename = str(target)
                raise
            temps.pop(target, None)
        _sync_filesystem(self.root)  # every file durable before the journal that could redo them goes
        for change in plan:
            if change.new is None:
                self._remove_empty_dirs(change.target)
        self._write_index(index, self._content_hash())
        (self.root / JOURNAL_FILE).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            fsync_dir(self.root)

    def _undo(self, plan: builtins.list[_Change]) -> builtins.list[str]:
        problems = []
        for change in reversed(plan):
            try:
                if change.old is None:
                    if change.target.is_file():
                        change.target.unlink()
                elif not change.target.is_file() or change.target.read_bytes() != change.old:
                    atomic_write(change.target, change.old, FILE_MODE)
            except OSError as exc:
                problems.append(f"{change.target}: {exc}")
                log.error("rollback failed root=%s file=%s error=%s", self.root, change.target, exc)
        return problems

    def _remove_empty_dirs(self, target: Path) -> None:
        for d in (target.parent, target.parent.parent):
            try:
                d.rmdir()
            except OSError as exc:
                if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                    log.warning("could not remove empty directory dir=%s error=%s", d, exc)
                break

    @staticmethod
    def _discard(temps: builtins.list[Path], created_dirs: builtins.list[Path]) -> None:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for d in reversed(created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()

    # --- recovery ------------------------------------------------------------------------

    def _recover_locked(self) -> None:
        """Under the exclusive lock: finish a committed change a dead writer left, remove its temporary files."""
        journal = self.root / JOURNAL_FILE
        leftovers = self._leftover_files()
        if journal.exists():
            try:
                raw = json.loads(journal.read_text(encoding="utf-8"))
                index = int(raw["index"])
                plan = []
                for c in raw["changes"]:
                    rel = Path(c["file"])  # <Kind>/<namespace>/<name>.json, relative: the store may have moved
                    if rel.is_absolute() or len(rel.parts) != 3 or any(p.startswith(".") for p in rel.parts):
                        raise ValueError(f"journal names {c['file']!r}, not a resource file of this store")
                    plan.append(_Change(self.root / rel, None if c["new"] is None else c["new"].encode("utf-8"),
                                        None if c["old"] is None else c["old"].encode("utf-8", "surrogateescape")))
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
                raise StoreError(f"the resource store journal {journal} is unreadable ({exc}); it was written "
                                 "atomically, so something else changed it: inspect it, then delete it") from exc
            for tmp in leftovers:
                tmp.unlink(missing_ok=True)
            try:
                self._roll_forward(plan, index)
            except OSError as exc:
                raise StoreError(f"cannot complete the change an interrupted writer committed to {journal}: "
                                 f"{exc.strerror or exc} ({exc.filename or ''}); fix that and retry") from exc
            log.warning("completed an interrupted resource store change root=%s count=%d index=%d "
                        "(the writer died after committing it)", self.root, len(plan), index)
        elif leftovers:
            for tmp in leftovers:
                tmp.unlink(missing_ok=True)
            log.warning("removed %d temporary file(s) an interrupted resource store change left root=%s "
                        "(it had not committed: nothing of it was applied)", len(leftovers), self.root)

    def _leftover_files(self) -> builtins.list[Path]:
        """Temporary files of an interrupted apply and trash of an interrupted delete (older layouts)."""
        out = [p for p in self.root.iterdir() if p.name.startswith(TEMP_PREFIX) and p.is_file()]
        for kind_dir in self.root.iterdir():
            if kind_dir.name.startswith(".") or not kind_dir.is_dir():
                continue
            for ns_dir in kind_dir.iterdir():
                if ns_dir.name.startswith(".") or not ns_dir.is_dir():
                    continue
                out.extend(f for f in ns_dir.iterdir()
                           if (f.name.startswith(TEMP_PREFIX) or ".json.del-" in f.name) and f.is_file())
        return out

    # --- watch ---------------------------------------------------------------------------

    def _watcher(self) -> _Watcher | None:
        if inotify_simple is None:
            return None
        try:
            return _Watcher(self.root)
        except OSError as exc:  # e.g. fs.inotify.max_user_watches or max_user_instances reached
            log.warning("cannot watch the resource store %s with inotify (%s); polling every %.1fs instead",
                        self.root, exc, POLL_INTERVAL)
            return None

    def watch(self, index: int | None, wait: float) -> tuple[builtins.list[Resource], int]:
        """Block until the index moves past ``index`` (or ``wait`` seconds pass); return (resources, index).

        ``index=None`` returns at once. An ``index`` the store has never reached (e.g. the store
        was reset) also returns at once, so the caller resynchronises. While waiting it sleeps on
        inotify (made before the first check, so a change between the check and the sleep wakes it).
        """
        deadline = time.monotonic() + max(wait, 0.0)
        watcher = self._watcher() if index is not None and wait > 0 else None
        try:
            return self._watch(index, deadline, watcher)
        finally:
            if watcher is not None:
                watcher.close()

    def _watch(self, index: int | None, deadline: float,
               watcher: _Watcher | None) -> tuple[_Resources, int]:
        corrupt_since: float | None = None
        while True:
            current = self._current_index()
            if index is None or current != index or time.monotonic() >= deadline:
                with self._locked(exclusive=False):
                    now_index, recorded = self._read_index()
                    files = self._current_files()  # one listing for the check and the answer
                    if recorded == self._hash_of(files):
                        resources, unreadable = self._read_all(files)
                        # a hand edit in progress (editors truncate, then write): give a new one a moment
                        known = self.unreadable()
                        fresh = any(known.get(where) != why for where, why in unreadable.items())
                        corrupt_since = (corrupt_since or time.monotonic()) if fresh else None
                        if corrupt_since is None or time.monotonic() - corrupt_since > CORRUPT_GRACE:
                            self._unreadable.note(unreadable)
                            return resources, now_index
                time.sleep(POLL_INTERVAL)
                continue  # files changed between the check and the read: record them, then read again
            left = deadline - time.monotonic()
            if watcher is not None:
                watcher.wait(left)
            else:
                time.sleep(max(min(POLL_INTERVAL, left), 0.005))


__all__ = ["DirectoryStore"]
