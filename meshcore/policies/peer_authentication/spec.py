"""PeerAuthentication's typed spec: frozen dataclasses parsed from the validated document (parse, don't validate).

:func:`parse` turns a ``spec`` the schema accepted (:mod:`.schema`) into a :class:`PeerAuthenticationSpec`;
an omitted ``mtls.mode`` is ``UNSET`` (inherit), as in Istio. :func:`.schema.effective_mtls` reads only these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from meshcore.resources.model import Resource

STRICT, PERMISSIVE, DISABLE, UNSET = "STRICT", "PERMISSIVE", "DISABLE", "UNSET"
MODES = (STRICT, PERMISSIVE, DISABLE, UNSET)
DEFAULT_MODE = STRICT


@dataclass(frozen=True)
class PeerAuthenticationSpec:
    match_labels: tuple[tuple[str, str], ...] = ()  # empty: every workload of the namespace (or of the mesh)
    mode: str = UNSET
    port_level: tuple[tuple[int, str], ...] = ()  # (workload port, mode), by port

    def selects(self, labels: Mapping[str, str]) -> bool:
        """Whether this policy has a selector and ``labels`` carry every pair of it."""
        return bool(self.match_labels) and all(labels.get(k) == v for k, v in self.match_labels)

    def port_mode(self, port: int) -> str | None:
        """The ``portLevelMtls`` mode written for ``port``, or None when the port has no entry."""
        return next((m for p, m in self.port_level if p == port), None)


def _mode(block: Any) -> str:
    """A policy's mode as written; omitted means UNSET, i.e. inherit."""
    if not isinstance(block, Mapping):
        return UNSET
    return block.get("mode") or UNSET


def parse(spec: Mapping[str, Any]) -> PeerAuthenticationSpec:
    """The typed spec of a PeerAuthentication whose ``spec`` the schema accepted."""
    selector = spec.get("selector") or {}
    return PeerAuthenticationSpec(
        match_labels=tuple(sorted((selector.get("matchLabels") or {}).items())),
        mode=_mode(spec.get("mtls")),
        port_level=tuple(sorted((int(port), _mode(block)) for port, block in (spec.get("portLevelMtls") or {}).items())),
    )


def spec_of(policy: Resource) -> PeerAuthenticationSpec:
    """The typed spec of a PeerAuthentication resource (parsed once, kept on the resource)."""
    typed: PeerAuthenticationSpec = policy.typed
    return typed


__all__ = ["PeerAuthenticationSpec", "STRICT", "PERMISSIVE", "DISABLE", "UNSET", "MODES", "DEFAULT_MODE",
           "parse", "spec_of"]
