"""A full disk names the file it could not write (issue 12, finding 15): a write or fsync error carries no file
name of its own, so the message read ``cannot write : No space left on device``."""

from __future__ import annotations

import errno
import os

import pytest

from meshcore import _files
from meshcore.controlplane._supervise import describe_failure
from meshcore.errors import StoreError
from meshcore.resources.dir_store import DirectoryStore
from meshcore.resources.loader import load_documents

from ..controlplane.test_watchers import GOOD as DOC  # a valid AuthorizationPolicy



class _FullDisk:
    """A file object over a real descriptor whose writes fail as on a full disk."""

    def __init__(self, fh):
        self.fh = fh

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.fh.close()

    def fileno(self):
        return self.fh.fileno()

    def write(self, data):
        raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_apply_names_the_resource_file(tmp_path, monkeypatch):
    store = DirectoryStore(tmp_path / "store")
    [res] = load_documents(DOC, "p.yaml")
    real = os.fdopen
    with monkeypatch.context() as m:
        m.setattr(os, "fdopen", lambda fd, mode="r": _FullDisk(real(fd, mode)))
        with pytest.raises(StoreError) as info:
            store.apply([res])
    message = str(info.value)
    assert f"cannot write {store.path_of(res.key)}: No space left on device" in message, message
    assert "apply failed, nothing was changed" in message and "cannot write :" not in message
    assert store.list() == []


def test_atomic_write_names_the_target_when_fsync_fails(tmp_path, monkeypatch):
    path = tmp_path / "serving.pem"

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_files.os, "fsync", full)
    with pytest.raises(OSError) as info:
        _files.atomic_write(path, "x")
    assert info.value.filename == str(path) and info.value.errno == errno.ENOSPC
    assert describe_failure(info.value) == f"No space left on device (file {path})"
