"""Skip rewriting a file the agent's loop renders every tick while neither its input nor the file changed.

The loop renders Envoy's bootstrap and the xDS endpoints file every refresh interval and writes them only
when their bytes differ (:func:`meshcore._files.write_if_changed`), which still serialized the JSON and
read the file back each tick: most of an idle agent's loop CPU. :class:`UnchangedFile` remembers the input
of the last write and the file's identity after it (inode, size, mtime, mode): while both are the same, the
tick is a comparison and one ``stat``. A file replaced, edited, removed or chmod-ed by anyone else is noticed
on the next tick, as before, and rewritten.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def _identity(path: Path) -> tuple[int, int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, st.st_mode


class UnchangedFile:
    """What was last written to ``path`` (see the module docstring)."""

    def __init__(self, path: Path):
        self.path = path
        self._input: Any = None
        self._identity: tuple[int, int, int, int] | None = None

    def holds(self, rendered_from: Any) -> bool:
        """Whether the file still holds what :meth:`wrote` recorded for this same input."""
        if self._identity is None or rendered_from != self._input:
            return False
        return _identity(self.path) == self._identity

    def wrote(self, rendered_from: Any) -> None:
        """The file now holds what ``rendered_from`` renders to (written, or found already right)."""
        self._input, self._identity = rendered_from, _identity(self.path)

    def forget(self) -> None:
        self._input, self._identity = None, None
