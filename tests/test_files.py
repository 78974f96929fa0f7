"""meshcore._files: the one implementation of atomic, private file writes (CA, agent, resource store)."""

from __future__ import annotations

import errno
import logging
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from meshcore import _files
from meshcore._files import (
    TEMP_PREFIX,
    atomic_create,
    atomic_write,
    ensure_private_dir,
    file_lock,
    fsync_dir,
    os_errors_as,
    read_text,
    remove_stale_temp_files,
    write_if_changed,
    write_temp,
)
from meshcore.errors import AgentError


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def temp_files(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))


@pytest.fixture
def loose_umask():
    """A permissive umask, so the modes asserted below come from the helpers, not from the umask."""
    old = os.umask(0o000)
    yield
    os.umask(old)


# --- atomic_write --------------------------------------------------------------------------------


def test_atomic_write_creates_a_private_file(tmp_path, loose_umask):
    path = tmp_path / "state.json"
    atomic_write(path, b"one")
    assert path.read_bytes() == b"one"
    assert mode_of(path) == 0o600
    assert temp_files(tmp_path) == []


def test_atomic_write_accepts_text_and_an_explicit_mode(tmp_path, loose_umask):
    path = tmp_path / "bundle.pem"
    atomic_write(str(path), "caf\u00e9\n", mode=0o644)
    assert path.read_bytes() == "caf\u00e9\n".encode()
    assert mode_of(path) == 0o644


def test_atomic_write_replaces_content_and_resets_mode(tmp_path):
    path = tmp_path / "f"
    path.write_text("old")
    os.chmod(path, 0o666)
    atomic_write(path, "new")
    assert path.read_text() == "new"
    assert mode_of(path) == 0o600


def test_failed_write_leaves_the_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    atomic_write(path, "old")

    def broken_fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="No space left"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert temp_files(tmp_path) == []


def test_failed_rename_leaves_the_old_content_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "f"
    atomic_write(path, "old")
    seen = []

    def broken_replace(src, dst):
        seen.append(Path(src).name)
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_files.os, "replace", broken_replace)
    with pytest.raises(OSError, match="I/O error"):
        atomic_write(path, "new")
    assert path.read_text() == "old"
    assert temp_files(tmp_path) == []
    # the temporary file lived next to the target, under the name remove_stale_temp_files knows
    assert seen and seen[0].startswith(f"{TEMP_PREFIX}f.")


def test_atomic_write_syncs_the_directory_after_the_rename(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr(_files, "fsync_dir", lambda d: synced.append((Path(d), (Path(d) / "f").exists())))
    atomic_write(tmp_path / "f", "x")
    assert synced == [(tmp_path, True)]


def test_atomic_write_does_not_create_the_directory(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "f", "x")
    assert not (tmp_path / "missing").exists()


def test_fsync_dir_tolerates_filesystems_that_cannot_sync_directories(tmp_path, monkeypatch):
    def unsupported(fd):
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(_files.os, "fsync", unsupported)
    fsync_dir(tmp_path)  # no error

    def broken(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(_files.os, "fsync", broken)
    with pytest.raises(OSError, match="I/O error"):
        fsync_dir(tmp_path)


# --- atomic_create -------------------------------------------------------------------------------


def test_atomic_create_writes_a_new_private_file(tmp_path, loose_umask):
    path = tmp_path / "kek"
    atomic_create(path, b"secret\n")
    assert path.read_bytes() == b"secret\n"
    assert mode_of(path) == 0o600
    assert temp_files(tmp_path) == []


def test_atomic_create_refuses_an_existing_file(tmp_path):
    path = tmp_path / "kek"
    path.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        atomic_create(path, b"other")
    assert path.read_bytes() == b"precious"
    assert temp_files(tmp_path) == []


# --- ensure_private_dir --------------------------------------------------------------------------


def test_ensure_private_dir_creates_parents_and_a_0700_directory(tmp_path, loose_umask):
    path = tmp_path / "a" / "b" / "state"
    ensure_private_dir(path)
    assert path.is_dir()
    assert mode_of(path) == 0o700
    ensure_private_dir(path)  # idempotent
    assert mode_of(path) == 0o700


def test_ensure_private_dir_tightens_an_open_directory_with_a_warning(tmp_path, caplog):
    path = tmp_path / "state"
    path.mkdir()
    os.chmod(path, 0o755)
    with caplog.at_level(logging.WARNING, logger="meshcore._files"):
        ensure_private_dir(path)
    assert mode_of(path) == 0o700
    assert "tightening permissions" in caplog.text


def test_ensure_private_dir_sets_exactly_the_mode_asked(tmp_path, caplog):
    path = tmp_path / "state"
    path.mkdir(mode=0o500)
    with caplog.at_level(logging.WARNING, logger="meshcore._files"):
        ensure_private_dir(path)  # owner could not write: fixed, nothing was exposed so no warning
    assert mode_of(path) == 0o700
    assert "tightening" not in caplog.text
    ensure_private_dir(path, mode=0o750)
    assert mode_of(path) == 0o750


# --- write_if_changed / read_text ----------------------------------------------------------------


def test_write_if_changed_reports_whether_it_wrote(tmp_path, loose_umask):
    path = tmp_path / "status.json"
    assert write_if_changed(path, "{}\n", 0o644) is True
    assert mode_of(path) == 0o644
    inode = path.stat().st_ino
    assert write_if_changed(path, "{}\n", 0o644) is False
    assert write_if_changed(path, b"{}\n", 0o644) is False  # same bytes, given as bytes
    assert path.stat().st_ino == inode  # not rewritten
    assert write_if_changed(path, '{"a": 1}\n', 0o644) is True
    assert path.read_text() == '{"a": 1}\n'
    assert path.stat().st_ino != inode


def test_write_if_changed_fixes_the_mode_without_rewriting(tmp_path):
    path = tmp_path / "secret.json"
    write_if_changed(path, "x")
    os.chmod(path, 0o644)
    inode = path.stat().st_ino
    assert write_if_changed(path, "x") is False
    assert mode_of(path) == 0o600
    assert path.stat().st_ino == inode


def test_read_text(tmp_path):
    assert read_text(tmp_path / "missing") is None
    (tmp_path / "f").write_text("hello")
    assert read_text(tmp_path / "f") == "hello"
    with pytest.raises(IsADirectoryError):
        read_text(tmp_path)


# --- remove_stale_temp_files ---------------------------------------------------------------------


def test_remove_stale_temp_files_removes_what_a_crashed_write_left(tmp_path):
    leftover = write_temp(tmp_path / "node.key", "half")  # what a crash between write and rename leaves
    (tmp_path / "node.key").write_text("keep")
    (tmp_path / ".lock").write_text("")
    (tmp_path / f"{TEMP_PREFIX}dir").mkdir()
    assert remove_stale_temp_files(tmp_path) == [leftover.name]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", f"{TEMP_PREFIX}dir", "node.key"]
    assert remove_stale_temp_files(tmp_path / "missing") == []


# --- file_lock -----------------------------------------------------------------------------------


def test_file_lock_creates_a_private_lock_file(tmp_path, loose_umask):
    with file_lock(tmp_path / ".lock"):
        pass
    assert mode_of(tmp_path / ".lock") == 0o600


def test_file_lock_excludes_another_thread(tmp_path):
    lock = tmp_path / ".lock"
    events: list[str] = []
    holding = threading.Event()

    def other() -> None:
        holding.wait()
        with file_lock(lock):
            events.append("other")

    t = threading.Thread(target=other)
    t.start()
    with file_lock(lock):
        holding.set()
        time.sleep(0.2)  # the other thread is blocked in flock meanwhile
        events.append("first-done")
    t.join(5)
    assert not t.is_alive()
    assert events == ["first-done", "other"]


_TRY_LOCK = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    print("busy")
else:
    print("acquired")
"""


def test_file_lock_excludes_another_process(tmp_path):
    lock = tmp_path / ".lock"

    def try_lock() -> str:
        return subprocess.run([sys.executable, "-c", _TRY_LOCK, str(lock)], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()

    with file_lock(lock):
        assert try_lock() == "busy"
    assert try_lock() == "acquired"


# --- error translation ---------------------------------------------------------------------------


def test_os_errors_as_translates_and_chains(tmp_path):
    with pytest.raises(AgentError, match=r"^cannot write x: .*No such file.*; check it$") as info:
        with os_errors_as(AgentError, "cannot write x", "check it"):
            atomic_write(tmp_path / "missing" / "f", "x")
    assert isinstance(info.value.__cause__, FileNotFoundError)
    with os_errors_as(AgentError, "unused"):
        pass


def test_agent_reports_write_failures_as_agent_errors(tmp_path):
    # the agent loop survives MeshErrors (e.g. a full disk), not bare OSErrors
    from meshcore.agent.secrets import SecretsDirectory, validation_context_secret
    from meshcore.agent.status import write_status

    with pytest.raises(AgentError, match="cannot write .*status.json"):
        write_status(tmp_path / "missing", {})
    with pytest.raises(AgentError, match="cannot write"):
        SecretsDirectory(tmp_path / "missing").write(validation_context_secret("bundle", "pem"))
