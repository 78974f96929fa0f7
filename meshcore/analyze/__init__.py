"""``meshctl analyze``: catalog-aware analysis of mesh resources, like ``istioctl analyze`` (pure checks).

Public API::

    analyze(resources, catalog) -> list[Finding]     # every check of CHECKS, errors first
    Finding(code, severity, resource, path, message, suggestion)

The codes and what each means are in :mod:`meshcore.analyze.checks`.
"""

from ._finding import ERROR, WARNING, Finding
from .checks import CHECKS, analyze

__all__ = ["CHECKS", "ERROR", "WARNING", "Finding", "analyze"]
