"""connectionPool beyond the circuit breaker thresholds: maxRequestsPerConnection, idle timeout, connection age,
TCP keepalive reach the cluster (Istio's circuit-breaking task verbatim)."""

from __future__ import annotations

import json

import pytest

from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2

from meshcore.errors import ValidationError
from meshcore.policies.destination_rule.clusters import HTTP_PROTOCOL_OPTIONS
from meshcore.resources import load_documents
from meshcore.xds.generate import CLUSTER

from .._catalog import build, free_port, write_catalog

DR = """apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    connectionPool:
POOL
"""


def _cluster(tmp_path, pool: str):
    write_catalog(tmp_path, [{"name": "web"}, {"name": "api"}])
    web = tmp_path / "n1" / "web.json"
    definition = json.loads(web.read_text())
    definition["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"] = [
        {"destination_name": "api", "local_bind_port": free_port()}]
    web.write_text(json.dumps(definition))
    built = build(tmp_path, DR.replace("POOL", pool))
    [cl] = [c for c in built[CLUSTER] if c.name.startswith("outbound:api")]
    return cl


def test_circuit_breaking_task_verbatim(tmp_path):
    cl = _cluster(tmp_path, "      tcp: {maxConnections: 1}\n"
                            "      http: {http1MaxPendingRequests: 1, maxRequestsPerConnection: 1}")
    [t] = cl.circuit_breakers.thresholds
    assert t.max_connections.value == 1 and t.max_pending_requests.value == 1
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    assert cl.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(opts)
    assert opts.common_http_protocol_options.max_requests_per_connection.value == 1
    assert opts.WhichOneof("upstream_protocol_options") is not None  # the protocol selection stays as generated


def test_idle_timeout_connection_age_and_keepalive(tmp_path):
    cl = _cluster(tmp_path, "      tcp: {maxConnectionDuration: 1h, tcpKeepalive: {probes: 2, time: 30s}}\n"
                            "      http: {idleTimeout: 15s}")
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    cl.typed_extension_protocol_options[HTTP_PROTOCOL_OPTIONS].Unpack(opts)
    cho = opts.common_http_protocol_options
    assert (cho.idle_timeout.seconds, cho.max_connection_duration.seconds) == (15, 3600)
    ka = cl.upstream_connection_options.tcp_keepalive
    assert (ka.keepalive_probes.value, ka.keepalive_time.value) == (2, 30) and not ka.HasField("keepalive_interval")


def test_zero_requests_per_connection_is_unlimited_and_bad_values_say_where():
    load_documents(DR.replace("POOL", "      http: {maxRequestsPerConnection: 0}"), "dr.yaml")
    with pytest.raises(ValidationError) as info:
        load_documents(DR.replace("POOL", "      tcp: {tcpKeepalive: {time: 500ms}}"), "dr.yaml")
    [e] = info.value.errors
    assert e.path == "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive.time"


PORTS = """apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN, localityLbSetting: {enabled: true}}
    connectionPool: {tcp: {maxConnections: 100}}
    portLevelSettings:
    - port: {number: 8080}
      loadBalancer: {simple: LEAST_REQUEST}
  subsets:
  - name: v2
    labels: {version: v2}
    trafficPolicy:
      portLevelSettings:
      - port: {number: 8080}
        connectionPool: {tcp: {maxConnections: 3}}
"""


def test_port_level_settings_override_their_level_for_that_port_only():
    from meshcore.policies.destination_rule.spec import spec_of

    [res] = load_documents(PORTS, "dr.yaml")
    spec = spec_of(res)
    other, on_port = spec.effective_policy(None, 9090), spec.effective_policy(None, 8080)
    assert other.load_balancer.simple == "ROUND_ROBIN" and on_port.load_balancer.simple == "LEAST_REQUEST"
    assert on_port.load_balancer.locality_lb_setting.enabled is True  # the host's failover stays
    assert on_port.connection_pool.max_connections == 100
    v2 = spec.effective_policy("v2", 8080)
    assert v2.connection_pool.max_connections == 3 and v2.load_balancer.simple == "LEAST_REQUEST"


def test_port_level_errors():
    with pytest.raises(ValidationError) as info:
        load_documents(PORTS.replace("      loadBalancer: {simple: LEAST_REQUEST}",
                                     "      loadBalancer: {localityLbSetting: {enabled: false}}\n"
                                     "    - port: {number: 8080}\n      connectionPool: {tcp: {maxConnections: 1}}"),
                       "dr.yaml")
    errs = {e.path: e.message for e in info.value.errors}
    assert "spec.trafficPolicy.portLevelSettings[0].loadBalancer.localityLbSetting" not in errs  # a port's own now
