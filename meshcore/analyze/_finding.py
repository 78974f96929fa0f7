"""A finding of ``meshctl analyze``: a code, a severity, where (resource and field path), what, and what to do."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

ERROR, WARNING = "error", "warning"


@dataclass(frozen=True)
class Finding:
    """One problem. ``resource`` is ``Kind/namespace/name``; ``path`` a field path in it (``spec.http[0].route``)."""

    code: str  # MC0101 ...: stable, documented in :data:`meshcore.analyze.CODES`
    severity: str  # ERROR | WARNING
    resource: str
    path: str
    message: str
    suggestion: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = f"{self.severity.upper()} {self.code} {self.resource}"
        text += f" {self.path}: " if self.path else ": "
        text += self.message
        return text + (f" ({self.suggestion})" if self.suggestion else "")


__all__ = ["ERROR", "WARNING", "Finding"]
