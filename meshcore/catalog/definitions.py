"""Consul service-definition files, as an operator writes them in ``/etc/consul.d/``.

One directory holds one node's agent configuration, in JSON or HCL files, merged in lexical file
order as Consul does. meshcore reads from it:

* node settings (Consul agent config keys): ``node_name``, ``advertise_addr`` (else ``bind_addr``),
  ``datacenter``, ``node_meta``. Every other agent key (``data_dir``, ``server``, ``ports``, ...)
  is ignored; later files override earlier ones, ``node_meta`` maps are merged key by key.
* services: a ``service { ... }`` block (HCL may repeat it) or a ``services = [ ... ]`` list, with
  Consul's snake_case keys (``name``, ``id``, ``port``, ``address``, ``tags``, ``meta``, ``kind``,
  ``check``/``checks``, ``connect { sidecar_service { port, address, proxy { local_service_address,
  local_service_port, upstreams, config } } }``). Keys also match ignoring case and underscores
  (``DestinationName``), as Consul's decoder accepts them. Unknown keys inside a service are errors.

Normalization follows Consul's documented defaults: ``id`` = ``name``; ``local_service_address`` =
``127.0.0.1``; ``local_service_port`` = the service ``port``; an upstream's ``local_bind_address`` =
``127.0.0.1``; a sidecar without ``port`` gets the lowest free port of 21000-21255 on its node
(Consul's ``sidecar_min_port``/``sidecar_max_port``), assigned in file order.

In the mesh are services with ``connect.sidecar_service``, ``kind = "ingress-gateway"`` services
(whose upstreams come from a ``proxy { upstreams = [...] }`` block on the service itself) and
``kind = "mesh-gateway"`` services (their ``port`` the LAN one; ``tagged_addresses { lan {address, port}
wan {address, port} }`` as in Consul, see docs/multi-dc.md). Other kinds (``terminating-gateway``,
``connect-proxy``...) are accepted, registered as written (without their ``proxy`` block), and are not in
the mesh. An upstream may name ``datacenter`` (or ``destination_peer``) and ``mesh_gateway { mode }``; a
sidecar's ``proxy { mesh_gateway { mode } }`` is the default for its upstreams.

Errors are :class:`~meshcore.errors.ValidationError`; each :class:`FieldError` names the file
(relative to the catalog root, e.g. ``vm1/productpage.hcl``) and the field path
(``service.connect.sidecar_service.proxy.upstreams[0].local_bind_port``).
"""

from __future__ import annotations

import ipaddress
import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path as FsPath
from typing import Any, Mapping, Sequence

from meshcore.errors import CatalogError, FieldError, ValidationError
from meshcore.naming import dns_label_problem
from meshcore.resources.schema import (
    INVALID,
    Bool,
    Context,
    DNSLabel,
    Duration,
    Enum,
    Int,
    IPAddress,
    ListOf,
    MapOf,
    Obj,
    Opaque,
    Path,
    Port,
    Required,
    Str,
    StrKey,
    type_name,
)

from .model import DEFAULT_DATACENTER, MESH_GATEWAY, MESH_GATEWAY_MODES, Node, ServiceInstance, Upstream

INGRESS_GATEWAY = "ingress-gateway"
SERVICE_KINDS = ("", "connect-proxy", INGRESS_GATEWAY, MESH_GATEWAY, "terminating-gateway", "api-gateway")
GATEWAY_KINDS = (INGRESS_GATEWAY, MESH_GATEWAY)  # their own proxy: in the mesh without a sidecar
SIDECAR_MIN_PORT = 21000
SIDECAR_MAX_PORT = 21255
DEFINITION_SUFFIXES = (".json", ".hcl")
LOCALHOST = "127.0.0.1"

# --- schema (structure); semantics are checked in _service_from ------------------------------

# Node and service names become SPIFFE ID segments, file names on the VM and log fields: DNS labels
# (the one rule: meshcore.naming.dns_label_problem), as Consul needs them to be discoverable by DNS.
SERVICE_NAME = DNSLabel()
SERVICE_ID = Str(min_len=1, max_len=253, pattern=r"[^\s/]+", pattern_hint="must not contain whitespace or '/'")
NODE_NAME = DNSLabel()
UPSTREAM_DESTINATION = Str(min_len=1, max_len=253, pattern=r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*",
                           pattern_hint="must be a service name (lowercase letters, digits and '-') or, for a host "
                                        "outside the mesh that a ServiceEntry declares, a DNS name")
DATACENTER = Str(min_len=1, pattern=r"[a-z0-9_-]+", pattern_hint="must be lowercase letters, digits, '-' and '_'")


class MetaKey(StrKey):
    """Consul meta keys: at most 128 ASCII letters, digits, '-' and '_'; the ``consul-`` prefix is reserved."""

    _re = re.compile(r"[A-Za-z0-9_-]{1,128}")

    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        key = super().check(key, path, ctx)
        if key is INVALID:
            return INVALID
        if not self._re.fullmatch(key):
            ctx.add(path, "meta keys must be 1-128 ASCII letters, digits, '-' or '_'")
            return INVALID
        if key.startswith("consul-"):
            ctx.add(path, 'meta keys starting with "consul-" are reserved by Consul')
            return INVALID
        return key


META = MapOf(Str(max_len=512), key=MetaKey(), max_items=64)


class NodeAddress(IPAddress):
    """``advertise_addr``/``bind_addr``: an IP literal (Consul's go-sockaddr templates cannot be resolved here)."""

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, str) and "{{" in value:
            ctx.add(path, "go-sockaddr templates are not supported by the file catalog; write the node's IP address")
            return INVALID
        return super().check(value, path, ctx)


CHECK = Obj(
    {
        "id": Str(min_len=1),
        "name": Str(min_len=1),
        "notes": Str(),
        "http": Str(min_len=1),
        "method": Str(min_len=1),
        "header": MapOf(ListOf(Str())),
        "tcp": Str(min_len=1),
        "grpc": Str(min_len=1),
        "grpc_use_tls": Bool(),
        "ttl": Duration(),
        "args": ListOf(Str(), min_items=1),
        "interval": Duration(),
        "timeout": Duration(),
        "status": Enum("passing", "warning", "critical"),
        "tls_skip_verify": Bool(),
        "tls_server_name": Str(min_len=1),
        "deregister_critical_service_after": Duration(),
        "success_before_passing": Int(0),
        "failures_before_critical": Int(0),
    },
    loose_keys=True,
)
_CHECK_TYPES = ("http", "tcp", "grpc", "ttl", "args")

MESH_GATEWAY_CONFIG = Obj({"mode": Enum(*(m for m in MESH_GATEWAY_MODES if m), "default")}, loose_keys=True)
TAGGED_ADDRESS = Obj({"address": Required(IPAddress()), "port": Required(Port())}, loose_keys=True)

UPSTREAM = Obj(
    {
        "destination_name": Required(UPSTREAM_DESTINATION),
        "destination_type": Enum("service"),
        "local_bind_port": Required(Port()),
        "local_bind_address": IPAddress(),
        "datacenter": DATACENTER,
        "destination_peer": DATACENTER,  # read as the datacenter of that name (docs/multi-dc.md)
        "mesh_gateway": MESH_GATEWAY_CONFIG,
    },
    loose_keys=True,
)

PROXY = Obj(
    {
        "local_service_address": Str(min_len=1),
        "local_service_port": Port(),
        "upstreams": ListOf(UPSTREAM),
        "config": Opaque(mapping=True),
        "mesh_gateway": MESH_GATEWAY_CONFIG,
    },
    loose_keys=True,
)

SIDECAR_SERVICE = Obj({"port": Port(), "address": Str(min_len=1), "proxy": PROXY}, loose_keys=True)

CONNECT = Obj({"sidecar_service": SIDECAR_SERVICE, "native": Bool()}, loose_keys=True)

SERVICE = Obj(
    {
        "name": Required(SERVICE_NAME),
        "id": SERVICE_ID,
        "port": Port(),
        "address": Str(min_len=1),
        "tags": ListOf(Str(min_len=1)),
        "meta": META,
        "kind": Enum(*SERVICE_KINDS),
        "check": CHECK,
        "checks": ListOf(CHECK),
        "connect": CONNECT,
        "proxy": Opaque(mapping=True),  # validated per kind in _service_from
        # accepted for compatibility with real /etc/consul.d files, not used by meshcore:
        "enable_tag_override": Bool(),
        "tagged_addresses": MapOf(TAGGED_ADDRESS),  # a mesh gateway's lan / wan (other kinds: registered as is)
        "weights": Opaque(mapping=True),
        "token": Str(),
        "namespace": Str(),
        "partition": Str(),
        "locality": Opaque(mapping=True),
        "socket_path": Str(),
    },
    loose_keys=True,
)

NODE_SETTINGS = Obj(
    {
        "node_name": NODE_NAME,
        "advertise_addr": NodeAddress(),
        "bind_addr": NodeAddress(),
        "datacenter": DATACENTER,
        "node_meta": META,
        "services": Opaque(),  # walked by hand, see parse_definition
    },
    allow_unknown=True,  # the rest of the agent configuration is not ours to judge
)


# --- model -------------------------------------------------------------------------------


_CHECK_PAYLOAD_KEYS = {
    "id": "CheckID",
    "name": "Name",
    "notes": "Notes",
    "http": "HTTP",
    "method": "Method",
    "header": "Header",
    "tcp": "TCP",
    "grpc": "GRPC",
    "grpc_use_tls": "GRPCUseTLS",
    "ttl": "TTL",
    "args": "Args",
    "interval": "Interval",
    "timeout": "Timeout",
    "status": "Status",
    "tls_skip_verify": "TLSSkipVerify",
    "tls_server_name": "TLSServerName",
    "deregister_critical_service_after": "DeregisterCriticalServiceAfter",
    "success_before_passing": "SuccessBeforePassing",
    "failures_before_critical": "FailuresBeforeCritical",
}


def _freeze(value: Any) -> Any:
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


@dataclass(frozen=True)
class CheckDefinition:
    """One health check as written (snake_case fields, frozen); ``kind`` is http, tcp, grpc, ttl or args."""

    fields: tuple[tuple[str, Any], ...]

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "CheckDefinition":
        return cls(tuple(sorted((k, _freeze(v)) for k, v in data.items())))

    def get(self, name: str, default: Any = None) -> Any:
        return dict(self.fields).get(name, default)

    @property
    def kind(self) -> str:
        return next((t for t in _CHECK_TYPES if self.get(t) is not None), "")

    def to_payload(self) -> dict[str, Any]:
        """Consul API shape (``CheckID``, ``HTTP``, ``Interval``, ``TTL``...)."""
        out: dict[str, Any] = {}
        for name, value in self.fields:
            if name == "header":
                value = {k: list(v) for k, v in value}
            elif name == "args":
                value = list(value)
            out[_CHECK_PAYLOAD_KEYS[name]] = value
        return out


@dataclass(frozen=True)
class ServiceDefinition:
    """One service from a definition file, normalized with Consul's defaults (see module doc).

    ``sidecar`` says whether ``connect.sidecar_service`` was given; ``sidecar_port`` is its port
    (None until :func:`build_node` assigns one when the file did not). ``upstreams`` are the
    sidecar's upstreams, or for an ingress gateway those of its own ``proxy`` block.
    """

    name: str
    id: str
    port: int | None = None
    address: str = ""
    tags: tuple[str, ...] = ()
    meta: tuple[tuple[str, str], ...] = ()
    kind: str = ""
    checks: tuple[CheckDefinition, ...] = ()
    sidecar: bool = False
    sidecar_port: int | None = None
    sidecar_address: str = ""
    local_service_address: str = LOCALHOST
    local_service_port: int | None = None
    upstreams: tuple[Upstream, ...] = ()
    tagged_addresses: tuple[tuple[str, str, int], ...] = ()  # (name, address, port), e.g. a mesh gateway's wan
    proxy_config: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)
    source: str = field(default="", compare=False)
    origin: str = field(default="service", compare=False)
    """Field path of this service inside ``source`` (``service``, ``services[2]``)."""

    @property
    def in_mesh(self) -> bool:
        return self.sidecar or self.kind in GATEWAY_KINDS

    @property
    def mesh_port(self) -> int | None:
        """The port this service's Envoy listens on for the mesh (sidecar port, or the gateway's own port)."""
        return self.port if self.kind in GATEWAY_KINDS else self.sidecar_port

    def tagged(self, name: str) -> tuple[str, int] | None:
        return next(((a, p) for n, a, p in self.tagged_addresses if n == name), None)

    def to_instance(self, node: "NodeDefinition") -> ServiceInstance | None:
        """The catalog instance on ``node``; None for a service that is not in the mesh.

        ``mesh_address`` is the sidecar's ``address`` (a gateway's own ``address``) if given, else
        the node address. Files carry no live health, so every instance is ``healthy``.
        """
        def instance(port: int, mesh_address: str, mesh_port: int,
                     local_service_address: str = "127.0.0.1", wan: tuple[str, int] = ("", 0)) -> ServiceInstance:
            return ServiceInstance(
                service=self.name, id=self.id, node=node.name, port=port, mesh_address=mesh_address,
                mesh_port=mesh_port, local_service_address=local_service_address, address=self.address,
                kind=self.kind, tags=self.tags, meta=self.meta, healthy=True, upstreams=self.upstreams,
                datacenter=node.datacenter, wan_address=wan[0], wan_port=wan[1],
            )

        if self.kind == MESH_GATEWAY:
            assert self.port is not None  # enforced when parsed
            lan = self.tagged("lan") or (self.address or node.address, self.port)
            return instance(self.port, lan[0], lan[1], wan=self.tagged("wan") or lan)
        if self.kind == INGRESS_GATEWAY:
            assert self.port is not None  # enforced when parsed
            return instance(self.port, self.address or node.address, self.port)
        if not self.sidecar:
            return None
        if self.sidecar_port is None:
            raise CatalogError(
                f"service {self.id!r} has no sidecar port yet; build definitions with build_node() so ports get assigned"
            )
        assert self.local_service_port is not None  # enforced when parsed
        return instance(self.local_service_port, self.sidecar_address or node.address, self.sidecar_port,
                        self.local_service_address)

    def _upstreams_payload(self) -> list[dict[str, Any]]:
        out = []
        for u in self.upstreams:
            item: dict[str, Any] = {
                "DestinationType": "service",
                "DestinationName": u.destination_name,
                "LocalBindPort": u.local_bind_port,
                "LocalBindAddress": u.local_bind_address,
            }
            if u.datacenter:
                item["Datacenter"] = u.datacenter
            if u.mesh_gateway and u.mesh_gateway_scope != "proxy":
                item["MeshGateway"] = {"Mode": u.mesh_gateway}
            out.append(item)
        return out

    def _proxy_mesh_gateway(self) -> dict[str, Any]:
        """The proxy-wide ``MeshGateway`` (registered as such, so config entries keep their place below it)."""
        modes = {u.mesh_gateway for u in self.upstreams if u.mesh_gateway_scope == "proxy"}
        return {"MeshGateway": {"Mode": modes.pop()}} if len(modes) == 1 else {}

    def to_agent_payload(self) -> dict[str, Any]:
        """The body for Consul's ``PUT /v1/agent/service/register`` (PascalCase, empty fields left out)."""
        p: dict[str, Any] = {"Name": self.name, "ID": self.id}
        if self.port is not None:
            p["Port"] = self.port
        if self.address:
            p["Address"] = self.address
        if self.tags:
            p["Tags"] = list(self.tags)
        if self.meta:
            p["Meta"] = dict(self.meta)
        if self.kind:
            p["Kind"] = self.kind
        if self.checks:
            p["Checks"] = [c.to_payload() for c in self.checks]
        if self.tagged_addresses:
            p["TaggedAddresses"] = {n: {"Address": a, "Port": port} for n, a, port in self.tagged_addresses}
        if self.kind == INGRESS_GATEWAY and (self.upstreams or self.proxy_config):
            proxy: dict[str, Any] = {}
            if self.upstreams:
                proxy["Upstreams"] = self._upstreams_payload()
            if self.proxy_config:
                proxy["Config"] = dict(self.proxy_config)
            p["Proxy"] = proxy
        if self.sidecar:
            proxy = {
                "LocalServiceAddress": self.local_service_address,
                "LocalServicePort": self.local_service_port,
                "Upstreams": self._upstreams_payload(),
                **self._proxy_mesh_gateway(),
            }
            if self.proxy_config:
                proxy["Config"] = dict(self.proxy_config)
            sidecar: dict[str, Any] = {"Proxy": proxy}
            if self.sidecar_port is not None:
                sidecar["Port"] = self.sidecar_port
            if self.sidecar_address:
                sidecar["Address"] = self.sidecar_address
            p["Connect"] = {"SidecarService": sidecar}
        return p


@dataclass(frozen=True)
class DefinitionFile:
    """What one file contributes: node settings it sets (None = not set here) and its services."""

    source: str
    node_name: str | None = None
    advertise_addr: str | None = None
    bind_addr: str | None = None
    datacenter: str | None = None
    node_meta: tuple[tuple[str, str], ...] | None = None
    services: tuple[ServiceDefinition, ...] = ()


@dataclass(frozen=True)
class NodeDefinition:
    """One node (one ``/etc/consul.d``): its identity and its normalized services."""

    name: str
    address: str
    datacenter: str = DEFAULT_DATACENTER
    meta: tuple[tuple[str, str], ...] = ()
    services: tuple[ServiceDefinition, ...] = ()

    def to_node(self) -> Node:
        return Node(name=self.name, address=self.address, datacenter=self.datacenter, meta=self.meta)

    def instances(self) -> tuple[ServiceInstance, ...]:
        """The node's mesh instances (services not in the mesh are left out)."""
        return tuple(i for s in self.services if (i := s.to_instance(self)) is not None)

    def service(self, service_id: str) -> ServiceDefinition | None:
        return next((s for s in self.services if s.id == service_id), None)


# --- parsing -----------------------------------------------------------------------------


def _parse_hcl(text: str, source: str) -> Any:
    import hcl2

    try:
        from hcl2.utils import SerializationOptions  # python-hcl2 >= 8
    except ImportError:  # pragma: no cover - python-hcl2 7.x
        SerializationOptions = None  # type: ignore[assignment,misc]
    try:
        if SerializationOptions is not None:
            opts = SerializationOptions(with_comments=False, explicit_blocks=False, strip_string_quotes=True)
            return hcl2.loads(text, serialization_options=opts)
        return _strip_hcl7(hcl2.loads(text))  # pragma: no cover
    except Exception as exc:  # lark/hcl2 raise many types; every one means "this file is not valid HCL"
        line, column = getattr(exc, "line", None), getattr(exc, "column", None)
        where = f" at line {line}, column {column}" if isinstance(line, int) and line > 0 else ""
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        token = getattr(exc, "token", None)
        if token is not None:
            tok = str(token).strip()
            detail = f"unexpected {tok!r}" if tok else "unexpected end of line (a value is missing?)"
        elif getattr(exc, "char", None):
            detail = f"unexpected character {exc.char!r}"  # type: ignore[attr-defined]
        raise ValidationError([FieldError(source, None, "", f"HCL syntax error{where}: {detail}")], summary="invalid definition file") from exc


def _strip_hcl7(value: Any) -> Any:  # pragma: no cover - python-hcl2 7.x compatibility
    if isinstance(value, dict):
        return {k: _strip_hcl7(v) for k, v in value.items() if not str(k).startswith("__")}
    if isinstance(value, list):
        return [_strip_hcl7(v) for v in value]
    if isinstance(value, str) and len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def _parse_json(text: str, source: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            [FieldError(source, None, "", f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}")],
            summary="invalid definition file",
        ) from exc


def _upstream(d: Mapping[str, Any], default_mode: str = "") -> Upstream:
    return Upstream(
        destination_name=d["destination_name"],
        local_bind_port=d["local_bind_port"],
        local_bind_address=d.get("local_bind_address") or LOCALHOST,
        datacenter=d.get("datacenter") or d.get("destination_peer") or None,
        mesh_gateway=_mode(d) or default_mode,
        mesh_gateway_scope="upstream" if _mode(d) else "proxy" if default_mode else "",
    )


def _mode(d: Mapping[str, Any]) -> str:
    """``mesh_gateway.mode`` of an upstream or proxy block ("" when unset; Consul's ``default`` is unset too)."""
    mode = (d.get("mesh_gateway") or {}).get("mode") or ""
    return "" if mode == "default" else mode


def _check_binds(upstreams: Sequence[Upstream], path: Path, ctx: Context) -> None:
    seen: dict[tuple[str, int], int] = {}
    for i, u in enumerate(upstreams):
        bind = (u.local_bind_address, u.local_bind_port)
        if bind in seen:
            ctx.add(
                path.index(i).field("local_bind_port"),
                f"{u.local_bind_address}:{u.local_bind_port} is already used by upstreams[{seen[bind]}]",
            )
        else:
            seen[bind] = i


def _service_from(raw: Any, path: Path, ctx: Context, source: str) -> ServiceDefinition | None:
    """Validate one service block and build its normalized definition (None when invalid)."""
    before = len(ctx.issues)
    d = SERVICE.check(raw, path, ctx)
    if d is INVALID:
        return None
    kind = d.get("kind", "")
    checks = list(d.get("checks") or [])
    check_path = {i: path.field("checks").index(i) for i in range(len(checks))}
    if "check" in d:
        check_path[len(checks)] = path.field("check")
        checks.append(d["check"])
    for i, c in enumerate(checks):
        types = [t for t in _CHECK_TYPES if t in c]
        if len(types) != 1:
            ctx.add(check_path[i], "needs exactly one of http, tcp, grpc, ttl or args" + (f" (got {', '.join(types)})" if types else ""))
        elif types[0] != "ttl" and "interval" not in c:
            ctx.add(check_path[i].field("interval"), f"required for a {types[0]} check")

    sidecar = (d.get("connect") or {}).get("sidecar_service")
    has_sidecar = "sidecar_service" in (d.get("connect") or {}) or sidecar is not None
    sidecar = sidecar or {}
    sc_proxy = sidecar.get("proxy") or {}
    upstreams: tuple[Upstream, ...] = ()
    proxy_config: Mapping[str, Any] = {}
    local_port = sc_proxy.get("local_service_port") or d.get("port")

    if kind == MESH_GATEWAY:
        if has_sidecar:
            ctx.add(path.field("connect").field("sidecar_service"), "a mesh gateway is itself a proxy; it has no sidecar")
        if "port" not in d:
            ctx.add(path.field("port"), 'required for kind "mesh-gateway" (the LAN port the gateway listens on)')
        for name in d.get("tagged_addresses") or {}:
            if name not in ("lan", "wan"):
                ctx.add(path.field("tagged_addresses").field(name), "a mesh gateway has tagged addresses lan and wan")
    elif kind == INGRESS_GATEWAY:
        if has_sidecar:
            ctx.add(path.field("connect").field("sidecar_service"), "an ingress gateway is itself a proxy; it has no sidecar")
        if "port" not in d:
            ctx.add(path.field("port"), 'required for kind "ingress-gateway" (the port the gateway listens on)')
        if "proxy" in d:
            gw_proxy = PROXY.check(d["proxy"], path.field("proxy"), ctx)
            if gw_proxy is not INVALID:
                upstreams = tuple(_upstream(u) for u in gw_proxy.get("upstreams") or [])
                _check_binds(upstreams, path.field("proxy").field("upstreams"), ctx)
                proxy_config = gw_proxy.get("config") or {}
    else:
        if "proxy" in d and kind == "":
            ctx.add(
                path.field("proxy"),
                'only valid with kind = "ingress-gateway"; a sidecar\'s proxy settings go in connect.sidecar_service.proxy',
            )
        if has_sidecar:
            if local_port is None:
                ctx.add(path.field("port"), "required with connect.sidecar_service (or set connect.sidecar_service.proxy.local_service_port)")
            upstreams = tuple(_upstream(u, _mode(sc_proxy)) for u in sc_proxy.get("upstreams") or [])
            _check_binds(upstreams, path.field("connect").field("sidecar_service").field("proxy").field("upstreams"), ctx)
            proxy_config = sc_proxy.get("config") or {}

    if len(ctx.issues) != before:
        return None
    return ServiceDefinition(
        name=d["name"],
        id=d.get("id") or d["name"],
        port=d.get("port"),
        address=d.get("address", ""),
        tags=tuple(d.get("tags") or ()),
        meta=tuple(sorted((d.get("meta") or {}).items())),
        kind=kind,
        checks=tuple(CheckDefinition.from_dict(c) for c in checks),
        sidecar=has_sidecar and kind not in GATEWAY_KINDS,
        sidecar_port=sidecar.get("port"),
        sidecar_address=sidecar.get("address", ""),
        local_service_address=sc_proxy.get("local_service_address") or LOCALHOST,
        local_service_port=local_port if has_sidecar else None,
        upstreams=upstreams,
        tagged_addresses=tuple(sorted((n, t["address"], t["port"]) for n, t in (d.get("tagged_addresses") or {}).items())),
        proxy_config=dict(proxy_config),
        source=source,
        origin=str(path),
    )


def format_of(source: str) -> str:
    """``json`` or ``hcl`` from a file name; Consul decides by the extension too."""
    suffix = FsPath(source).suffix.lower()
    if suffix not in DEFINITION_SUFFIXES:
        raise ValueError(f"{source}: definition files must end in .json or .hcl")
    return suffix[1:]


def parse_definition(text: str, source: str, fmt: str | None = None) -> DefinitionFile:
    """Parse one definition file (``fmt`` = ``json``/``hcl``, default from ``source``'s extension).

    Raises ValidationError listing every problem in the file.
    """
    fmt = fmt or format_of(source)
    hcl = fmt == "hcl"
    data = _parse_hcl(text, source) if hcl else _parse_json(text, source)
    ctx = Context(unwrap_blocks=hcl)
    root = Path()
    if not isinstance(data, Mapping):
        raise ValidationError([FieldError(source, None, "", "a definition file must hold an object at the top level")])

    settings = NODE_SETTINGS.check({k: v for k, v in data.items() if k != "service"}, root, ctx)
    services: list[ServiceDefinition] = []

    raw_service = data.get("service")
    if raw_service is not None:
        if isinstance(raw_service, list):  # HCL blocks (possibly repeated) or a JSON list
            items = [(root.field("service") if len(raw_service) == 1 else root.field("service").index(i), s) for i, s in enumerate(raw_service)]
        else:
            items = [(root.field("service"), raw_service)]
        for path, raw in items:
            if (svc := _service_from(raw, path, ctx, source)) is not None:
                services.append(svc)

    raw_services = data.get("services")
    if raw_services is not None:
        if not isinstance(raw_services, list):
            raw_services = _unwrap_single(raw_services)
        if raw_services is None:
            ctx.add(root.field("services"), f"must be a list of services, got {type_name(data['services'])}")
        else:
            for i, raw in enumerate(raw_services):
                if (svc := _service_from(raw, root.field("services").index(i), ctx, source)) is not None:
                    services.append(svc)

    if ctx.issues:
        raise ValidationError(ctx.issues.to_field_errors(source, None), summary="invalid definition file")
    meta = settings.get("node_meta")
    return DefinitionFile(
        source=source,
        node_name=settings.get("node_name"),
        advertise_addr=settings.get("advertise_addr"),
        bind_addr=settings.get("bind_addr"),
        datacenter=settings.get("datacenter"),
        node_meta=tuple(sorted(meta.items())) if meta is not None else None,
        services=tuple(services),
    )


def _unwrap_single(value: Any) -> list | None:
    return [value] if isinstance(value, Mapping) else None


def build_node(files: Sequence[DefinitionFile], default_name: str, source: str | None = None) -> NodeDefinition:
    """Merge one node's files (in the order given: lexical, as Consul loads them) into a NodeDefinition.

    Checks what only the whole node shows: an address, unique service IDs, and unique Envoy
    listener ports; assigns sidecar ports that the files left out. ``source`` names the node
    directory in errors about settings no single file got wrong (default: ``default_name``).
    """
    where = source or default_name
    errors: list[FieldError] = []
    name, advertise, bind, datacenter = default_name, None, None, DEFAULT_DATACENTER
    meta: dict[str, str] = {}
    services: list[ServiceDefinition] = []
    for f in files:
        name = f.node_name or name
        advertise = f.advertise_addr or advertise
        bind = f.bind_addr or bind
        datacenter = f.datacenter or datacenter
        meta.update(dict(f.node_meta or ()))
        services.extend(f.services)
    problem = dns_label_problem(name)
    if problem:  # the directory's name, when no file sets node_name
        errors.append(FieldError(where, None, "node_name", f"node name {name!r} is not valid: {problem}; "
                                 "set node_name to an RFC 1123 label (e.g. vm-1)"))

    address = advertise
    if address is None and bind is not None:
        if ipaddress.ip_address(bind).is_unspecified:
            errors.append(FieldError(where, None, "bind_addr", f"{bind} is not an address other nodes can reach; set advertise_addr"))
        else:
            address = bind
    elif address is not None and ipaddress.ip_address(address).is_unspecified:
        errors.append(FieldError(where, None, "advertise_addr", f"{address} is not an address other nodes can reach"))
        address = None
    if address is None and not errors:
        errors.append(FieldError(where, None, "advertise_addr", "the node has no address: set advertise_addr (or bind_addr) in one of its files"))

    ids: dict[str, ServiceDefinition] = {}
    listeners: dict[int, ServiceDefinition] = {}
    for s in services:
        if s.id in ids:
            first = ids[s.id]
            errors.append(
                FieldError(s.source, None, f"{s.origin}.id", f"service ID {s.id!r} is already defined in {first.source} ({first.origin}); give each instance its own id")
            )
            continue
        ids[s.id] = s
        port = s.mesh_port
        if port is not None:
            if port in listeners:
                other = listeners[port]
                field_path = f"{s.origin}.port" if s.kind in GATEWAY_KINDS else f"{s.origin}.connect.sidecar_service.port"
                errors.append(FieldError(s.source, None, field_path, f"port {port} is already used on this node by {other.id!r} ({other.source})"))
            else:
                listeners[port] = s

    taken = set(listeners) | {s.port for s in services if s.port is not None}
    assigned: list[ServiceDefinition] = []
    for s in services:
        if s.sidecar and s.sidecar_port is None:
            free = next((p for p in range(SIDECAR_MIN_PORT, SIDECAR_MAX_PORT + 1) if p not in taken), None)
            if free is None:
                errors.append(
                    FieldError(s.source, None, f"{s.origin}.connect.sidecar_service.port", f"no free sidecar port in {SIDECAR_MIN_PORT}-{SIDECAR_MAX_PORT}; set one")
                )
            else:
                taken.add(free)
                s = replace(s, sidecar_port=free)
        assigned.append(s)

    if errors:
        raise ValidationError(errors, summary=f"invalid node definition {where}")
    assert address is not None
    return NodeDefinition(name=name, address=address, datacenter=datacenter, meta=tuple(sorted(meta.items())), services=tuple(assigned))


def definition_files(directory: FsPath) -> list[FsPath]:
    """The ``*.json``/``*.hcl`` files of a node directory, in Consul's (lexical) order; hidden files skipped."""
    return sorted(
        f for f in directory.iterdir() if f.is_file() and f.suffix.lower() in DEFINITION_SUFFIXES and not f.name.startswith(".")
    )


def load_node_dir(directory: FsPath | str, default_name: str | None = None, source_prefix: str | None = None) -> NodeDefinition:
    """Read a node's configuration directory (its ``/etc/consul.d``); every problem of every file in one ValidationError.

    The node name defaults to ``default_name``, else the directory name. Error sources are
    ``<source_prefix>/<file>`` (default prefix: the directory name).
    """
    directory = FsPath(directory)
    prefix = source_prefix if source_prefix is not None else directory.name
    errors: list[FieldError] = []
    parsed: list[DefinitionFile] = []
    for f in definition_files(directory):
        source = f"{prefix}/{f.name}" if prefix else f.name
        try:
            parsed.append(parse_definition(f.read_text(encoding="utf-8"), source))
        except ValidationError as exc:
            errors.extend(exc.errors)
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(source, None, "", f"cannot read: {exc}"))
    if errors:
        raise ValidationError(errors, summary=f"invalid definitions in {directory}")
    return build_node(parsed, default_name or directory.name, source=prefix or directory.name)


__all__ = [
    "CheckDefinition",
    "DefinitionFile",
    "NodeDefinition",
    "ServiceDefinition",
    "INGRESS_GATEWAY",
    "GATEWAY_KINDS",
    "SIDECAR_MIN_PORT",
    "SIDECAR_MAX_PORT",
    "build_node",
    "definition_files",
    "format_of",
    "load_node_dir",
    "parse_definition",
]
