"""External authorizers for CUSTOM AuthorizationPolicies, declared in the mesh settings as Istio's MeshConfig
``extensionProviders`` (``meshcore-control-plane --mesh-config FILE``):

```yaml
extensionProviders:
- name: opa                         # what a CUSTOM policy's provider.name names
  envoyExtAuthzHttp:
    service: 10.0.0.7               # host or IP of the authorizer (meshcore: no Kubernetes service names)
    port: 8181
    timeout: 500ms                  # default 600s in Istio; meshcore 2s
    pathPrefix: /check              # the check request's path: <pathPrefix><original path>
    failOpen: false                 # the authorizer unreachable or erroring: deny (default) or allow
    statusOnError: "403"            # what a denied-by-error request gets (default 403)
    includeRequestHeadersInCheck: [authorization, cookie]
    headersToUpstreamOnAllow: [x-user]
    headersToDownstreamOnDeny: [www-authenticate]
- name: authz-grpc
  envoyExtAuthzGrpc: {service: authz.example.internal, port: 9000, timeout: 1s, failOpen: false}
```

:func:`parse_mesh_config` validates such a document (field paths in errors) and returns the providers, frozen, to go
into :class:`meshcore.snapshot.MeshSettings` (``ext_authz_providers``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from ..errors import ConfigError, ValidationError
from ..policies.request_authentication.trust import JWKS_CONFIG, NO_SETTINGS, JwksSettings, jwks_settings
from ..resources.kinds._fields import Dur, HeaderName, seconds
from ..resources.schema import INVALID, Bool, Context, Field, Int, ListOf, Obj, Path, Port, Required, Schema, Str

HTTP, GRPC = "envoyExtAuthzHttp", "envoyExtAuthzGrpc"
DEFAULT_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ExtAuthzProvider:
    name: str
    kind: str  # HTTP | GRPC
    service: str
    port: int
    timeout_s: float = DEFAULT_TIMEOUT_S
    fail_open: bool = False
    status_on_error: int = 403
    path_prefix: str = ""
    include_request_headers: tuple[str, ...] = ()
    headers_to_upstream: tuple[str, ...] = ()
    headers_to_downstream: tuple[str, ...] = ()

    @property
    def cluster(self) -> str:
        return f"ext_authz|{self.name}"


def _status_problem(cleaned: dict, path: Path, ctx: Context) -> None:
    status = cleaned.get("statusOnError")
    if status is not None and (not str(status).isdigit() or not 100 <= int(status) <= 599):
        ctx.add(path.field("statusOnError"), f"must be an HTTP status code such as \"403\", got {status!r}")


_COMMON: dict[str, Schema | Field] = {
    "service": Required(Str(min_len=1)),
    "port": Required(Port()),
    "timeout": Dur(min_s=0.001),
    "failOpen": Bool(),
    "statusOnError": Str(min_len=1),
}
_HEADERS = ListOf(HeaderName(min_len=1), min_items=1)

HTTP_PROVIDER = Obj({**_COMMON, "pathPrefix": Str(min_len=1), "includeRequestHeadersInCheck": _HEADERS,
                     "headersToUpstreamOnAllow": _HEADERS, "headersToDownstreamOnDeny": _HEADERS},
                    rules=[_status_problem],
                    refused={"includeHeadersInCheck": "deprecated in Istio; write includeRequestHeadersInCheck",
                             "includeAdditionalHeadersInCheck": "the check carries the request's own headers only "
                                                                "(includeRequestHeadersInCheck)",
                             "includeRequestBodyInCheck": "meshcore's check carries the headers only",
                             "headersToUpstreamOnAllowMatch": "write the names in headersToUpstreamOnAllow",
                             "headersToDownstreamOnAllow": ("an allowed request's answer comes from the workload; "
                                                            "only a denial carries headersToDownstreamOnDeny")})
GRPC_PROVIDER = Obj(dict(_COMMON), rules=[_status_problem],
                    refused={"includeRequestBodyInCheck": "meshcore's check carries the headers only"})


def _one_kind(cleaned: dict, path: Path, ctx: Context) -> None:
    kinds = [k for k in (HTTP, GRPC) if k in cleaned]
    if len(kinds) != 1:
        ctx.add(path, f"an extension provider needs exactly one of {HTTP}, {GRPC} (meshcore's authorizers)")


PROVIDER = Obj({"name": Required(Str(min_len=1)), HTTP: HTTP_PROVIDER, GRPC: GRPC_PROVIDER}, rules=[_one_kind],
               refused={k: "not an external authorizer; meshcore reads only envoyExtAuthzHttp and envoyExtAuthzGrpc "
                           "providers from the mesh config (tracing: --tracing-otlp, access logs: --access-log)"
                        for k in ("zipkin", "opentelemetry", "envoyOtelAls", "envoyFileAccessLog", "prometheus",
                                  "stackdriver", "skywalking", "datadog", "lightstep", "envoyHttpAls",
                                  "envoyTcpAls")})


def _unique(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[str, int] = {}
    for i, p in enumerate(cleaned.get("extensionProviders") or ()):
        if p["name"] in seen:
            ctx.add(path.field("extensionProviders").index(i).field("name"),
                    f"provider {p['name']!r} is already defined at extensionProviders[{seen[p['name']]}]")
        seen.setdefault(p["name"], i)


DEFAULT_CONFIG = Obj({"gatewayTopology": Obj({"numTrustedProxies": Int(min=0, max=32)})},
                     refused={"proxyMetadata": "meshcore's proxies take no environment from the mesh config"})

MESH_CONFIG = Obj({"extensionProviders": ListOf(PROVIDER), "jwks": JWKS_CONFIG, "defaultConfig": DEFAULT_CONFIG},
                  rules=[_unique])
"""The mesh config: ``extensionProviders`` (above), ``jwks`` (:mod:`meshcore.policies.request_authentication.trust`:
the trust store of JWKS servers, OIDC discovery) and, of Istio's ``defaultConfig``, the ingress gateways'
``gatewayTopology.numTrustedProxies`` (X-Forwarded-For hops they trust: ``remoteIpBlocks``, client addresses)."""


@dataclass(frozen=True)
class MeshConfig:
    ext_authz_providers: tuple[ExtAuthzProvider, ...] = ()
    jwks: JwksSettings = NO_SETTINGS
    gateway_trusted_proxies: int = 0


def _provider(p: dict) -> ExtAuthzProvider:
    kind = HTTP if HTTP in p else GRPC
    body = p[kind]
    return ExtAuthzProvider(
        name=p["name"], kind=kind, service=body["service"], port=int(body["port"]),
        timeout_s=seconds(body["timeout"]) if body.get("timeout") else DEFAULT_TIMEOUT_S,
        fail_open=bool(body.get("failOpen")),
        status_on_error=int(body.get("statusOnError") or 403),
        path_prefix=body.get("pathPrefix") or "",
        include_request_headers=tuple(body.get("includeRequestHeadersInCheck") or ()),
        headers_to_upstream=tuple(body.get("headersToUpstreamOnAllow") or ()),
        headers_to_downstream=tuple(body.get("headersToDownstreamOnDeny") or ()),
    )


def parse_mesh_config(text: str, source: str = "mesh config") -> tuple[ExtAuthzProvider, ...]:
    """The external authorizers of a MeshConfig document (YAML or JSON); :class:`ValidationError` listing every
    problem with its field path otherwise."""
    return parse_mesh_settings(text, source).ext_authz_providers


def parse_mesh_settings(text: str, source: str = "mesh config") -> MeshConfig:
    """Everything a MeshConfig document (YAML or JSON) sets; :class:`ValidationError` listing every problem with its
    field path otherwise."""
    try:
        data: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not YAML: {exc}") from exc
    ctx = Context()
    cleaned = MESH_CONFIG.check(data, Path(), ctx)
    if ctx.issues or cleaned is INVALID:
        raise ValidationError(ctx.issues.to_field_errors(source, None), summary=f"invalid mesh config {source}")
    topology = ((cleaned.get("defaultConfig") or {}).get("gatewayTopology") or {})
    return MeshConfig(tuple(_provider(p) for p in cleaned.get("extensionProviders") or ()),
                      jwks_settings(cleaned.get("jwks")), int(topology.get("numTrustedProxies") or 0))


__all__ = ["ExtAuthzProvider", "HTTP", "GRPC", "DEFAULT_TIMEOUT_S", "MeshConfig", "parse_mesh_config",
           "parse_mesh_settings"]
