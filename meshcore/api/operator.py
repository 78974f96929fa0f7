"""The operator API's wire contract: request and response types shared by the control plane
(:mod:`meshcore.controlplane.operator_api`, the daemon's status view) and ``meshctl`` (:mod:`meshcore.cli`).

Each type is a frozen dataclass with ``to_json()`` and a checked ``from_json()`` (see :mod:`._wire`); the
JSON is what the API has always carried. Standard library only: ``meshctl`` imports this without the
control plane's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import BadRequest
from ._wire import Wire, omit_empty

# --- GET /v1/status, GET /v1/proxies -------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus(Wire):
    """A mesh service instance on a node: its mTLS inbound listener is ``inbound`` (host:port)."""

    name: str
    id: str
    spiffe_id: str
    healthy: bool
    inbound: str = ""


@dataclass(frozen=True)
class GatewayStatus(Wire):
    """A gateway instance on a node (no inbound listener): its ``kind`` and the listeners it opens."""

    name: str
    id: str
    spiffe_id: str
    healthy: bool
    kind: str
    listeners: tuple[str, ...] = ()


@dataclass(frozen=True)
class ProxyStatus(Wire):
    """One node's proxy as the control plane sees it."""

    node: str
    services: tuple[ServiceStatus, ...] = ()
    gateways: tuple[GatewayStatus, ...] = ()
    admin: str = ""  # Envoy admin host:port
    metrics: str = ""  # the agent's merged metrics URL
    connected: bool = False
    synced: bool = False  # ACKed every type's current version
    version: str = ""
    error: str = ""  # why its last build was not published
    access_log: str = ""  # "", "stdout" or a file

    @property
    def entries(self) -> tuple[ServiceStatus | GatewayStatus, ...]:
        return self.services + self.gateways


@dataclass(frozen=True)
class ControlPlaneStatus(Wire):
    xds: str = ""
    api: str = ""
    http: str = ""
    https: str = omit_empty()  # only when the operator API also serves TLS
    trust_domain: str = ""
    snapshot: str = ""  # the mesh snapshot's hash
    catalog_error: str = ""
    store_error: str = ""


@dataclass(frozen=True)
class StatusResponse(Wire):
    control_plane: ControlPlaneStatus
    proxies: tuple[ProxyStatus, ...] = ()


# --- /v1/resources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceFile(Wire):
    """One file of YAML documents as the operator wrote it (validated on the server with this name)."""

    name: str = "<api>"
    content: str = ""


@dataclass(frozen=True)
class ApplyRequest(Wire):
    """``POST /v1/resources`` (and ``/v1/resources/dry-run``): all or nothing."""

    files: tuple[ResourceFile, ...] = ()
    dry_run: bool = omit_empty(False)  # validate only

    def checked(self) -> ApplyRequest:
        if not self.files:
            raise BadRequest('body needs "files": [{"name": ..., "content": ...}]')
        return self


@dataclass(frozen=True)
class ApplyResult(Wire):
    resource: str  # Kind/namespace/name
    result: str  # created, configured, unchanged


@dataclass(frozen=True)
class ApplyResponse(Wire):
    applied: tuple[ApplyResult, ...] = ()
    valid: tuple[str, ...] = omit_empty(())  # with dry_run: the resources that would be applied
    dry_run: bool = omit_empty(False)


@dataclass(frozen=True)
class DeleteRequest(Wire):
    """``POST /v1/resources/delete``: by ``keys`` (Kind/namespace/name) or by the resources in ``files``."""

    keys: tuple[str, ...] = omit_empty(())
    files: tuple[ResourceFile, ...] = omit_empty(())

    def key_parts(self) -> list[tuple[str, str, str]]:
        out = []
        for k in self.keys:
            parts = k.split("/")
            if len(parts) != 3:
                raise BadRequest(f"key {k!r} must be Kind/namespace/name")
            out.append((parts[0], parts[1], parts[2]))
        return out


@dataclass(frozen=True)
class DeleteResponse(Wire):
    deleted: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceQuery:
    """``GET /v1/resources?kind=&name=``: the stored documents, optionally of one kind (as typed: the
    server resolves plurals and case) and one name."""

    kind: str = ""
    name: str = ""

    def to_query(self) -> dict[str, str]:
        return {k: v for k, v in (("kind", self.kind), ("name", self.name)) if v}

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ResourceQuery:
        return cls(kind=query.get("kind", ""), name=query.get("name", ""))


def resolve_kind(text: str, known: Iterable[str]) -> str:
    """The kind ``text`` names, case-insensitively and in the plural too (``virtualservices``);
    :class:`BadRequest` listing the known kinds otherwise."""
    names = list(known)
    wanted = text.lower()
    for kind in names:
        if kind.lower() in (wanted, wanted.rstrip("s")):
            return kind
    raise BadRequest(f"unknown kind {text!r}; known kinds: {', '.join(names)}")


# --- /v1/proxies/{node}/config, /v1/tokens, /v1/ca/rotate ------------------------------------------------


@dataclass(frozen=True)
class ProxyConfigResponse(Wire):
    node: str
    version: str | None = None
    resources: dict = field(default_factory=dict)  # short type name -> [resource as protobuf JSON]


@dataclass(frozen=True)
class TokenRequest(Wire):
    """``POST /v1/tokens``: a one-time join token scoped to ``node``, valid for ``ttl`` (1s..7d)."""

    node: str = ""
    ttl: str = "1h"


@dataclass(frozen=True)
class TokenResponse(Wire):
    node: str
    token: str
    ttl_seconds: int
    node_spiffe_id: str


@dataclass(frozen=True)
class CaRotateRequest(Wire):
    """``POST /v1/ca/rotate``: ``{}`` starts a root rotation, ``finish`` retires the old root; ``force``
    skips the safety wait."""

    finish: bool = False
    force: bool = False


__all__ = [
    "ApplyRequest", "ApplyResponse", "ApplyResult", "CaRotateRequest", "ControlPlaneStatus", "DeleteRequest",
    "DeleteResponse", "GatewayStatus", "ProxyConfigResponse", "ProxyStatus", "ResourceFile", "ResourceQuery",
    "ServiceStatus", "StatusResponse", "TokenRequest", "TokenResponse", "resolve_kind",
]
