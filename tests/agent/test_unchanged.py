"""UnchangedFile: an idle loop tick skips re-rendering a file only while neither its input nor the file changed."""

from __future__ import annotations

import os

from meshcore._files import atomic_write
from meshcore.agent._unchanged import UnchangedFile


def test_holds_only_the_same_input_in_the_same_file(tmp_path):
    path = tmp_path / "bootstrap.json"
    f = UnchangedFile(path)
    assert not f.holds({"a": 1})  # nothing recorded yet
    path.write_text("one")
    f.wrote({"a": 1})
    assert f.holds({"a": 1})
    assert not f.holds({"a": 2})


def test_a_file_changed_by_anyone_else_is_noticed(tmp_path):
    path = tmp_path / "bootstrap.json"
    path.write_text("one")
    f = UnchangedFile(path)
    f.wrote("input")
    atomic_write(path, b"one")  # replaced (another inode), same bytes
    assert not f.holds("input")
    f.wrote("input")
    with open(path, "a") as fh:  # edited in place
        fh.write("!")
    assert not f.holds("input")
    f.wrote("input")
    os.chmod(path, 0o640 if (path.stat().st_mode & 0o777) != 0o640 else 0o644)
    assert not f.holds("input")
    f.wrote("input")
    path.unlink()
    assert not f.holds("input")


def test_a_missing_file_is_never_held(tmp_path):
    f = UnchangedFile(tmp_path / "absent.json")
    f.wrote("input")
    assert not f.holds("input")
