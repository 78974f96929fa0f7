"""Durations as operators write them: ``90s``, ``15m``, ``24h``, ``1h30m``, ``500ms``."""

from __future__ import annotations

import re
from datetime import timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str | int | float) -> timedelta:
    """Parse a duration; a bare number means seconds. Raises ValueError saying what is accepted."""
    if isinstance(text, (int, float)):
        return timedelta(seconds=float(text))
    s = str(text).strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return timedelta(seconds=float(s))
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"{text!r} is not a duration; write it like 500ms, 30s, 15m, 24h or 1h30m")
    return timedelta(seconds=total)


def format_duration(td: timedelta) -> str:
    secs = td.total_seconds()
    if secs < 1:
        return f"{int(secs * 1000)}ms"
    out, rest = "", int(secs)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if rest >= size:
            out += f"{rest // size}{unit}"
            rest %= size
    return out
