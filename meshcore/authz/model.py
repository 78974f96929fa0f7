"""What the evaluator is asked about (:class:`Request`) and what it answers (:class:`Decision`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

from ..naming import principal_of
from .patterns import namespace_of_principal


@dataclass(frozen=True)
class Request:
    """One request as the destination's inbound Envoy sees it.

    ``principal`` is the caller's SPIFFE ID without its scheme (``cluster.local/ns/default/sa/x``; a
    ``spiffe://`` prefix is accepted and stripped), None for a plaintext caller. ``source_namespace``
    defaults to the namespace inside the principal, which is what Envoy matches. ``port`` is the
    destination workload's own port (the one ``ports`` and ``destination.port`` name). ``protocol`` is
    the destination's (``http`` or ``tcp``; TCP policies ignore HTTP attributes as Istio does).
    Header names are case-insensitive. ``jwt`` is the payload of the request's token *after* RequestAuthentication
    verified it (its claims: ``iss``, ``sub``, ``aud``, ...), None when the request carried no valid token.
    ``remote_ip`` is the original client's address as an ingress gateway reads it from X-Forwarded-For
    (``remoteIpBlocks``); None: the peer's (``source_ip``). ``destination_ip`` is the address the caller
    connected to (the workload's listener address, ``destination.ip``); ``sni`` the server name its TLS handshake
    asked for (``connection.sni``: a mesh caller sends the service's name); None when unknown (never matches).
    """

    principal: str | None = None
    source_ip: str | None = None
    method: str = "GET"
    path: str = "/"
    host: str = ""
    port: int = 0
    headers: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str | None = None
    protocol: str = "http"
    jwt: Mapping[str, Any] | None = None
    remote_ip: str | None = None  # the original client (X-Forwarded-For at an ingress gateway); None: source_ip
    destination_ip: str | None = None
    sni: str | None = None

    def __post_init__(self) -> None:
        if self.principal is not None:
            object.__setattr__(self, "principal", principal_of(self.principal))
        if self.source_namespace is None:
            object.__setattr__(self, "source_namespace", namespace_of_principal(self.principal))
        object.__setattr__(self, "headers", {str(k).lower(): str(v) for k, v in dict(self.headers).items()})


@dataclass(frozen=True)
class Decision:
    """The verdict and why.

    ``action`` is the action of the policy kind that decided (``DENY``: a DENY rule matched; ``ALLOW``:
    an ALLOW rule matched, or ALLOW policies select the workload and none matched), None when no policy
    decided (allowed by default). ``policy`` (``ns/name``) and ``rule_index`` name the matching rule,
    None when no rule matched. ``audit`` lists the AUDIT rules (``ns/name[i]``) that matched; they never
    change the verdict. ``dry_run`` says what the dry-run policies selecting the workload (annotation
    ``istio.io/dry-run`` or ``mesh.io/dry-run: "true"``) would have decided on their own (Envoy counts the same in
    its shadow-rule stats); None when none selects it. They never change the verdict either.
    """

    allowed: bool
    action: str | None
    policy: str | None
    rule_index: int | None
    reason: str
    audit: tuple[str, ...] = ()
    dry_run: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["audit"] = list(self.audit)
        return data


__all__ = ["Request", "Decision"]
