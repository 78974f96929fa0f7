"""Sidecar ingress[]: validation with field paths, the refusals that need the catalog, and what each field does to
the inbound listener and the local app cluster (pure; the real Envoy validates the golden case)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.resources import load_documents
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, LISTENER, ROUTE
from meshcore.xds.validate import validate_snapshot
from tests.policies.gateway.test_gateway import _cert
from tests.traffic.test_build import _validate_with_envoy
from tests.xds.test_build_golden import _snapshot

ROOT = Path(__file__).resolve().parents[3]
HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: Sidecar\nmetadata: {name: pp}\n"
PP = "workloadSelector: {labels: {app: productpage}}"
TLS = "tls: {mode: SIMPLE, serverCertificate: /t/pp.crt, privateKey: /t/pp.key}"
PERMISSIVE = """---
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: pp}
spec: {selector: {matchLabels: {app: productpage}}, mtls: {mode: PERMISSIVE}}
"""


def _errors(ingress: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(HEAD + f"spec: {{{PP}, ingress: [{ingress}]}}\n", "s.yaml")
    return {e.path: e.message for e in info.value.errors}


def _sidecar(ingress: str, extra: str = "") -> str:
    return HEAD + f"spec: {{{PP}, ingress: [{ingress}]}}\n" + extra


def _built(text: str, node: str = "vm1") -> dict:
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    assert validate_snapshot(node, built) == []
    return built


def _by_name(built: dict, type_url: str, name: str):
    return next(r for r in built[type_url] if r.name == name)


def _app_address(built: dict, instance: str):
    cluster = _by_name(built, CLUSTER, f"local_app:{instance}")
    return cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address


@pytest.mark.parametrize("ingress, path, message", [
    ("{port: {number: 9080, protocol: HTTP, targetPort: 8080}}", "spec.ingress[0].port.targetPort", "set defaultEndpoint"),
    ("{port: {number: 9080, protocol: HTTP}, captureMode: IPTABLES}", "spec.ingress[0].captureMode",
     "no traffic capture"),
    ("{port: {number: 9080, protocol: UDP}}", "spec.ingress[0].port.protocol", "must be one of"),
    ("{port: {number: 9080, protocol: HTTP}, defaultEndpoint: '10.1.2.3:8080'}", "spec.ingress[0].defaultEndpoint",
     "other addresses are not the workload's"),
    ("{port: {number: 9080, protocol: HTTP}, defaultEndpoint: 'unix://run/app.sock'}",
     "spec.ingress[0].defaultEndpoint", "unix:///absolute/path"),
    ("{port: {number: 9080, protocol: HTTP}, bind: 'unix:///run/x.sock'}", "spec.ingress[0].bind",
     "must be an IP address"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {mode: ISTIO_MUTUAL}}", "spec.ingress[0].tls.mode",
     "PeerAuthentication decides"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {mode: SIMPLE}}", "spec.ingress[0].tls",
     "needs the sidecar's certificate"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {mode: MUTUAL, serverCertificate: /a, privateKey: /b}}",
     "spec.ingress[0].tls.caCertificates", "MUTUAL verifies the callers' certificates"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {serverCertificate: /a, privateKey: /b, caCertificates: /c}}",
     "spec.ingress[0].tls.caCertificates", "use MUTUAL"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {credentialName: pp-cert}}", "spec.ingress[0].tls.credentialName",
     "Kubernetes secret"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {serverCertificate: a.crt, privateKey: /b}}",
     "spec.ingress[0].tls.serverCertificate", "absolute path"),
    ("{port: {number: 9080, protocol: HTTP}, tls: {serverCertificate: /a, privateKey: /b, "
     "minProtocolVersion: TLSV1_3, maxProtocolVersion: TLSV1_2}}", "spec.ingress[0].tls.minProtocolVersion",
     "above maxProtocolVersion"),
    ("{port: {number: 9080, protocol: HTTP}}, {port: {number: 9080, protocol: TCP}}", "spec.ingress[1].port.number",
     "already described by ingress[0]"),
    ("{port: {number: 9080, protocol: HTTP}, connectionPool: {tcp: {maxConnections: -1}}}",
     "spec.ingress[0].connectionPool.tcp.maxConnections", ""),
])
def test_validation_names_the_field_and_says_why(ingress, path, message):
    errors = _errors(ingress)
    assert path in errors, errors
    assert message in errors[path]


def test_an_instance_no_entry_describes_refuses_the_config_naming_its_ports():
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(_snapshot(_sidecar("{port: {number: 9090, protocol: HTTP}}")), ProxyInfo(node="vm1", secrets_dir="/s"))
    assert ("Sidecar default/pp spec.ingress: instance productpage-v1 (service port 9080, sidecar port 21000) matches "
            "none of the ingress ports (9090)") in str(info.value)


def test_two_entries_for_one_instance_are_refused():
    text = _sidecar("{port: {number: 9080, protocol: HTTP}}, {port: {number: 21000, protocol: TCP}}")
    with pytest.raises(SnapshotInvalid, match=r"described by both ingress\[0\] and ingress\[1\]"):
        build_proxy(_snapshot(text), ProxyInfo(node="vm1", secrets_dir="/s"))


def test_bind_must_be_an_address_of_the_vm():
    with pytest.raises(SnapshotInvalid, match=r"spec\.ingress\[0\]\.bind: 10\.9\.9\.9 is not an address of node vm1 .*use one of 127\.0\.0\.11"):
        build_proxy(_snapshot(_sidecar("{port: {number: 9080, protocol: HTTP}, bind: 10.9.9.9}")),
                    ProxyInfo(node="vm1", secrets_dir="/s"))
    for bind in ("127.0.0.11", "127.0.0.1", "0.0.0.0", "::"):
        listener = _by_name(_built(_sidecar(f"{{port: {{number: 9080, protocol: HTTP}}, bind: '{bind}'}}")), LISTENER,
                            "inbound:productpage-v1")
        assert (listener.address.socket_address.address, listener.address.socket_address.port_value) == (bind, 21000)


def test_tls_on_a_strict_port_is_refused_with_the_reason():
    with pytest.raises(SnapshotInvalid, match=r"spec\.ingress\[0\]\.tls: .*PeerAuthentication makes port 9080 of productpage-v1 STRICT"):
        build_proxy(_snapshot(_sidecar(f"{{port: {{number: 9080, protocol: HTTP}}, {TLS}}}")),
                    ProxyInfo(node="vm1", secrets_dir="/s"))


def test_default_endpoint_forms():
    def address(endpoint: str):
        return _app_address(_built(_sidecar(f"{{port: {{number: 9080, protocol: HTTP}}, defaultEndpoint: '{endpoint}'}}")),
                            "productpage-v1")

    assert address("unix:///run/pp.sock").pipe.path == "/run/pp.sock"
    assert address("unix://@pp").pipe.path == "@pp"
    sock = address("127.0.0.1:7080").socket_address
    assert (sock.address, sock.port_value) == ("127.0.0.1", 7080)
    assert address("[::1]:7080").socket_address.address == "::1"
    sock = address("0.0.0.0:7080").socket_address  # the instance's own address (vm1's)
    assert (sock.address, sock.port_value) == ("127.0.0.11", 7080)
    with pytest.raises(SnapshotInvalid, match=r"spec\.ingress\[0\]\.defaultEndpoint: is the sidecar's own listener \(127\.0\.0\.1:21000\)"):
        build_proxy(_snapshot(_sidecar("{port: {number: 9080, protocol: HTTP}, bind: 127.0.0.1, "
                                       "defaultEndpoint: '127.0.0.1:21000'}")), ProxyInfo(node="vm1", secrets_dir="/s"))


def test_the_protocol_is_the_inbound_side_of_every_generator_and_plugin():
    """TCP: tcp_proxy, no inbound route, the RBAC network filter of a TCP port; the caller side (vm2's details has no
    upstream to productpage, so vm1's own outbound) keeps the registration's protocol."""
    text = _sidecar("{port: {number: 21000, protocol: TCP}}") + """---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: pp}
spec: {selector: {matchLabels: {app: productpage}}, rules: [{from: [{source: {principals: [x/ns/default/sa/y]}}]}]}
"""
    built = _built(text)
    listener = _by_name(built, LISTENER, "inbound:productpage-v1")
    names = [f.name for chain in listener.filter_chains for f in chain.filters]
    assert names == ["envoy.filters.network.rbac", "envoy.filters.network.tcp_proxy"]
    assert b"h2" not in listener.filter_chains[0].transport_socket.typed_config.value  # no ALPN
    assert "inbound:productpage-v1" not in {r.name for r in built[ROUTE]}
    assert "inbound:reviews-v1" in {r.name for r in built[ROUTE]}  # reviews' Sidecar is not this one
    grpc = _by_name(_built(_sidecar("{port: {number: 9080, protocol: GRPC}}")), CLUSTER, "local_app:productpage-v1")
    assert "envoy.extensions.upstreams.http.v3.HttpProtocolOptions" in grpc.typed_extension_protocol_options


def test_an_entrys_connection_pool_replaces_inbound_connection_pool_for_its_port():
    text = HEAD + f"spec: {{{PP}, inboundConnectionPool: {{tcp: {{maxConnections: 10, connectTimeout: 2s}}}}, " \
        "ingress: [{port: {number: 9080, protocol: HTTP}, connectionPool: {tcp: {maxConnections: 70}}}]}\n"
    cluster = _by_name(_built(text), CLUSTER, "local_app:productpage-v1")
    assert cluster.circuit_breakers.thresholds[0].max_connections.value == 70
    assert cluster.connect_timeout.seconds == 5  # not inboundConnectionPool's 2s: the entry's pool is the port's
    only_top = _by_name(_built(text.replace(", connectionPool: {tcp: {maxConnections: 70}}", "")), CLUSTER,
                        "local_app:productpage-v1")
    assert only_top.circuit_breakers.thresholds[0].max_connections.value == 10


def test_tls_under_permissive_keeps_mesh_names_on_the_mtls_chain_and_refuses_plaintext():
    listener = _by_name(_built(_sidecar(f"{{port: {{number: 9080, protocol: HTTP}}, {TLS}}}", PERMISSIVE)), LISTENER,
                        "inbound:productpage-v1")
    chains = {ch.name: ch for ch in listener.filter_chains}
    assert set(chains) == {"mtls", "ingress-tls"}
    assert list(chains["mtls"].filter_chain_match.server_names) == [
        "productpage", "productpage.dc1.internal.meshcore", "*.productpage.dc1.internal.meshcore"]
    assert chains["ingress-tls"].filter_chain_match.transport_protocol == "tls"
    assert not chains["ingress-tls"].filter_chain_match.server_names
    assert b"/t/pp.crt" in chains["ingress-tls"].transport_socket.typed_config.value


def test_the_golden_case_is_accepted_by_envoy(tmp_path):
    """Every field at once (vm1-ingress), its certificate files made real for Envoy's validate mode."""
    text = (ROOT / "meshcore/policies/sidecar/testdata/vm1-ingress.input.yaml").read_text()
    for stem in ("productpage-ecdsa", "productpage-rsa", "reviews", "partners-ca"):
        crt, key = _cert(tmp_path, stem)
        text = text.replace(f"/etc/meshcore/tls/{stem}.crt", crt).replace(f"/etc/meshcore/tls/{stem}.key", key)
    text = text.replace("      caCrl: /etc/meshcore/tls/partners-ca.crl\n", "")  # a CRL file Envoy would parse
    built = build_proxy(_snapshot(text), ProxyInfo(node="vm1", secrets_dir=str(tmp_path)))
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_docs_example_builds():
    """docs/traffic.md's ingress[] example: on vm1, productpage's app on the socket, TLS beside the mesh's mTLS."""
    import re

    text = (ROOT / "docs" / "traffic.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "ingress:" in b and "kind: Sidecar" in b]
    built = _built(block)
    assert _app_address(built, "productpage-v1").pipe.path == "/run/productpage/app.sock"
    listener = _by_name(built, LISTENER, "inbound:productpage-v1")
    assert [ch.name for ch in listener.filter_chains] == ["mtls", "ingress-tls"]
    assert listener.address.socket_address.address == "0.0.0.0"
    label = dict(listener.metadata.filter_metadata["meshcore.sidecar_ingress"])
    assert label == {"sidecar": "default/productpage", "entry": "ingress[0]", "port": 9080, "protocol": "HTTP",
                     "name": "http"}


def test_the_engine_rebuilds_what_an_ingress_change_reaches():
    """Through the engine's incremental path: after each change (ingress added, its protocol and endpoint changed, a
    PeerAuthentication beside it, removed) every proxy's published config equals a full rebuild's."""
    from tests.controlplane._mesh import generated_catalog
    from tests.controlplane.test_engine_incremental import _engine, _full, _wire

    catalog = generated_catalog()
    target = next(i for i in catalog.instances if i.service == "s3")
    engine = _engine(catalog)

    def sidecar(protocol: str, endpoint: str, tls: str = TLS) -> list:
        return load_documents(HEAD.replace("name: pp", "name: s3") + f"spec: {{workloadSelector: {{labels: {{app: s3}}}}, "
                              f"ingress: [{{port: {{number: {target.port}, protocol: {protocol}}}, "
                              f"defaultEndpoint: '{endpoint}', {tls}}}]}}\n", "s.yaml")

    permissive = load_documents(PERMISSIVE.replace("productpage", "s3").lstrip("-\n"), "pa.yaml")
    for resources in (permissive + sidecar("HTTP", "127.0.0.1:7001"), permissive + sidecar("TCP", "unix:///run/s3"),
                      sidecar("TCP", "unix:///run/s3", "bind: 0.0.0.0"), permissive, []):
        engine.resources_changed(list(resources))
        assert engine.flush()
        assert not {n: p.error for n, p in engine.proxies.items() if p.error}
        for node in (n.name for n in catalog.nodes):
            assert _wire(engine.cache, node) == _full(engine.snapshot, node)[0], node


def test_analyze_reports_what_the_plugin_refuses():
    """meshctl analyze MC0108, from the same checks as the plugin: one finding per instance and problem, at its path."""
    from meshcore.analyze import analyze

    text = _sidecar(f"{{port: {{number: 9080, protocol: HTTP}}, bind: 10.9.9.9, {TLS}}}") + "---\n" + \
        HEAD.replace("name: pp", "name: rv") + "spec: {workloadSelector: {labels: {app: reviews}}, " \
        "ingress: [{port: {number: 1234, protocol: TCP}}]}\n"
    snapshot = _snapshot(text)
    found = {(f.code, f.severity, f.resource, f.path) for f in analyze(load_documents(text, "s.yaml"), snapshot.catalog)}
    assert found == {("MC0108", "error", "Sidecar/default/pp", "spec.ingress[0].bind"),
                     ("MC0108", "error", "Sidecar/default/pp", "spec.ingress[0].tls"),
                     ("MC0108", "error", "Sidecar/default/rv", "spec.ingress")}  # each of reviews' 3 instances
    assert not [f for f in analyze(load_documents(_sidecar("{port: {number: 9080, protocol: HTTP}}"), "s.yaml"),
                                   snapshot.catalog) if f.code == "MC0108"]


def test_authz_check_decides_with_the_inbound_protocol_the_ingress_gives():
    """meshctl authz check (and the dry run) see productpage as the proxy does: TCP under a TCP ingress entry."""
    from meshcore.authz.check import CheckQuery, check

    [before] = check(_snapshot(""), CheckQuery(destination="productpage"))["results"]
    [after] = check(_snapshot(_sidecar("{port: {number: 9080, protocol: TCP}}")),
                    CheckQuery(destination="productpage"))["results"]
    assert (before["protocol"], after["protocol"]) == ("http", "tcp")
