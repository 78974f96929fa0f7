"""The state directory as a :class:`~meshcore.state.StateBackend`: one file per key, today's files.

Key ``a/b`` is the file ``<root>/a/b`` (mode 0600, directories 0700, written atomically), so the stores
that moved onto the backend keep exactly the files they wrote before (``operator-tokens.sealed``,
``federation/bundles.json``, ...). The index of an entry is a stamp of its content (never 0), so a
compare-and-set succeeds exactly when the file still holds what the caller read. Writers serialise on
``<root>/.state.lock`` (``flock``: across threads and processes, e.g. ``meshctl`` beside the control
plane). :meth:`DirBackend.watch` polls (the directory is local; no other replica writes it).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._files import TEMP_PREFIX, atomic_write, ensure_private_dir, file_lock, os_errors_as
from ..errors import StoreError
from ._backend import Entry, Put, check_key

LOCK_FILE = ".state.lock"
POLL_INTERVAL = 0.2  # seconds between looks while a watch waits


def _stamp(value: bytes) -> int:
    return int.from_bytes(hashlib.sha256(value).digest()[:7], "big") + 1


class DirBackend:
    """State in a local directory (see the module docstring)."""

    shared = False

    def __init__(self, root: Path | str):
        self.root = Path(root)

    @property
    def location(self) -> str:
        return f"state directory {self.root}"

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with os_errors_as(StoreError, f"cannot lock {self.root / LOCK_FILE}"):
            ensure_private_dir(self.root)
        with file_lock(self.root / LOCK_FILE):
            yield

    def _read(self, key: str) -> Entry | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            return None
        except OSError as exc:
            raise StoreError(f"cannot read {path}: {exc}") from exc
        return Entry(key, data, _stamp(data))

    def get(self, key: str) -> Entry | None:
        return self._read(key)

    def _holds(self, key: str, cas: int | None) -> bool:
        if cas is None:
            return True
        current = self._read(key)
        return (current.index if current else 0) == cas

    def _write(self, key: str, value: bytes) -> None:
        path = self._path(key)
        with os_errors_as(StoreError, f"cannot write {path}", "check the disk (space, permissions)"):
            ensure_private_dir(path.parent)
            atomic_write(path, value)

    def put(self, key: str, value: bytes, *, cas: int | None = None) -> bool:
        return self.put_all([Put(key, value, cas)])

    def put_all(self, puts: Sequence[Put], *, guard: Sequence[dict] = ()) -> bool:
        """Under the lock every ``cas`` is checked first, then the files are replaced one by one (each
        atomically; a crash midway leaves some replaced: the stores write one key per change). ``guard`` is
        for Consul's leader lock: a state directory has a single replica, always the leader."""
        with self._locked():
            if not all(self._holds(p.key, p.cas) for p in puts):
                return False
            for p in puts:
                self._write(p.key, bytes(p.value))
        return True

    def delete(self, key: str, *, cas: int | None = None) -> bool:
        path = self._path(key)
        with self._locked():
            if not self._holds(key, cas):
                return False
            with os_errors_as(StoreError, f"cannot remove {path}"):
                path.unlink(missing_ok=True)
        return True

    def list(self, prefix: str) -> builtins.list[Entry]:
        check_key(prefix, prefix=True)
        base = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        out: builtins.list[Entry] = []
        if not base.is_dir():
            return out
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for name in filenames:
                if name.startswith(".") or name.startswith(TEMP_PREFIX):
                    continue
                key = Path(dirpath, name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    entry = self._read(key)
                    if entry is not None:
                        out.append(entry)
        return sorted(out, key=lambda e: e.key)

    @staticmethod
    def _index_of(entries: builtins.list[Entry]) -> int:
        digest = hashlib.sha256()
        for e in entries:
            digest.update(f"{e.key}\0{e.index}\n".encode())
        return int.from_bytes(digest.digest()[:7], "big") + 1

    def watch(self, prefix: str, index: int, wait: float) -> tuple[builtins.list[Entry], int]:
        deadline = time.monotonic() + max(0.0, wait)
        while True:
            entries = self.list(prefix)
            current = self._index_of(entries)
            if not index or current != index or time.monotonic() >= deadline:
                return entries, current
            time.sleep(min(POLL_INTERVAL, max(0.0, deadline - time.monotonic())))

    def close(self) -> None:
        pass
