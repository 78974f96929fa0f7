"""DirectoryStore: the embedded-default resource store, one JSON file per resource on local disk.

Layout under ``root``::

    root/<Kind>/<namespace>/<name>.json   canonical JSON of one resource (Resource.canonical_json())
    root/.index                           {"index": N, "hash": "<sha256 of the contents>"}
    root/.lock                            flock(2) target serialising writers (and readers, shared)

* ``apply``/``delete`` are all-or-nothing: every new file is written to a temporary file first
  (fsynced), then renamed into place; if any rename fails, the ones already done are rolled back
  (previous contents restored, new files removed) and :class:`StoreError` is raised.
* Writers hold an exclusive ``flock`` on ``root/.lock``, readers a shared one, so two processes
  (``meshctl apply`` and the control plane) never interleave or see half a batch.
* The index is a counter that only grows; it is bumped once per apply/delete that changed anything.
  ``watch`` sleeps on inotify (watches on the root and every kind and namespace directory, made per
  call); an event wakes it within milliseconds and it checks the counter and hashes the contents, so
  an operator editing a file by hand is noticed too (the watcher bumps the index for it). An idle
  store costs no CPU. Where inotify cannot be used (another OS, no watches left) it polls every
  :data:`POLL_INTERVAL` seconds as before.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import select
import time
import uuid
from pathlib import Path
import builtins
from typing import Any, Iterator, Sequence

from meshcore._files import atomic_write, fsync_dir, write_temp
from meshcore.errors import StoreError

from .model import Resource, ResourceKey

try:
    import inotify_simple
except ImportError:  # pragma: no cover - non-Linux platforms
    inotify_simple = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.1
CORRUPT_GRACE = 1.0  # seconds watch() waits for a half-written hand edit before raising
INDEX_FILE = ".index"
LOCK_FILE = ".lock"
FILE_MODE = 0o644  # resources and the index are configuration, not secrets: readable like before
_Resources = list[Resource]  # (the class's list() method shadows the builtin in its annotations)
SETTLE = 0.02  # seconds to let a burst of events (an editor's save, a batch of renames) arrive before reading


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


class DirectoryStore:
    """A :class:`~meshcore.resources.store.ResourceStore` backed by a local directory (see module doc)."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create resource store directory {self.root}: {exc}") from exc

    # --- locking and paths ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, exclusive: bool) -> Iterator[None]:
        try:
            fh = open(self.root / LOCK_FILE, "a+b")
        except OSError as exc:
            raise StoreError(f"cannot open lock file {self.root / LOCK_FILE}: {exc}") from exc
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
            yield
        finally:
            fh.close()  # closing releases the flock

    def path_of(self, key: ResourceKey) -> Path:
        """File holding ``key``: ``root/<Kind>/<namespace>/<name>.json``."""
        for part in (key.kind, key.namespace, key.name):
            if not part or "/" in part or part.startswith(".") or "\0" in part:
                raise StoreError(f"refusing unsafe resource key {key}: parts must be non-empty, without '/' or a leading '.'")
        return self.root / key.kind / key.namespace / f"{key.name}.json"

    def _resource_files(self) -> builtins.list[Path]:
        files: builtins.list[Path] = []
        for kind_dir in sorted(self.root.iterdir()):
            if kind_dir.name.startswith(".") or not kind_dir.is_dir():
                continue
            for ns_dir in sorted(kind_dir.iterdir()):
                if ns_dir.name.startswith(".") or not ns_dir.is_dir():
                    continue
                files.extend(
                    f for f in sorted(ns_dir.iterdir()) if f.suffix == ".json" and not f.name.startswith(".") and f.is_file()
                )
        return files

    # --- index ---------------------------------------------------------------------------

    def _content_hash(self) -> str:
        h = hashlib.sha256()
        for f in self._resource_files():
            try:
                data = f.read_bytes()
            except FileNotFoundError:  # removed while we looked; the next poll sees the new state
                continue
            except OSError as exc:
                raise StoreError(f"cannot read {f}: {exc}") from exc
            h.update(str(f.relative_to(self.root)).encode() + b"\0" + hashlib.sha256(data).digest())
        return h.hexdigest()

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

    # --- reads ---------------------------------------------------------------------------

    def _read_resource(self, f: Path) -> Resource:
        try:
            doc: Any = json.loads(f.read_text(encoding="utf-8"))
            meta = doc["metadata"]
            res = Resource(
                api_version=doc["apiVersion"],
                kind=doc["kind"],
                name=meta["name"],
                namespace=meta["namespace"],
                spec=doc.get("spec"),
                labels=tuple(sorted((meta.get("labels") or {}).items())),
            )
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"resource file {f} is corrupt ({type(exc).__name__}: {exc}); fix or delete it") from exc
        expected = self.path_of(res.key)
        if expected != f:
            raise StoreError(f"resource file {f} holds {res.key}, which belongs in {expected}; move or delete it")
        return res

    def _list_unlocked(self) -> builtins.list[Resource]:
        out = []
        for f in self._resource_files():
            try:
                out.append(self._read_resource(f))
            except StoreError:
                if f.exists():
                    raise
        return sorted(out, key=lambda r: (r.kind, r.namespace, r.name))

    def list(self) -> builtins.list[Resource]:
        """Every stored resource, sorted by (kind, namespace, name). A corrupt file raises StoreError naming it."""
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
            plan: builtins.list[tuple[Path, bytes, bytes | None]] = []  # target, new content, old content
            for res in resources:
                target = self.path_of(res.key)
                data = (res.canonical_json() + "\n").encode()
                try:
                    old = target.read_bytes() if target.is_file() else None
                except OSError as exc:
                    raise StoreError(f"cannot read {target} before overwriting it: {exc}") from exc
                if old != data:
                    plan.append((target, data, old))
            if not plan:
                return
            self._commit_writes(plan)
            index = self._bump()
            log.info("resources applied root=%s count=%d index=%d", self.root, len(plan), index)

    def _commit_writes(self, plan: builtins.list[tuple[Path, bytes, bytes | None]]) -> None:
        temps: builtins.list[Path] = []
        created_dirs: builtins.list[Path] = []
        try:
            for target, data, _ in plan:
                for d in reversed([target.parent, target.parent.parent]):
                    if not d.exists():
                        d.mkdir()
                        created_dirs.append(d)
                temps.append(write_temp(target, data, FILE_MODE))
        except OSError as exc:
            self._discard(temps, created_dirs)
            raise StoreError(f"apply failed, nothing was changed: cannot write {exc.filename or ''}: {exc.strerror or exc}") from exc

        done: builtins.list[tuple[Path, bytes | None]] = []
        for (target, _, old), tmp in zip(plan, temps):
            try:
                os.replace(tmp, target)
            except OSError as exc:
                rollback_problems = self._rollback(done)
                self._discard(temps, created_dirs)
                msg = f"apply failed, nothing was changed: cannot write {target}: {exc.strerror or exc}"
                if rollback_problems:
                    msg = f"apply failed at {target} ({exc.strerror or exc}) and rollback was incomplete: " + "; ".join(rollback_problems)
                raise StoreError(msg) from exc
            done.append((target, old))
        for d in {t.parent for t, _, _ in plan}:
            with contextlib.suppress(OSError):  # committed already; a failed sync must not report "nothing changed"
                fsync_dir(d)

    def _rollback(self, done: builtins.list[tuple[Path, bytes | None]]) -> builtins.list[str]:
        problems = []
        for target, old in reversed(done):
            try:
                if old is None:
                    target.unlink()
                else:
                    atomic_write(target, old, FILE_MODE)
            except OSError as exc:
                problems.append(f"{target}: {exc}")
                log.error("rollback failed root=%s file=%s error=%s", self.root, target, exc)
        return problems

    @staticmethod
    def _discard(temps: builtins.list[Path], created_dirs: builtins.list[Path]) -> None:
        for tmp in temps:
            with contextlib.suppress(OSError):
                tmp.unlink()
        for d in reversed(created_dirs):
            with contextlib.suppress(OSError):
                d.rmdir()

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:
        """Remove every existing key, or none; return the keys that existed (in the order given)."""
        with self._locked(exclusive=True):
            present = []
            for key in dict.fromkeys(keys):
                if self.path_of(key).is_file():
                    present.append(key)
            if not present:
                return []
            moved: builtins.list[tuple[Path, Path]] = []
            for key in present:
                target = self.path_of(key)
                trash = target.with_name(f".{target.name}.del-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(target, trash)
                except OSError as exc:
                    problems = []
                    for t, tr in reversed(moved):
                        try:
                            os.rename(tr, t)
                        except OSError as exc2:
                            problems.append(f"{t}: {exc2}")
                    msg = f"delete failed, nothing was removed: cannot remove {target}: {exc.strerror or exc}"
                    if problems:
                        msg += "; rollback was incomplete: " + "; ".join(problems)
                    raise StoreError(msg) from exc
                moved.append((target, trash))
            for target, trash in moved:
                try:
                    trash.unlink()
                except OSError as exc:  # hidden leftovers are ignored by list(); report, do not fail
                    log.warning("could not remove deleted resource file=%s error=%s", trash, exc)
                for d in (target.parent, target.parent.parent):
                    try:
                        d.rmdir()
                    except OSError as exc:
                        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
                            log.warning("could not remove empty directory dir=%s error=%s", d, exc)
                        break
            index = self._bump()
            log.info("resources deleted root=%s count=%d index=%d", self.root, len(present), index)
            return present

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
                    if recorded == self._content_hash():
                        try:
                            return self._list_unlocked(), now_index
                        except StoreError:
                            # a hand edit in progress (editors truncate, then write): give it a moment
                            corrupt_since = corrupt_since or time.monotonic()
                            if time.monotonic() - corrupt_since > CORRUPT_GRACE:
                                raise
                time.sleep(POLL_INTERVAL)
                continue  # files changed between the check and the read: record them, then read again
            left = deadline - time.monotonic()
            if watcher is not None:
                watcher.wait(left)
            else:
                time.sleep(max(min(POLL_INTERVAL, left), 0.005))


__all__ = ["DirectoryStore"]
