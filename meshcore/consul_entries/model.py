"""What the compiler takes and gives: config entries, options, findings, the compiled set (pure data)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from ..naming import DEFAULT_TRUST_DOMAIN

Severity = Literal["unsupported", "overridden", "invalid", "note"]
DefaultPolicy = Literal["allow", "deny"]
ORIGIN_LABEL = "mesh.io/origin"
ORIGIN = "consul"
ENTRY_LABEL = "mesh.io/consul-entry"  # "<kind>.<name>" of the entry a resource was compiled from
ENTRY_KINDS = ("service-intentions", "service-defaults", "proxy-defaults", "service-resolver",
               "service-splitter", "service-router")


@dataclass(frozen=True)
class ConfigEntry:
    """One Consul config entry as Consul returns it (keys canonical: see :func:`normalize_entry`)."""

    kind: str
    name: str
    body: Mapping[str, Any]
    source: str = "consul"  # where it was read: "consul" or a file name

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def get(self, key: str, default: Any = None) -> Any:
        return self.body.get(key, default)


@dataclass(frozen=True)
class Finding:
    """Something of an entry meshcore does not do as written: the entry, the field path, what and why."""

    entry: str  # "<kind>/<name>"
    field: str  # "Routes[0].Destination.PrefixRewrite" ("" for the whole entry)
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = f"{self.entry} {self.field}".strip()
        return f"{where}: {self.severity}: {self.message}"

    def to_json(self) -> dict[str, str]:
        return {"entry": self.entry, "field": self.field, "severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class CatalogFacts:
    """What compilation needs to know of the catalog (pure data the caller reads from it)."""

    identities: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # service -> (ns, sa)
    protocols: Mapping[str, frozenset[str]] = field(default_factory=dict)  # service -> its instances' protocols
    declared: Mapping[str, frozenset[str]] = field(default_factory=dict)  # service -> meta protocol values set
    undeclared: frozenset[str] = frozenset()  # services with an instance without meta protocol
    # service -> ((upstream, "upstream" | "proxy"), ...): upstreams whose mesh gateway mode a registration sets
    gateway_scopes: Mapping[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(sorted(set(self.identities) | set(self.protocols)))

    @classmethod
    def of(cls, catalog: Any) -> "CatalogFacts":
        """From a :class:`meshcore.catalog.model.Catalog` (None: nothing known)."""
        if catalog is None:
            return cls()
        names = sorted({i.service for i in catalog.instances})
        declared: dict[str, set[str]] = {}
        for i in catalog.instances:
            if "protocol" in dict(i.meta):
                declared.setdefault(i.service, set()).add(i.protocol)
        scopes: dict[str, set[tuple[str, str]]] = {}
        for i in catalog.instances:
            for u in i.upstreams:
                scope = u.mesh_gateway_scope or ("upstream" if u.mesh_gateway else "")
                if scope in ("upstream", "proxy"):
                    scopes.setdefault(i.service, set()).add((u.destination_name, scope))
        return cls(identities={s: catalog.identities_of(s) for s in names},
                   protocols={s: catalog.protocols_of(s) for s in names},
                   declared={s: frozenset(v) for s, v in declared.items()},
                   undeclared=frozenset(i.service for i in catalog.instances if "protocol" not in dict(i.meta)),
                   gateway_scopes={s: tuple(sorted(v)) for s, v in scopes.items()})

    def effective_protocols(self, service: str, entry_protocol: str) -> frozenset[str] | None:
        """``service``'s protocols once ``entry_protocol`` ("" none) applies to its instances without meta
        ``protocol`` (None: not in the catalog)."""
        if service not in self.protocols:
            return None
        if not self.declared and not self.undeclared:  # facts built by hand: the protocols as given
            return self.protocols[service]
        out = set(self.declared.get(service, ()))
        if service in self.undeclared:
            out.add(entry_protocol or "http")
        return frozenset(out)

    def fingerprint(self) -> str:
        return json.dumps([sorted((k, list(v)) for k, v in self.identities.items()),
                           sorted((k, sorted(v)) for k, v in self.protocols.items()),
                           sorted((k, sorted(v)) for k, v in self.declared.items()), sorted(self.undeclared),
                           sorted((k, list(v)) for k, v in self.gateway_scopes.items())])


@dataclass(frozen=True)
class CompileOptions:
    trust_domain: str = DEFAULT_TRUST_DOMAIN
    default_intention: DefaultPolicy = "allow"  # Consul's ACL default policy (allow with ACLs off)
    datacenter: str = "dc1"  # the Consul datacenter the entries were read from (Failover.Datacenters)
    catalog: CatalogFacts = field(default_factory=CatalogFacts)


@dataclass(frozen=True)
class Compiled:
    resources: tuple[Any, ...]  # meshcore Resources, validated like any applied document
    findings: tuple[Finding, ...]

    def to_json(self) -> dict[str, Any]:
        return {"resources": [r.to_document() for r in self.resources],
                "findings": [f.to_json() for f in self.findings]}
