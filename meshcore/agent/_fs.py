"""Small filesystem helpers: atomic writes with explicit permissions.

Envoy watches the secrets directory for renames, and operators read ``status.json`` while the
agent runs, so every file the agent owns is written to a temporary file in the same directory
and moved into place with :func:`os.replace` (atomic on POSIX): a reader sees the old or the
new content, never half of one.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from meshcore.errors import AgentError

TEMP_PREFIX = ".tmp-"


def ensure_dir(path: Path, mode: int = 0o700) -> None:
    """Create ``path`` (and parents) if missing and force its permission bits to ``mode``."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=mode)
        os.chmod(path, mode)
    except OSError as exc:
        raise AgentError(f"cannot create directory {path}: {exc}; check the agent's permissions") from exc


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode`` (set before the rename)."""
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX + path.name + ".", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        _unlink_quietly(Path(tmp))
        raise AgentError(f"cannot write {path}: {exc}") from exc
    except BaseException:
        _unlink_quietly(Path(tmp))
        raise


def read_text(path: Path) -> str | None:
    """The file's text, or None when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise AgentError(f"cannot read {path}: {exc}") from exc


def write_if_changed(path: Path, data: str, mode: int = 0o600) -> bool:
    """Atomically write ``data`` unless the file already holds exactly that; True when written."""
    if read_text(path) == data:
        if (path.stat().st_mode & 0o777) != mode:
            os.chmod(path, mode)
        return False
    atomic_write(path, data, mode)
    return True


def remove_stale_temp_files(directory: Path) -> None:
    """Delete temporary files a crash may have left behind in ``directory``."""
    if not directory.is_dir():
        return
    for entry in directory.iterdir():
        if entry.name.startswith(TEMP_PREFIX):
            _unlink_quietly(entry)


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
