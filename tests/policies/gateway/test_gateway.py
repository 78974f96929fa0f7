"""Gateway: validation with exact field paths, VirtualService binding, and the listeners Envoy accepts."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.policies.gateway.servers import host_intersection
from meshcore.resources.loader import load_documents, validate_set
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import LISTENER, ROUTE
from tests.traffic.test_build import _validate_with_envoy
from tests.xds.test_build_golden import _folder_case, _snapshot

GW = "apiVersion: networking.mesh.io/v1beta1\nkind: Gateway\n"
VS = "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\n"


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "gw.yaml")
    return {e.path: e.message for e in info.value.errors}


def test_errors_have_exact_paths():
    errs = _errors(GW + """metadata: {name: gw}
spec:
  servers:
  - port: {number: 443, protocol: TLS, targetPort: 8443}
    hosts: ["a.example.com:443"]
  - port: {number: 8443, protocol: https}
    hosts: ["bad_ns!/x.example.com"]
  - port: {number: 8444, protocol: HTTPS}
    hosts: [x.example.com]
    tls: {mode: PASSTHROUGH, credentialName: secret, serverCertificate: relative.crt}
  - port: {number: 8445, protocol: HTTPS}
    hosts: [x.example.com]
    tls: {mode: ISTIO_MUTUAL, caCertificates: /ca.crt}
  - port: {number: 8446, protocol: HTTPS}
    hosts: [x.example.com]
    tls: {mode: SIMPLE, subjectAltNames: [a]}
  - port: {number: 80, protocol: HTTP}
    hosts: [x.example.com]
    tls: {mode: SIMPLE}
  - port: {number: 81, protocol: HTTP}
    hosts: [x.example.com]
    defaultEndpoint: 127.0.0.1:8080
""")
    s = "spec.servers"
    assert "Kubernetes Service" in errs[f"{s}[0].port.targetPort"]
    assert "no port" in errs[f"{s}[0].hosts[0]"]
    assert "namespace" in errs[f"{s}[1].hosts[0]"]
    assert "an HTTPS server needs tls" not in errs.get(f"{s}[1].tls", "")
    assert "Kubernetes secret" in errs[f"{s}[2].tls.credentialName"]
    assert "absolute path" in errs[f"{s}[2].tls.serverCertificate"]
    assert "mesh CA" in errs[f"{s}[3].tls.caCertificates"]
    assert "MUTUAL" in errs[f"{s}[4].tls.mode"]
    assert "only tls.httpsRedirect" in errs[f"{s}[5].tls"]
    assert "Sidecar" in errs[f"{s}[6].defaultEndpoint"]


def test_one_family_per_port_and_one_server_per_tls_host():
    errs = _errors(GW + """metadata: {name: gw}
spec:
  servers:
  - {port: {number: 8443, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: SIMPLE}}
  - {port: {number: 8443, protocol: HTTP}, hosts: [b.example.com]}
  - {port: {number: 8443, protocol: HTTPS}, hosts: ["*/a.example.com"], tls: {mode: SIMPLE}}
""")
    assert "plaintext and TLS servers need different ports" in errs["spec.servers[1].port"]
    assert "already served by servers[0]" in errs["spec.servers[2].hosts"]
    errs = _errors(GW + "metadata: {name: gw}\nspec: {servers: [{port: {number: 8443, protocol: HTTPS}, tls: {}}]}\n")
    assert errs["spec.servers[0].hosts"] == "required field is missing"


def test_virtual_service_hosts_and_gateways():
    # External names only when the VirtualService is bound to Gateways alone (the sidecars route service names).
    load_documents(VS + "metadata: {name: a}\nspec: {hosts: [shop.example.com, '*.example.org'], gateways: [gw],"
                        " http: [{route: [{destination: {host: productpage}}]}]}\n", "vs.yaml")
    # Bound to the sidecars too: a DNS name must be a ServiceEntry's host (checked across the set).
    docs = load_documents(VS + "metadata: {name: a}\nspec: {hosts: [shop.example.com], gateways: [mesh, gw],"
                               " http: [{route: [{destination: {host: productpage}}]}]}\n", "vs.yaml")
    [err] = validate_set(docs)
    assert err.path == "spec.hosts[0]" and "neither a Consul service nor a ServiceEntry host" in err.message
    errs = _errors(VS + "metadata: {name: a}\nspec: {hosts: [web], gateways: ['Bad/Name'],"
                        " http: [{route: [{destination: {host: web}}]}]}\n")
    assert "<namespace>/<name>" in errs["spec.gateways[0]"]
    # A host is routed once for the sidecars; a Gateway's VirtualService for it is no conflict.
    docs = load_documents(VS + "metadata: {name: a}\nspec: {hosts: [web], http: [{route: [{destination: {host: web}}]}]}"
                          "\n---\n" + VS + "metadata: {name: b}\nspec: {hosts: [web], gateways: [gw], "
                          "http: [{route: [{destination: {host: web}}]}]}\n", "vs.yaml")
    assert validate_set(docs) == []


@pytest.mark.parametrize("server,vs,expected", [
    ("a.example.com", "a.example.com", "a.example.com"), ("*", "a.example.com", "a.example.com"),
    ("a.example.com", "*", "a.example.com"), ("*.example.com", "a.example.com", "a.example.com"),
    ("a.example.com", "*.example.com", "a.example.com"), ("*.example.com", "example.com", None),
    ("*.example.com", "*.b.example.com", "*.b.example.com"), ("a.example.com", "b.example.com", None),
])
def test_host_intersection(server, vs, expected):
    assert host_intersection(server, vs) == expected


def _cert(tmp: Path, name: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .sign(key, hashes.SHA256()))
    crt, pem = tmp / f"{name}.crt", tmp / f"{name}.key"
    crt.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    return str(crt), str(pem)


def test_golden_case_is_accepted_by_envoy(tmp_path):
    case = Path(__file__).resolve().parents[3] / "meshcore/policies/gateway/testdata/gateway-bookinfo.input.yaml"
    text = case.read_text()
    for stem in ("bookinfo", "partners-rsa"):
        crt, key = _cert(tmp_path, stem)
        text = text.replace(f"/etc/meshcore/gateway/{stem}.crt", crt).replace(f"/etc/meshcore/gateway/{stem}.key", key)
    ca, _ = _cert(tmp_path, "partners-ca")
    text = text.replace("/etc/meshcore/gateway/partners-ca.crt", ca)
    text = text.replace("      caCrl: /etc/meshcore/gateway/partners-ca.crl\n", "")
    built = build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir=str(tmp_path)))
    assert {l.name for l in built[LISTENER]} >= {"gateway:127.0.0.1:8443", "gateway:127.0.0.1:9443"}
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_clashes_refuse_the_proxy_config():
    text = GW + """metadata: {name: a}
spec:
  servers: [{port: {number: 8443, protocol: HTTPS}, hosts: [x.example.com], tls: {mode: SIMPLE}}]
---
""" + GW + """metadata: {name: b}
spec:
  servers:
  - {port: {number: 8443, protocol: HTTPS}, hosts: ["*"], tls: {mode: SIMPLE}}
  - {port: {number: 8443, protocol: HTTPS}, hosts: ["x.example.com"], tls: {mode: SIMPLE}}
  - {port: {number: 8080, protocol: HTTP}, hosts: ["*"]}
"""
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(_snapshot(text), ProxyInfo(node="gateway", secrets_dir="/s"))
    problems = "\n".join(info.value.problems)
    assert "default/b" in problems and "x.example.com on port 8443 already served by Gateway default/a" in problems
    assert "127.0.0.1:8080 is already a listener of this proxy" in problems


def test_gateway_selecting_nothing_changes_nothing():
    plain = build_proxy(_snapshot(""), ProxyInfo(node="gateway", secrets_dir="/s"))
    other = build_proxy(_snapshot(GW + "metadata: {name: a}\nspec: {selector: {app: nope}, servers: "
                                  "[{port: {number: 9000, protocol: HTTP}, hosts: ['*']}]}\n"),
                        ProxyInfo(node="gateway", secrets_dir="/s"))
    for kind in (LISTENER, ROUTE):
        assert [m.SerializeToString() for m in plain[kind]] == [m.SerializeToString() for m in other[kind]]


def test_claim_matches_only_at_gateways():
    rule = ("http: [{match: [{headers: {'@request.auth.claims.group': {exact: beta}}}], "
            "route: [{destination: {host: productpage}}]}]")
    load_documents(VS + f"metadata: {{name: a}}\nspec: {{hosts: ['*'], gateways: [gw], {rule}}}\n", "vs.yaml")
    errs = _errors(VS + f"metadata: {{name: a}}\nspec: {{hosts: [productpage], {rule}}}\n")
    assert "claims are matched at ingress gateways" in errs['spec.http[0].match[0].headers["@request.auth.claims.group"]']
    errs = _errors(VS + "metadata: {name: a}\nspec: {hosts: ['*'], gateways: [gw], http: [{match: [{headers: "
                        "{'@request.auth.claim.group': {}}}], route: [{destination: {host: productpage}}]}]}\n")
    assert "@request.auth.claims.<claim>" in next(iter(errs.values()))


def test_istio_default_selector_matches_every_ingress_gateway():
    from meshcore.policies.gateway.spec import parse

    spec = parse({"selector": {"istio": "ingressgateway"}, "servers": []})
    assert spec.selects({"app": "ingress-gateway"})
    assert not spec.selects({"app": "ingress-gateway", "istio": "egressgateway"})
    assert not parse({"selector": {"istio": "ingressgateway", "app": "x"}, "servers": []}).selects({"app": "y"})


PASSTHROUGH_CASE = Path(__file__).resolve().parents[3] / "meshcore/policies/gateway/testdata/gateway-passthrough.input.yaml"


def test_passthrough_validation():
    errs = _errors(GW + """metadata: {name: gw}
spec:
  servers:
  - {port: {number: 443, protocol: TLS}, hosts: [a.example.com], tls: {mode: SIMPLE}}
  - {port: {number: 444, protocol: TLS}, hosts: [a.example.com], tls: {mode: AUTO_PASSTHROUGH}}
  - port: {number: 445, protocol: HTTPS}
    hosts: [a.example.com]
    tls: {mode: PASSTHROUGH, serverCertificate: /a.crt, privateKey: /a.key, minProtocolVersion: TLSV1_3}
""")
    s = "spec.servers"
    assert not any(k.startswith(f"{s}[0]") for k in errs)  # TLS terminated here, routed as TCP (:mod:`.tcp`)
    assert "mesh gateway between datacenters" in errs[f"{s}[1].tls.mode"]
    assert "PASSTHROUGH does not terminate TLS" in errs[f"{s}[2].tls.serverCertificate"]
    assert "PASSTHROUGH does not terminate TLS" in errs[f"{s}[2].tls.minProtocolVersion"]
    errs = _errors(GW + """metadata: {name: gw}
spec:
  servers:
  - {port: {number: 443, protocol: TLS}, hosts: [a.example.com], tls: {mode: PASSTHROUGH}}
  - {port: {number: 443, protocol: HTTPS}, hosts: [a.example.com], tls: {mode: SIMPLE}}
  - {port: {number: 443, protocol: HTTP}, hosts: [b.example.com]}
""")
    assert "already served by servers[0]" in errs["spec.servers[1].hosts"]  # one SNI name, one server of a port
    assert "plaintext and TLS servers need different ports" in errs["spec.servers[2].port"]


def test_passthrough_chains_forward_without_terminating():
    text, node = _folder_case(PASSTHROUGH_CASE)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    listener = next(l for l in built[LISTENER] if l.name == "gateway:127.0.0.1:9444")
    (chain,) = listener.filter_chains
    assert list(chain.filter_chain_match.server_names) == ["partner.passthrough.example"]
    assert not chain.HasField("transport_socket")  # the backend's TLS, untouched
    proxy = tcp_proxy_pb2.TcpProxy()
    assert chain.filters[0].typed_config.Unpack(proxy) and proxy.cluster == "outbound:db.passthrough.example|ingress-gateway"
    assert "gateway:127.0.0.1:9444" not in {r.name for r in built[ROUTE]}  # nothing routes HTTP on that port
    shared = next(l for l in built[LISTENER] if l.name == "gateway:127.0.0.1:9443")
    assert [bool(ch.HasField("transport_socket")) for ch in shared.filter_chains].count(True) == 1  # shop.example.com


def test_passthrough_refuses_an_http_mesh_backend_and_listens_only_when_routed():
    gateway = GW + """metadata: {name: gw}
spec:
  servers: [{port: {number: 9445, protocol: TLS}, hosts: ["*"], tls: {mode: PASSTHROUGH}}]
"""
    plain = build_proxy(_snapshot(gateway), ProxyInfo(node="gateway", secrets_dir="/s"))
    assert "gateway:127.0.0.1:9445" not in {l.name for l in plain[LISTENER]}  # no tls[] rule routes it yet
    routed = gateway + "---\n" + VS + """metadata: {name: v}
spec:
  hosts: [details]
  gateways: [gw]
  tls: [{match: [{sniHosts: [details]}], route: [{destination: {host: details}}]}]
"""
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(_snapshot(routed), ProxyInfo(node="gateway", secrets_dir="/s"))
    assert "register the backend with protocol tcp" in " ".join(info.value.problems)


def test_passthrough_case_is_accepted_by_envoy(tmp_path):
    text, node = _folder_case(PASSTHROUGH_CASE)
    crt, key = _cert(tmp_path, "shop")
    text = text.replace("/etc/meshcore/gateway/shop.crt", crt).replace("/etc/meshcore/gateway/shop.key", key)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    assert {"gateway:127.0.0.1:9443", "gateway:127.0.0.1:9444"} <= {l.name for l in built[LISTENER]}
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


TCP_CASE = Path(__file__).resolve().parents[3] / "meshcore/policies/gateway/testdata/gateway-tcp.input.yaml"

# Istio's samples/tcp-echo/tcp-echo-all-v1.yaml and tcp-echo-20-v2.yaml, apiVersion changed to meshcore's (the
# service tcp-echo is registered beside bookinfo for the check below).
TCP_ECHO_ALL_V1 = """apiVersion: networking.mesh.io/v1beta1
kind: Gateway
metadata:
  name: tcp-echo-gateway
spec:
  selector:
    istio: ingressgateway
  servers:
  - port:
      number: 31400
      name: tcp
      protocol: TCP
    hosts:
    - "*"
---
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata:
  name: tcp-echo-destination
spec:
  host: tcp-echo
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata:
  name: tcp-echo
spec:
  hosts:
  - "*"
  gateways:
  - tcp-echo-gateway
  tcp:
  - match:
    - port: 31400
    route:
    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
"""
_V1_ROUTE = """    - destination:
        host: tcp-echo
        port:
          number: 9000
        subset: v1
"""
# tcp-echo-20-v2.yaml: tcp-echo-all-v1.yaml's VirtualService with the route split 80/20.
TCP_ECHO_20_V2 = TCP_ECHO_ALL_V1.split("---\n")[2].replace(_V1_ROUTE, _V1_ROUTE + """      weight: 80
""" + _V1_ROUTE.replace("v1", "v2") + """      weight: 20
""")


def test_tcp_server_validation():
    errs = _errors(GW + """metadata: {name: gw}
spec:
  servers:
  - {port: {number: 31400, protocol: TCP}, hosts: ["*"], tls: {mode: SIMPLE}}
  - {port: {number: 31401, protocol: TLS}, hosts: [a.example.com]}
  - {port: {number: 31402, protocol: GRPC-WEB}, hosts: ["*"]}
  - {port: {number: 31403, protocol: MONGO}, hosts: ["*"]}
  - {port: {number: 31404, protocol: mongo}, hosts: ["*"], tls: {httpsRedirect: true}}
""")
    s = "spec.servers"
    assert "use protocol TLS with tls.mode SIMPLE" in errs[f"{s}[0].tls"]
    assert "a TLS server needs tls" in errs[f"{s}[1].tls"]
    assert "grpc_web" in errs[f"{s}[2].port.protocol"]
    assert "plaintext TCP" in errs[f"{s}[4].tls"]
    assert not any(k.startswith(f"{s}[3]") for k in errs)
    errs = _errors(GW + """metadata: {name: gw}
spec:
  servers:
  - {port: {number: 31403, protocol: MONGO}, hosts: ["*"]}
  - {port: {number: 31403, protocol: HTTP}, hosts: ["*"]}
""")
    assert "plaintext HTTP and TCP servers need different ports" in errs[f"{s}[1].port"]
    load_documents(GW + """metadata: {name: gw}
spec:
  servers:
  - {port: {number: 443, protocol: TLS}, hosts: [a.example.com], tls: {mode: MUTUAL, caCertificates: /ca.pem}}
  - {port: {number: 443, protocol: TLS}, hosts: [b.example.com], tls: {mode: ISTIO_MUTUAL}}
  - {port: {number: 443, protocol: TLS}, hosts: [c.example.com], tls: {mode: PASSTHROUGH}}
""", "gw.yaml")


def _tcp_proxy(chain) -> tcp_proxy_pb2.TcpProxy:
    proxy = tcp_proxy_pb2.TcpProxy()
    assert chain.filters[0].typed_config.Unpack(proxy)
    return proxy


def test_tcp_chains_route_by_tcp_rules():
    text, node = _folder_case(TCP_CASE)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    listeners = {l.name: l for l in built[LISTENER]}
    (echo,) = listeners["gateway:127.0.0.1:31400"].filter_chains
    assert not echo.HasField("transport_socket") and not echo.HasField("filter_chain_match")
    assert {(w.name, w.weight) for w in _tcp_proxy(echo).weighted_clusters.clusters} == {
        ("outbound:reviews|ingress-gateway|v1", 80), ("outbound:reviews|ingress-gateway|v2", 20)}
    (mongo,) = listeners["gateway:127.0.0.1:31401"].filter_chains
    assert _tcp_proxy(mongo).cluster == "outbound:ratings|ingress-gateway"  # the rule's other alternative
    db, rest = listeners["gateway:127.0.0.1:9443"].filter_chains
    assert list(db.filter_chain_match.server_names) == ["db.tcp.example"]  # tls[] by SNI, after terminating
    assert list(rest.filter_chain_match.server_names) == ["*.tcp.example"]
    assert db.HasField("transport_socket") and rest.HasField("transport_socket")
    assert _tcp_proxy(db).cluster.startswith("outbound:db.tcp.example")
    assert _tcp_proxy(rest).cluster == "outbound:details|ingress-gateway"
    (mesh_tls,) = listeners["gateway:127.0.0.1:9444"].filter_chains
    assert mesh_tls.HasField("transport_socket") and _tcp_proxy(mesh_tls).cluster == "outbound:ratings|ingress-gateway"
    assert not {"gateway:127.0.0.1:31400", "gateway:127.0.0.1:9443"} & {r.name for r in built[ROUTE]}


def test_tcp_server_without_a_rule_does_not_listen_and_clashes_refuse():
    gateway = GW + "metadata: {name: gw}\nspec: {servers: [{port: {number: 31400, protocol: TCP}, hosts: ['*']}]}\n"
    plain = build_proxy(_snapshot(gateway), ProxyInfo(node="gateway", secrets_dir="/s"))
    assert "gateway:127.0.0.1:31400" not in {l.name for l in plain[LISTENER]}
    other = GW + "metadata: {name: web}\nspec: {servers: [{port: {number: 31400, protocol: HTTP}, hosts: ['*']}]}\n"
    with pytest.raises(SnapshotInvalid) as info:
        build_proxy(_snapshot(gateway + "---\n" + other), ProxyInfo(node="gateway", secrets_dir="/s"))
    assert "port 31400 already serves plaintext TCP for Gateway default/gw" in " ".join(info.value.problems)


def test_istio_tcp_echo_samples_verbatim(tmp_path):
    """Istio's tcp-echo sample files validate and route: all to v1, then 80/20 (tcp-echo registered on port 9000)."""
    from tests.policies.gateway._tcp_echo import tcp_echo_snapshot

    for sample, want in ((TCP_ECHO_ALL_V1, {"outbound:tcp-echo|ingress-gateway|v1"}),
                         ("---\n".join(TCP_ECHO_ALL_V1.split("---\n")[:2]) + "---\n" + TCP_ECHO_20_V2, {"outbound:tcp-echo|ingress-gateway|v1", "outbound:tcp-echo|ingress-gateway|v2"})):
        built = build_proxy(tcp_echo_snapshot(tmp_path, sample), ProxyInfo(node="gateway", secrets_dir="/s"))
        (chain,) = next(l for l in built[LISTENER] if l.name.endswith(":31400")).filter_chains
        proxy = _tcp_proxy(chain)
        assert ({proxy.cluster} if proxy.cluster else {w.name for w in proxy.weighted_clusters.clusters}) == want


def test_tcp_case_is_accepted_by_envoy(tmp_path):
    text, node = _folder_case(TCP_CASE)
    crt, key = _cert(tmp_path, "tcp")
    text = text.replace("/etc/meshcore/gateway/tcp.crt", crt).replace("/etc/meshcore/gateway/tcp.key", key)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
