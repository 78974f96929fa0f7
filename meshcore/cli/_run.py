"""Running a parsed meshctl command: one place for exit codes and error printing."""

from __future__ import annotations

import sys

from ..errors import MeshError


def dispatch(args) -> int:
    """Run ``args.fn``; a MeshError (validation, API, ...) prints ``meshctl: <what>`` and exits 1; Ctrl-C 130."""
    try:
        return args.fn(args) or 0
    except MeshError as exc:
        print(f"meshctl: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
