"""Wire contracts of the agent API (``/v1/agent/...``): one dataclass per request and response body.

The control plane (:mod:`meshcore.controlplane.agent_api`) builds responses with ``to_json()`` and
reads requests with ``from_json()``; the agent's client (:mod:`meshcore.agent.client`) does the
opposite. Both sides therefore agree on field names by construction.

Requests are checked contracts (:class:`~meshcore.api._wire.Wire`): a missing or ill-typed field is a
400 naming it (``body.csr: expected a string, got a number``). Responses are read strictly by the
client: a missing required field raises :class:`~meshcore.errors.AgentError` naming the call and the field.

Endpoints::

    POST /v1/agent/join        JoinRequest  -> IssuedIdentity   (no client certificate: a join token)
    POST /v1/agent/renew-node  CsrRequest   -> IssuedIdentity   (node certificate)
    POST /v1/agent/sign        CsrRequest   -> IssuedIdentity   (node certificate; a service's SVID)
    GET  /v1/agent/services                 -> NodeServices
         ?index=<NodeServices.index>&wait=60s  a blocking query: answered when the index moves (or after wait)
    GET  /v1/agent/bundle                   -> TrustBundle

Every authenticated call may carry ``X-Meshcore-Bundle-SHA256`` (:data:`BUNDLE_HEADER`): the
SHA-256 of the trust bundle the node has handed to Envoy (root rotation waits for it); and
``X-Meshcore-Federated-Bundles`` (:data:`FEDERATED_HEADER`): ``<trust domain>=<SHA-256 of its roots' PEM>`` for
each federated trust domain it has handed to Envoy, comma-separated, or ``none`` (``meshctl trust-bundle list`` shows
the agents still without an imported domain's current roots; rotate-ca.yml waits for it). An agent that sends no
such header (an older release) is left out of that list rather than holding it up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from meshcore.api._wire import Wire
from meshcore.errors import AgentError

BUNDLE_HEADER = "X-Meshcore-Bundle-SHA256"
FEDERATED_HEADER = "X-Meshcore-Federated-Bundles"


def federated_digest(bundles) -> str:
    """The :data:`FEDERATED_HEADER` value of ``(trust domain, roots PEM)`` pairs: sorted, ``td=sha256,...``; ``none``
    when there are none (an agent of this release always sends it; one that sends nothing is not tracked)."""
    import hashlib

    return ",".join(f"{td}={hashlib.sha256(pem.encode()).hexdigest()}" for td, pem in sorted(bundles)) or "none"


def parse_federated_digest(value: str) -> dict[str, str]:
    """:func:`federated_digest` read back (``{}`` for an empty or malformed value's unreadable parts)."""
    out = {}
    for part in (value or "").split(","):
        td, sep, sha = part.strip().partition("=")
        if sep and td and len(sha) == 64:
            out[td] = sha.lower()
    return out

JOIN = "/v1/agent/join"
RENEW_NODE = "/v1/agent/renew-node"
RECOVER = "/v1/agent/recover"  # no client certificate: proof of possession of the expired node key
SIGN = "/v1/agent/sign"
SERVICES = "/v1/agent/services"
BUNDLE = "/v1/agent/bundle"


def _str(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    return value if isinstance(value, str) else ""


def require_str(data: dict[str, Any], name: str, where: str) -> str:
    """``data[name]`` when it is a non-empty string, else :class:`AgentError` naming ``where`` and the field."""
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise AgentError(f"control plane {where} response: field {name!r} missing or not a string")
    return value


# --- requests ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class JoinRequest(Wire):
    """A new VM's first call: its node name, the one-time join token, a CSR for its node identity."""

    node: str
    token: str
    csr: str


@dataclass(frozen=True)
class RecoverRequest(Wire):
    """An agent whose node certificate expired: a CSR for a new key, and a proof made with the old key
    (``signature``: base64, over :func:`meshcore.ca.recovery.recovery_message` of ``timestamp``)."""

    node: str
    csr: str
    timestamp: str
    signature: str


@dataclass(frozen=True)
class CsrRequest(Wire):
    """A PEM CSR made on the VM (renew-node: the node identity; sign: one of its services')."""

    csr: str


# --- responses ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class CaInfo:
    """What an agent needs to follow a root rotation: the bundle to hold and the signing intermediate."""

    bundle_sha256: str = ""
    signer_key_id: str = ""
    phase: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"bundle_sha256": self.bundle_sha256, "signer_key_id": self.signer_key_id, "phase": self.phase}

    @classmethod
    def from_json(cls, data: Any) -> CaInfo:
        data = data if isinstance(data, dict) else {}
        return cls(bundle_sha256=_str(data, "bundle_sha256").lower(), signer_key_id=_str(data, "signer_key_id").lower(),
                   phase=_str(data, "phase"))


@dataclass(frozen=True)
class IssuedIdentity:
    """A certificate the control plane issued (join, renew-node, sign).

    ``certificate`` is the leaf, ``chain`` leaf + intermediate(s), ``bundle`` the trust anchors.
    """

    certificate: str
    chain: str
    bundle: str
    spiffe_id: str
    not_after: str
    trust_domain: str
    xds_address: str
    serial: str = ""
    ca: CaInfo = CaInfo()

    def to_json(self) -> dict[str, Any]:
        return {
            "certificate": self.certificate, "chain": self.chain, "bundle": self.bundle,
            "spiffe_id": self.spiffe_id, "serial": self.serial, "not_after": self.not_after,
            "trust_domain": self.trust_domain, "xds_address": self.xds_address, "ca": self.ca.to_json(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> IssuedIdentity:
        values = {name: require_str(data, name, where) for name in
                  ("certificate", "chain", "bundle", "spiffe_id", "not_after", "trust_domain")}
        return cls(xds_address=str(data.get("xds_address") or ""), serial=_str(data, "serial"),
                   ca=CaInfo.from_json(data.get("ca")), **values)


@dataclass(frozen=True)
class NodeService:
    """One service registered on this node, as the control plane sees it."""

    name: str
    id: str
    spiffe_id: str
    kind: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "id": self.id, "kind": self.kind, "spiffe_id": self.spiffe_id}

    @classmethod
    def from_json(cls, item: Any, where: str) -> NodeService:
        if not isinstance(item, dict):
            raise AgentError(f"{where} is not an object")
        name = require_str(item, "name", where)
        return cls(name=name, id=str(item.get("id") or name), spiffe_id=require_str(item, "spiffe_id", where),
                   kind=str(item.get("kind") or ""))


@dataclass(frozen=True)
class NodeServices:
    """``GET /v1/agent/services``: what runs on the calling node, and the CA state to follow."""

    node: str
    trust_domain: str
    xds_address: str
    services: tuple[NodeService, ...]
    ca: CaInfo = CaInfo()
    # Hash of all the agent follows (services, CA state, xDS address, federated bundles): send it back as
    # ?index= to wait for a change. "" from a control plane without blocking queries.
    index: str = ""

    @property
    def bundle_sha256(self) -> str:
        """The trust bundle the control plane wants every node to hold."""
        return self.ca.bundle_sha256

    @property
    def signer_key_id(self) -> str:
        """Key id of the intermediate signing now: certificates from another one renew early."""
        return self.ca.signer_key_id

    def to_json(self) -> dict[str, Any]:
        out = {"node": self.node, "trust_domain": self.trust_domain, "xds_address": self.xds_address,
               "ca": self.ca.to_json(), "services": [s.to_json() for s in self.services]}
        if self.index:
            out["index"] = self.index
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> NodeServices:
        raw = data.get("services")
        if not isinstance(raw, list):
            raise AgentError(f"{where}: response has no 'services' list")
        services = tuple(NodeService.from_json(item, f"{where} services[{i}]") for i, item in enumerate(raw))
        return cls(node=require_str(data, "node", where), trust_domain=require_str(data, "trust_domain", where),
                   xds_address=str(data.get("xds_address") or ""), services=services,
                   ca=CaInfo.from_json(data.get("ca")), index=_str(data, "index"))


@dataclass(frozen=True)
class TrustBundle:
    """``GET /v1/agent/bundle``: this trust domain's roots and, with federation, other domains' roots."""

    trust_domain: str
    bundle: str
    federated: tuple[tuple[str, str], ...] = ()  # other trust domains' roots: (trust_domain, PEM)
    bundle_sha256: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"trust_domain": self.trust_domain, "bundle": self.bundle, "bundle_sha256": self.bundle_sha256,
                # federation: each domain's roots, which Envoy checks that domain's peers against
                "federated_bundles": [{"trust_domain": td, "bundle": pem} for td, pem in self.federated]}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "bundle") -> TrustBundle:
        federated = tuple((require_str(f, "trust_domain", f"{where} federated_bundles"),
                           require_str(f, "bundle", f"{where} federated_bundles"))
                          for f in data.get("federated_bundles") or [] if isinstance(f, dict))
        return cls(trust_domain=require_str(data, "trust_domain", where), bundle=require_str(data, "bundle", where),
                   federated=federated, bundle_sha256=_str(data, "bundle_sha256").lower())


__all__ = [
    "BUNDLE",
    "BUNDLE_HEADER",
    "FEDERATED_HEADER",
    "federated_digest",
    "parse_federated_digest",
    "JOIN",
    "RECOVER",
    "RENEW_NODE",
    "SERVICES",
    "SIGN",
    "CaInfo",
    "CsrRequest",
    "IssuedIdentity",
    "JoinRequest",
    "NodeService",
    "NodeServices",
    "RecoverRequest",
    "TrustBundle",
    "require_str",
]
