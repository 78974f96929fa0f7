"""The operator API's wire contract: request and response types shared by the control plane
(:mod:`meshcore.controlplane.operator_api`) and ``meshctl`` (:mod:`meshcore.cli`).

Standard library only: ``meshctl`` imports this without the control plane's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..errors import BadRequest


def resolve_kind(text: str, known: Iterable[str]) -> str:
    """The kind ``text`` names, case-insensitively and in the plural too (``virtualservices``);
    :class:`BadRequest` listing the known kinds otherwise."""
    names = list(known)
    wanted = text.lower()
    for kind in names:
        if kind.lower() in (wanted, wanted.rstrip("s")):
            return kind
    raise BadRequest(f"unknown kind {text!r}; known kinds: {', '.join(names)}")


__all__ = ["resolve_kind"]
