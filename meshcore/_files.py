"""Private file helpers shared by the CA, the agent and the directory resource store.

Everything meshcore persists on local disk goes through these:

* :func:`atomic_write` writes a temporary file in the target's directory (permission bits set
  before any data is written, then fsynced), moves it into place with :func:`os.replace` (atomic on
  POSIX) and fsyncs the directory. A reader, or a crash, sees the old content or the new content,
  never half of one; on failure the temporary file is removed and the old content is untouched.
* Temporary files are named ``.tmp-<target name>.<random>`` (:data:`TEMP_PREFIX`): hidden from
  listings that skip dot files, and recognised by :func:`remove_stale_temp_files`, which deletes
  what a crash left behind.
* Modes are explicit and not subject to the umask: files default to 0600, directories to 0700.
* :func:`file_lock` serialises read-modify-write cycles across processes *and* threads.

The helpers never create missing parent directories (call :func:`ensure_private_dir` first) and
raise plain :class:`OSError`; a package that reports its own error type translates it at its
boundary, e.g. ``with os_errors_as(AgentError, f"cannot write {path}"): ...``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

StrPath = str | os.PathLike[str]

PRIVATE_FILE_MODE = 0o600
PRIVATE_DIR_MODE = 0o700
TEMP_PREFIX = ".tmp-"

# errno values with which filesystems that cannot sync a directory answer fsync(2) on one
_DIR_FSYNC_UNSUPPORTED = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def ensure_private_dir(path: StrPath, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create directory ``path`` (and missing parents) and make its permission bits exactly ``mode``.

    Missing parents get the default (umask) mode; only ``path`` itself is forced to ``mode``. An
    existing directory whose bits differ is chmod-ed, with a warning when it granted more than
    ``mode`` (e.g. a group/world readable state directory).
    """
    path = Path(path)
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    current = stat.S_IMODE(path.stat().st_mode)
    if current != mode:
        if current & ~mode:
            log.warning("tightening permissions of %s from %o to %o path=%s", path, current, mode, path)
        os.chmod(path, mode)


def fsync_dir(directory: StrPath) -> None:
    """fsync ``directory`` so a rename/link inside it survives a crash.

    Filesystems that cannot sync a directory (EINVAL/ENOTSUP) are tolerated: there is nothing more
    to do there. Any other error is raised.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _DIR_FSYNC_UNSUPPORTED:
            raise
    finally:
        os.close(fd)


def _as_bytes(data: str | bytes) -> bytes:
    return data.encode("utf-8") if isinstance(data, str) else bytes(data)


def write_temp(target: StrPath, data: str | bytes, mode: int = PRIVATE_FILE_MODE) -> Path:
    """Write ``data`` (str as UTF-8) to a new fsynced temporary file next to ``target``; return its path.

    The file is named ``.tmp-<target name>.<random>`` and has mode ``mode`` before any byte is
    written. It is removed again if writing fails. The caller renames it into place (or removes
    it); :func:`atomic_write` is the one-file case, the resource store commits several at once.
    """
    target = Path(target)
    raw = _as_bytes(data)
    fd, tmp = tempfile.mkstemp(prefix=f"{TEMP_PREFIX}{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError) and not exc.filename:  # write/fsync errors (a full disk) name no file
            exc.filename = str(target)
        raise
    return Path(tmp)


def atomic_write(path: StrPath, data: str | bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Replace ``path`` with ``data`` (str as UTF-8) atomically; the file ends up with mode ``mode``.

    Temp file in the same directory, fsync, :func:`os.replace`, fsync of the directory. If anything
    fails before the rename, ``path`` keeps its old content and no temporary file is left.
    The directory must exist.
    """
    path = Path(path)
    tmp = write_temp(path, data, mode)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_create(path: StrPath, data: str | bytes, mode: int = PRIVATE_FILE_MODE) -> None:
    """Like :func:`atomic_write`, but raise :class:`FileExistsError` rather than replace an existing ``path``.

    The complete temporary file is hard-linked to ``path`` (``link(2)`` fails if the name exists),
    so ``path`` appears whole or not at all, and a concurrent creator loses instead of overwriting.
    """
    path = Path(path)
    tmp = write_temp(path, data, mode)
    try:
        os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    fsync_dir(path.parent)


def read_text(path: StrPath) -> str | None:
    """The file's text (UTF-8), or None when it does not exist; other errors are raised."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def write_if_changed(path: StrPath, data: str | bytes, mode: int = PRIVATE_FILE_MODE) -> bool:
    """:func:`atomic_write` ``data`` unless ``path`` already holds exactly those bytes; True when written.

    When the content is already right but the permission bits are not, they are set to ``mode``
    (without rewriting the file, so watchers see no change).
    """
    path = Path(path)
    raw = _as_bytes(data)
    try:
        same = path.read_bytes() == raw
    except FileNotFoundError:
        same = False
    if same:
        if stat.S_IMODE(path.stat().st_mode) != mode:
            os.chmod(path, mode)
        return False
    atomic_write(path, raw, mode)
    return True


def remove_stale_temp_files(directory: StrPath) -> list[str]:
    """Delete the temporary files (:data:`TEMP_PREFIX`) a crash left in ``directory``; return their names.

    Only call it when no other writer can be using the directory (at startup, or under its lock):
    a temporary file in use by a concurrent :func:`atomic_write` would be deleted too.
    A missing directory is not an error.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        if entry.name.startswith(TEMP_PREFIX) and not entry.is_dir():
            entry.unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


@contextlib.contextmanager
def file_lock(lock_path: StrPath) -> Iterator[None]:
    """Hold an exclusive ``flock(2)`` on ``lock_path`` (created empty, mode 0600) for the ``with`` block.

    Each call opens its own file description, so the lock excludes other threads of this process
    as well as other processes. Closing the descriptor (also when the process dies) releases it.
    The lock file is never removed.
    """
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


@contextlib.contextmanager
def os_errors_as(error: Callable[[str], BaseException], message: str, hint: str = "") -> Iterator[None]:
    """Re-raise an :class:`OSError` from the block as ``error(f"{message}: {exc}[; {hint}]")``, chained."""
    try:
        yield
    except OSError as exc:
        raise error(f"{message}: {exc}" + (f"; {hint}" if hint else "")) from exc


__all__ = [
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "TEMP_PREFIX",
    "atomic_create",
    "atomic_write",
    "ensure_private_dir",
    "file_lock",
    "fsync_dir",
    "os_errors_as",
    "read_text",
    "remove_stale_temp_files",
    "write_if_changed",
    "write_temp",
]
