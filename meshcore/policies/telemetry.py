"""Telemetry plugin: access logs and tracing in every proxy's listeners, from ``snapshot.settings.telemetry`` (pure).

:func:`apply` runs last of the plugins (:data:`meshcore.policies.PLUGINS`) (so it sees the RBAC filters AuthorizationPolicy put in
and the plaintext chains PeerAuthentication added) and gives each HTTP connection manager and each
``tcp_proxy`` of every listener:

* an access log when ``telemetry.access_log`` is set: a file (``{node}`` in the path is replaced by
  the node name, so Envoys sharing one disk keep apart files) or ``stdout`` (Envoy's stdout, which the
  agent hands to the journal); JSON lines (:data:`JSON_KEYS`, a contract: ``meshctl authz dry-run``
  reads them) or text;
* Envoy's OpenTelemetry tracer (OTLP/gRPC to the cluster :func:`tracing_cluster` adds) with the
  sampling percentage, when ``telemetry.tracing_otlp`` is set.

The deciding authorization policy comes from the RBAC filters' dynamic metadata
(``<rules_stat_prefix>enforced_effective_policy_id`` / ``enforced_engine_result``, in the
``envoy.filters.http.rbac`` namespace whatever the filter is named, keys prefixed by the per-route
``rules_stat_prefix`` in Envoy 1.40): each enforcing stage (HTTP: ``authz.deny.``, then ``authz.allow.``,
the constant filters of :mod:`meshcore.xds.generate.policy_filters` whose rules come per route; TCP:
``tcp.<listener>.authz.deny.<ns>.<name>.`` ..., then ``...authz.allow.``) writes its own keys and the first
stage that denies stops the request, so a CEL expression built per listener picks the first denying
stage, else the ALLOW stage. AUDIT (action LOG) matches show as ``audit_policy``. A stage without rules
on a route writes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from google.protobuf import struct_pb2
from google.protobuf.message import Message

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import grpc_service_pb2, protocol_pb2, substitution_format_string_pb2 as sfs_pb2
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.trace.v3 import http_tracer_pb2, opentelemetry_pb2
from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.http.rbac.v3 import rbac_pb2 as http_rbac_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.rbac.v3 import rbac_pb2 as network_rbac_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.v3 import percent_pb2

from .. import naming
from ..errors import SnapshotInvalid
from ..snapshot import MeshSnapshot, ProxyInfo, TelemetrySettings
from ..xds.generate import vocab as c
from ..xds.generate import policy_filters as pf
from ..xds.generate.vocab import CLUSTER, LISTENER

__all__ = ["apply", "tracing_cluster", "access_log_path", "listener_access_log", "access_log_filter", "JSON_KEYS",
           "TRACING_CLUSTER", "OTEL_TRACER", "validate_settings", "hcm_tracing", "ListenerFacts"]

# Wanted in naming.py (a shared contract): the CDS cluster Envoy exports spans to.
TRACING_CLUSTER = naming.OTLP_CLUSTER
OTEL_TRACER = "envoy.tracers.opentelemetry"
FILE_LOGGER = "envoy.access_loggers.file"
STDOUT_LOGGER = "envoy.access_loggers.stdout"
HTTP_RBAC_NS = pf.RBAC_METADATA_NS
NETWORK_RBAC_NS = "envoy.filters.network.rbac"
NODE_PLACEHOLDER = "{node}"

JSON_KEYS = (
    "start_time", "direction", "node", "service", "trace_id", "method", "path", "authority", "protocol",
    "response_code", "response_code_details", "response_flags", "duration_ms", "bytes_received", "bytes_sent",
    "source_spiffe_id", "destination_spiffe_id", "source_address", "destination_address", "destination_port",
    "requested_server_name", "upstream_host", "upstream_cluster", "route_name", "rbac_policy", "rbac_result",
    "audit_policy",
)
"""Every key of a JSON access log line, in the order of the docs (docs/observability.md#access-logs)."""


@dataclass(frozen=True)
class ListenerFacts:
    """What the builder knows of one listener and puts into its log lines as constants."""

    direction: str  # "inbound" | "outbound"
    node: str
    service: str  # the local service the listener belongs to
    port: int  # the listener's port
    source_spiffe_id: str = ""  # outbound: the identity the local service presents


# --- settings -------------------------------------------------------------------------------------

def validate_settings(t: TelemetrySettings) -> list[str]:
    """Every problem with ``t`` (empty when usable), each saying which flag and what to give instead."""
    problems = []
    if t.access_log not in ("", "stdout") and not t.access_log.startswith("/"):
        problems.append(f"--access-log {t.access_log!r}: give 'stdout' or an absolute file path "
                        "(optionally with {node})")
    if t.access_log_format not in ("json", "text"):
        problems.append(f"--access-log-format {t.access_log_format!r}: give json or text")
    if t.tracing_otlp:
        host, _, port = t.tracing_otlp.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"--tracing-otlp {t.tracing_otlp!r}: give the collector's host:port (OTLP/gRPC, e.g. "
                            "otel-collector:4317)")
    if not 0.0 <= t.access_log_sampling <= 100.0:
        problems.append(f"--access-log-sampling {t.access_log_sampling}: give a percentage between 0 and 100")
    if not 0.0 <= t.tracing_sampling <= 100.0:
        problems.append(f"--tracing-sampling {t.tracing_sampling}: give a percentage between 0 and 100")
    return problems


def access_log_path(t: TelemetrySettings, node: str) -> str:
    """Where ``node``'s Envoy writes its access log: ``stdout``, a file path, or "" (off)."""
    return t.access_log.replace(NODE_PLACEHOLDER, node)


# --- access log format ----------------------------------------------------------------------------

def _meta(ns: str, key: str) -> str:
    return f"metadata.filter_metadata['{ns}']['{key}']"


def _has(ns: str, key: str) -> str:
    return f"('{ns}' in metadata.filter_metadata && '{key}' in metadata.filter_metadata['{ns}'])"


def _rbac_expressions(ns: str, prefixes: list[str]) -> tuple[str, str] | None:
    """CEL for (deciding policy id, enforced result) over enforcing stages in evaluation order."""
    if not prefixes:
        return None
    denied = [f"({_has(ns, p + 'enforced_engine_result')} && {_meta(ns, p + 'enforced_engine_result')} == 'denied')"
              for p in prefixes]
    result = f"({' || '.join(denied)}) ? 'denied' : ('{ns}' in metadata.filter_metadata ? 'allowed' : '')"
    # Innermost: the last stage (the ALLOW stage when there is one) decides when nothing denied.
    last = prefixes[-1] + "enforced_effective_policy_id"
    policy = f"({_has(ns, last)} ? {_meta(ns, last)} : '')"
    for p, d in reversed(list(zip(prefixes[:-1], denied[:-1]))):
        pid = p + "enforced_effective_policy_id"
        policy = f"({d} && {_has(ns, pid)}) ? {_meta(ns, pid)} : ({policy})"
    return policy, result


def _fields(facts: ListenerFacts, *, tcp: bool, rbac: tuple[str, list[str], str | None]) -> dict[str, object]:
    ns, enforcing, audit = rbac
    inbound = facts.direction == "inbound"
    fields: dict[str, object] = {
        "start_time": "%START_TIME(%Y-%m-%dT%H:%M:%S.%3fZ)%",
        "direction": facts.direction,
        "node": facts.node,
        "service": facts.service,
        "trace_id": None if tcp else "%TRACE_ID%",
        "method": None if tcp else "%REQ(:METHOD)%",
        "path": None if tcp else "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
        "authority": None if tcp else "%REQ(:AUTHORITY)%",
        "protocol": "tcp" if tcp else "%PROTOCOL%",
        "response_code": "%RESPONSE_CODE%",
        "response_code_details": "%RESPONSE_CODE_DETAILS%",
        "response_flags": "%RESPONSE_FLAGS%",
        "duration_ms": "%DURATION%",
        "bytes_received": "%BYTES_RECEIVED%",
        "bytes_sent": "%BYTES_SENT%",
        "source_spiffe_id": "%DOWNSTREAM_PEER_URI_SAN%" if inbound else (facts.source_spiffe_id or None),
        "destination_spiffe_id": "%DOWNSTREAM_LOCAL_URI_SAN%" if inbound else "%UPSTREAM_PEER_URI_SAN%",
        "source_address": "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%",
        "destination_address": "%DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT%",
        "destination_port": facts.port,
        "requested_server_name": "%REQUESTED_SERVER_NAME%",
        "upstream_host": "%UPSTREAM_HOST%",
        "upstream_cluster": "%UPSTREAM_CLUSTER%",
        "route_name": None if tcp else "%ROUTE_NAME%",
        "rbac_policy": None,
        "rbac_result": None,
        "audit_policy": None,
    }
    exprs = _rbac_expressions(ns, enforcing)
    if exprs is not None:
        fields["rbac_policy"] = f"%CEL({exprs[0]})%"
        fields["rbac_result"] = f"%CEL({exprs[1]})%"
    if audit is not None:
        fields["audit_policy"] = f"%DYNAMIC_METADATA({ns}:{audit}enforced_effective_policy_id)%"
    return fields


def _json_format(fields: dict[str, object]) -> struct_pb2.Struct:
    out = struct_pb2.Struct()
    for key in JSON_KEYS:
        value = fields[key]
        if value is None:
            out.fields[key].null_value = struct_pb2.NULL_VALUE
        elif isinstance(value, int):
            out.fields[key].number_value = value
        else:
            out.fields[key].string_value = str(value)
    return out


def _text_format(fields: dict[str, object]) -> str:
    """One line: ``[start] direction node service "METHOD path protocol" code flags ...`` then key=value."""
    def v(key: str) -> str:
        value = fields[key]
        return "-" if value is None else str(value)

    head = (f"[{v('start_time')}] {v('direction')} node={v('node')} service={v('service')} "
            f"\"{v('method')} {v('path')} {v('protocol')}\" {v('response_code')} {v('response_flags')} ")
    rest = ["duration_ms", "bytes_received", "bytes_sent", "source_spiffe_id", "destination_spiffe_id",
            "source_address", "destination_address", "destination_port", "requested_server_name", "upstream_host",
            "upstream_cluster", "route_name", "trace_id",
            "authority", "response_code_details", "rbac_policy", "rbac_result", "audit_policy"]
    return head + " ".join(f"{k}={v(k)}" for k in rest) + "\n"


def listener_access_log(t: TelemetrySettings, facts: ListenerFacts, *, tcp: bool = False,
                        rbac: tuple[str, list[str], str | None] = (HTTP_RBAC_NS, [], None)) -> accesslog_pb2.AccessLog | None:
    """The access log of one HCM / tcp_proxy (None when access logging is off).

    ``rbac`` is (metadata namespace, enforcing stages' stat prefixes in order, the audit stage's prefix)."""
    path = access_log_path(t, facts.node)
    if not path:
        return None
    fields = _fields(facts, tcp=tcp, rbac=rbac)
    if t.access_log_format == "text":
        fmt = sfs_pb2.SubstitutionFormatString(text_format_source=c.base_pb2.DataSource(inline_string=_text_format(fields)))
    else:
        fmt = sfs_pb2.SubstitutionFormatString(json_format=_json_format(fields))
    if path == "stdout":
        log = accesslog_pb2.AccessLog(name=STDOUT_LOGGER, typed_config=c.pack(stream_pb2.StdoutAccessLog(log_format=fmt)))
    else:
        log = accesslog_pb2.AccessLog(name=FILE_LOGGER, typed_config=c.pack(file_pb2.FileAccessLog(path=path, log_format=fmt)))
    sampled = access_log_filter(t, tcp=tcp)
    if sampled is not None:
        log.filter.CopyFrom(sampled)
    return log


ACCESS_LOG_SAMPLING_KEY = "meshcore.access_log.sampling"
"""Envoy runtime key of the access log sampling (``--access-log-sampling`` is its default)."""


def access_log_filter(t: TelemetrySettings, *, tcp: bool = False) -> accesslog_pb2.AccessLogFilter | None:
    """Which requests get a line when ``t.access_log_sampling`` is under 100 (None: every request): every
    failure (HTTP status >= 400, or any response flag: no upstream, reset, timeout, rate limited, ...) and that
    percentage of the rest. The sample follows ``x-request-id`` (Envoy's runtime filter without independent
    randomness), so a sampled request has its line on both sidecars of the hop."""
    if t.access_log_sampling >= 100.0:
        return None
    F = accesslog_pb2.AccessLogFilter
    sample = F(runtime_filter=accesslog_pb2.RuntimeFilter(
        runtime_key=ACCESS_LOG_SAMPLING_KEY,
        percent_sampled=percent_pb2.FractionalPercent(numerator=round(t.access_log_sampling * 10_000),
                                                      denominator=percent_pb2.FractionalPercent.MILLION)))
    failures = [F(response_flag_filter=accesslog_pb2.ResponseFlagFilter())]  # no flags listed: any flag
    if not tcp:
        failures.insert(0, F(status_code_filter=accesslog_pb2.StatusCodeFilter(comparison=accesslog_pb2.ComparisonFilter(
            op=accesslog_pb2.ComparisonFilter.GE,
            value=c.base_pb2.RuntimeUInt32(default_value=400, runtime_key=ACCESS_LOG_SAMPLING_KEY + ".min_status")))))
    return F(or_filter=accesslog_pb2.OrFilter(filters=[*failures, sample]))


# --- tracing ------------------------------------------------------------------------------------

def hcm_tracing(t: TelemetrySettings, service: str) -> hcm_pb2.HttpConnectionManager.Tracing:
    otel = opentelemetry_pb2.OpenTelemetryConfig(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=TRACING_CLUSTER)),
        service_name=service,
    )
    return hcm_pb2.HttpConnectionManager.Tracing(
        random_sampling=percent_pb2.Percent(value=t.tracing_sampling),
        provider=http_tracer_pb2.Tracing.Http(name=OTEL_TRACER, typed_config=c.pack(otel)),
    )


def tracing_cluster(snapshot: MeshSnapshot) -> cluster_pb2.Cluster | None:
    """The OTLP/gRPC collector as a cluster (HTTP/2; an IP is STATIC, a name STRICT_DNS); None when off."""
    target = snapshot.settings.telemetry.tracing_otlp
    if not target:
        return None
    host, _, port = target.rpartition(":")
    host = host.strip("[]")
    endpoint = endpoint_components_pb2.LbEndpoint(
        endpoint=endpoint_components_pb2.Endpoint(address=c.socket_address(host, int(port))))
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions()))
    cluster = cluster_pb2.Cluster(
        name=TRACING_CLUSTER,
        type=cluster_pb2.Cluster.STATIC if c.is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=c.seconds(2.0),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=TRACING_CLUSTER,
            endpoints=[endpoint_components_pb2.LocalityLbEndpoints(lb_endpoints=[endpoint])]),
    )
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].CopyFrom(
        c.pack(options))
    return cluster


# --- the plugin -----------------------------------------------------------------------------------

def _listener_facts(snapshot: MeshSnapshot, proxy: ProxyInfo) -> dict[str, ListenerFacts]:
    facts: dict[str, ListenerFacts] = {}
    for inst in c.sidecar_instances(snapshot, proxy):
        facts[naming.inbound_listener(inst.id)] = ListenerFacts("inbound", proxy.node, inst.service, inst.mesh_port)
    for src, up in c.outbound_bindings(snapshot, proxy):
        name = naming.outbound_listener(up.destination_name, up.local_bind_port)
        facts[name] = ListenerFacts("outbound", proxy.node, src.service, up.local_bind_port,
                                    source_spiffe_id=snapshot.spiffe_id(src))
    return facts


def _unpack(packed, cls) -> Message:
    msg = cls()
    packed.Unpack(msg)
    return msg


def _stages(prefixes_actions: list[tuple[str, int]]) -> tuple[list[str], str | None]:
    from envoy.config.rbac.v3 import rbac_pb2

    enforcing = [p for p, action in prefixes_actions if action != rbac_pb2.RBAC.LOG]
    audit = next((p for p, action in prefixes_actions if action == rbac_pb2.RBAC.LOG), None)
    return enforcing, audit


def _http_stages(hcm: hcm_pb2.HttpConnectionManager) -> list[tuple[str, int]]:
    """(rules_stat_prefix, action) of the HCM's RBAC filters, in order. The constant policy filters carry no
    rules at the listener (their rules come per route): their stage is known by their name."""
    from envoy.config.rbac.v3 import rbac_pb2

    actions = {pf.AUTHZ_AUDIT: rbac_pb2.RBAC.LOG, pf.AUTHZ_DENY: rbac_pb2.RBAC.DENY, pf.AUTHZ_ALLOW: rbac_pb2.RBAC.ALLOW}
    stages = []
    for f in hcm.http_filters:
        if not c.is_type(f.typed_config, http_rbac_pb2.RBAC):
            continue
        r = _unpack(f.typed_config, http_rbac_pb2.RBAC)
        stages.append((r.rules_stat_prefix, actions.get(f.name, r.rules.action)))
    return stages


def _http(hcm: hcm_pb2.HttpConnectionManager, t: TelemetrySettings, facts: ListenerFacts) -> None:
    enforcing, audit = _stages(_http_stages(hcm))
    log = listener_access_log(t, facts, rbac=(HTTP_RBAC_NS, enforcing, audit))
    if log is not None:
        hcm.access_log.append(log)
    if t.tracing_otlp:
        hcm.tracing.CopyFrom(hcm_tracing(t, facts.service))


def _tcp(chain: c.ChainDraft, index: int, t: TelemetrySettings, facts: ListenerFacts) -> None:
    proxy = chain.filters[index].config
    stages = [(f.config.stat_prefix, f.config.rules.action) for f in chain.filters[:index]
              if isinstance(f.config, network_rbac_pb2.RBAC)]
    enforcing, audit = _stages(stages)
    log = listener_access_log(t, facts, tcp=True, rbac=(NETWORK_RBAC_NS, enforcing, audit))
    if log is not None:
        proxy.access_log.append(log)


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    """Add the tracing cluster, and put access logs and tracing into every listener of ``proxy``."""

    t = snapshot.settings.telemetry
    if not t.access_log and not t.tracing_otlp:
        return
    problems = validate_settings(t)
    if problems:
        raise SnapshotInvalid(proxy.node, problems)
    otlp = tracing_cluster(snapshot)
    if otlp is not None:
        clusters = [cl for cl in resources[CLUSTER] if cl.name != otlp.name] + [otlp]
        resources[CLUSTER] = sorted(clusters, key=lambda cl: cl.name)
    facts = _listener_facts(snapshot, proxy)
    for listener in resources[LISTENER]:
        lf = facts.get(listener.name)
        if lf is None:
            continue
        for chain in listener.filter_chains:
            for i, f in enumerate(chain.filters):
                if isinstance(f.config, hcm_pb2.HttpConnectionManager):
                    _http(f.config, t, lf)
                elif isinstance(f.config, tcp_proxy_pb2.TcpProxy):
                    _tcp(chain, i, t, lf)
