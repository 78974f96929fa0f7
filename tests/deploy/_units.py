"""A small reader for systemd unit files, enough to assert what a unit sets.

systemd allows a key more than once (``SystemCallFilter=`` twice, an empty assignment that resets
a list), so a unit is kept as ordered ``(key, value)`` pairs per section, not as a dict.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Unit:
    path: Path
    sections: dict[str, list[tuple[str, str]]] = field(default_factory=dict)

    def all(self, section: str, key: str) -> list[str]:
        """Every value assigned to ``key`` in ``section``, in file order."""
        return [v for k, v in self.sections.get(section, []) if k == key]

    def get(self, section: str, key: str) -> str | None:
        """The value in force: the last assignment, as systemd reads single-valued keys."""
        values = self.all(section, key)
        return values[-1] if values else None

    def has(self, section: str, key: str) -> bool:
        return bool(self.all(section, key))


def parse_unit(path: Path) -> Unit:
    """Parse ``path``; raises ValueError naming the line for anything systemd would not accept."""
    unit = Unit(path)
    section: str | None = None
    pending = ""
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            unit.sections.setdefault(section, [])
            continue
        if section is None or "=" not in line:
            raise ValueError(f"{path}:{number}: not a key=value line inside a section: {raw!r}")
        key, _, value = line.partition("=")
        unit.sections[section].append((key.strip(), value.strip()))
    return unit


def parse_seconds(value: str) -> float:
    """systemd time spans as these units write them: ``30``, ``30s``, ``5min``, ``2h``."""
    text = value.strip()
    for suffix, factor in (("min", 60.0), ("ms", 0.001), ("s", 1.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def parse_bytes(value: str) -> int:
    """``512M``, ``2G``, ``1024`` -> bytes (systemd's base-1024 suffixes)."""
    text = value.strip()
    factors = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    if text[-1:] in factors:
        return int(float(text[:-1]) * factors[text[-1]])
    return int(text)
