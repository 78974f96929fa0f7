"""OIDC discovery and the JWKS trust store: the control plane's discovery against a loopback HTTPS issuer of a test
CA (retries, failures kept in status, refresh), the CA a proxy verifies an https JWKS server with (mesh config, the
agent's find, none), and a real Envoy accepting a token whose keys it fetched over HTTPS from the discovered
``jwks_uri``, verified against the test CA."""

from __future__ import annotations

import http.client
import json
import threading
import time

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from meshcore.authz.providers import parse_mesh_settings
from meshcore.compose import build_proxy
from meshcore.controlplane.oidc_discovery import OidcDiscovery, https_fetcher, with_discovered
from meshcore.errors import DiscoveryError, SnapshotInvalid, ValidationError
from meshcore.policies.request_authentication.discovery import UNAVAILABLE_JWKS, jwks_uri_of
from meshcore.policies.request_authentication.jwt import jwks_cluster, jwt_provider
from meshcore.policies.request_authentication.spec import JwtRule
from meshcore.policies.request_authentication.trust import Discovered, JwksSettings, NoTrustStore, trusted_ca
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo
from meshcore.system_ca import DEFAULT_SYSTEM_CA_BUNDLE, find_system_ca_bundle

from .._catalog import write_catalog
from .._envoy import HeadersApp, StaticEnvoy, wait_listening
from ._https import OidcServer, jwks_of, make_ca

PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")


def _policies(issuer: str) -> str:
    return PERMISSIVE + f"""apiVersion: security.mesh.io/v1beta1
kind: RequestAuthentication
metadata: {{name: web-jwt, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  jwtRules: [{{issuer: "{issuer}"}}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: web-allow, namespace: default}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules: [{{from: [{{source: {{requestPrincipals: ["*"]}}}}]}}]
"""


def test_system_bundle_is_the_first_known_path_that_exists():
    assert find_system_ca_bundle(exists=lambda p: p.startswith("/etc/pki")) == \
        "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"  # RHEL's, before the older RHEL 6 link
    assert find_system_ca_bundle(exists=lambda p: False) == ""


def test_trusted_ca_order():
    settings = parse_mesh_settings("""
jwks:
  caCertificates: /etc/meshcore/jwks-ca.pem
  servers:
  - {host: Keys.Corp.example, port: 8443, caCertificates: /etc/pki/corp-8443.pem}
  - {host: keys.corp.example, caCertificates: /etc/pki/corp.pem}
""").jwks
    assert trusted_ca(settings, "", "https://keys.corp.example:8443/k") == "/etc/pki/corp-8443.pem"
    assert trusted_ca(settings, "", "https://keys.corp.example/k") == "/etc/pki/corp.pem"
    assert trusted_ca(settings, "", "https://other.example/k") == "/etc/meshcore/jwks-ca.pem"
    assert trusted_ca(None, "/etc/ssl/cert.pem", "https://other.example/k") == "/etc/ssl/cert.pem"  # the agent's find
    assert trusted_ca(None, None, "https://other.example/k") == DEFAULT_SYSTEM_CA_BUNDLE  # not reported: Debian's
    with pytest.raises(NoTrustStore, match="jwks.caCertificates"):
        trusted_ca(None, "", "https://other.example/k", "vm1")  # the agent looked and found none


def test_mesh_config_errors_have_paths():
    with pytest.raises(ValidationError) as info:
        parse_mesh_settings("""
jwks:
  caCertificates: relative.pem
  servers: [{host: b}]
  discovery: {refresh: 0s}
""", "mesh.yaml")
    errors = {e.path: e.message for e in info.value.errors}
    assert "absolute path" in errors["jwks.caCertificates"]
    assert "jwks.servers[0].caCertificates" in errors
    assert "jwks.discovery.refresh" in errors
    with pytest.raises(ValidationError, match="already given at servers"):
        parse_mesh_settings("jwks: {servers: [{host: a, caCertificates: /a.pem}, {host: A, caCertificates: /b.pem}]}")


def _catalog_and_resources(root, issuer: str):
    from meshcore.catalog.files import FileCatalogSource

    defs = write_catalog(root, [{"name": "web"}])
    return defs, FileCatalogSource(root).poll(None, 0).catalog, load_documents(_policies(issuer), "p.yaml")


def test_no_system_bundle_refuses_the_proxy_config_with_the_remedy(tmp_path):
    _defs, catalog, resources = _catalog_and_resources(tmp_path, "https://issuer.example")
    settings = MeshSettings(jwks=JwksSettings(discovered=(Discovered("https://issuer.example",
                                                                     "https://keys.example/jwks"),)))
    snap = MeshSnapshot.build(catalog, resources, settings=settings)
    with pytest.raises(SnapshotInvalid, match="found none.*jwks.caCertificates"):
        build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s", system_ca_bundle=""))
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s", system_ca_bundle="/etc/ssl/cert.pem"))
    [cluster] = [c for c in built["type.googleapis.com/envoy.config.cluster.v3.Cluster"] if c.name.startswith("jwks|")]
    assert cluster.name == "jwks|https|keys.example|443"
    assert "/etc/ssl/cert.pem" in str(cluster.transport_socket)


def test_undiscovered_issuer_gets_keys_no_token_verifies_against():
    rule = JwtRule(issuer="https://issuer.example")
    assert jwt_provider(rule).local_jwks.inline_string == UNAVAILABLE_JWKS
    found = JwksSettings(discovered=(Discovered("https://issuer.example", "https://keys.example/jwks"),))
    assert jwt_provider(rule, found).remote_jwks.http_uri.uri == "https://keys.example/jwks"
    failing = JwksSettings(discovered=(Discovered("https://issuer.example", "", "unreachable"),))
    assert jwt_provider(rule, failing).local_jwks.inline_string == UNAVAILABLE_JWKS


def test_openid_configuration_is_checked():
    assert jwks_uri_of("https://i.example", {"issuer": "https://i.example", "jwks_uri": "https://k/j"}) == "https://k/j"
    for document, what in (([], "not a JSON object"), ({"issuer": "https://evil"}, "not 'https://i.example'"),
                           ({}, "no jwks_uri"), ({"jwks_uri": "file:///etc/passwd"}, "not an http")):
        with pytest.raises(ValueError, match=what):
            jwks_uri_of("https://i.example", document)


def test_discovery_retries_keeps_the_last_found_and_refreshes():
    now = [0.0]
    answers: list = []

    def fetch(url: str):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    published: list = []
    disc = OidcDiscovery(JwksSettings(discovery_refresh_s=600), published.append, threading.Event(), fetch=fetch,
                         clock=lambda: now[0])
    issuer = "https://i.example"
    disc.want(frozenset({issuer}))
    answers[:] = [DiscoveryError("reset"), {"jwks_uri": "https://k.example/1"}]  # one retry inside the round
    assert disc.run_once() == pytest.approx(600)
    assert published[-1] == (Discovered(issuer, "https://k.example/1"),)
    now[0] = 600
    answers[:] = [DiscoveryError("down")] * 3  # every attempt of the refresh round fails
    delay = disc.run_once()
    assert delay == pytest.approx(10)  # retried soon, not at the next refresh
    [found] = published[-1]
    assert found.jwks_uri == "https://k.example/1" and "down" in found.error and "keep fetching" in found.error
    status = disc.source_status()
    assert status.state == "error" and status.rejected[0].key == issuer
    now[0] = 610
    answers[:] = [{"jwks_uri": "https://k.example/2"}]  # the issuer moved its keys
    disc.run_once()
    assert published[-1] == (Discovered(issuer, "https://k.example/2"),) and disc.source_status().state == "ok"
    calls = len(published)
    disc.run_once()  # nothing due, nothing changed: nothing published
    assert len(published) == calls
    disc.want(frozenset())
    disc.run_once()
    assert published[-1] == () and disc.source_status() is None


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """An HTTPS issuer of a test CA, discovered by the control plane's code, and an Envoy verifying its tokens."""
    root = tmp_path_factory.mktemp("oidc")
    ca, cert, key = make_ca(root)
    signing = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with OidcServer(cert, key, jwks_of(signing)) as issuer:
        defs, catalog, resources = _catalog_and_resources(root / "catalog", issuer.issuer)
        settings = MeshSettings(jwks=parse_mesh_settings(f"jwks: {{caCertificates: {ca}, discovery: "
                                                         f"{{caCertificates: {ca}}}}}").jwks)
        published: list = []
        disc = OidcDiscovery(settings.jwks, published.append, threading.Event())
        disc.observe(MeshSnapshot.build(catalog, resources, settings=settings))
        disc.run_once()
        settings = with_discovered(settings, published[-1])
        built = build_proxy(MeshSnapshot.build(catalog, resources, settings=settings),
                            ProxyInfo(node="n1", secrets_dir="/s", system_ca_bundle=""))  # the mesh config's CA
        from http.server import ThreadingHTTPServer

        app = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), HeadersApp)
        app.daemon_threads = True
        threading.Thread(target=app.serve_forever, daemon=True).start()
        try:
            with StaticEnvoy(built, tmp_path_factory.mktemp("envoy")):
                port = defs["web"]["connect"]["sidecar_service"]["port"]
                wait_listening("127.0.0.1", port)
                yield {"port": port, "key": signing, "issuer": issuer, "published": published[-1], "ca": ca}
        finally:
            app.shutdown()
            app.server_close()


def _get(world, token: str | None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", world["port"], timeout=5)
    try:
        conn.request("GET", "/", headers={"Host": "web", **({"Authorization": f"Bearer {token}"} if token else {})})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _token(world, key=None) -> str:
    now = int(time.time())
    return jwt.encode({"iss": world["issuer"].issuer, "sub": "alice", "iat": now, "exp": now + 300},
                      key or world["key"], algorithm="RS256", headers={"kid": "k1"})


def test_discovered_jwks_fetched_over_https_with_the_test_ca(world):
    assert world["published"] == (Discovered(world["issuer"].issuer, world["issuer"].issuer + "/keys"),)
    deadline = time.monotonic() + 20  # the first request fetches the keys through the jwks cluster
    while (status := _get(world, _token(world))) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200
    assert world["issuer"].hits.get("/keys", 0) >= 1
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert _get(world, _token(world, other)) == 401
    assert _get(world, None) == 403  # no token: RequestAuthentication passes it, the policy wants a principal


def test_discovery_without_the_ca_fails_verification(world):
    with pytest.raises(DiscoveryError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
        https_fetcher("")(world["issuer"].issuer + "/.well-known/openid-configuration")
    assert "BEGIN CERTIFICATE" in world["ca"].read_text()
    assert jwks_cluster(world["issuer"].issuer + "/keys", str(world["ca"])).transport_socket.name.endswith("tls")
    assert json.loads(UNAVAILABLE_JWKS)["keys"][0]["crv"] == "P-256"


def test_analyze_reports_failing_discovery_at_the_rule():
    from meshcore.analyze.checks import discovery_failures

    docs = load_documents(_policies("https://issuer.example"), "p.yaml")
    [finding] = discovery_failures(docs, {"https://issuer.example": "GET ...: connection refused"})
    assert (finding.code, finding.path, finding.severity) == ("MC0501", "spec.jwtRules[0].issuer", "error")
    assert "connection refused" in finding.message and "jwksUri" in finding.suggestion
    assert list(discovery_failures(docs, {"https://other.example": "down"})) == []


def test_the_agent_reports_its_system_bundle_in_the_node_metadata(tmp_path):
    from meshcore.agent.bootstrap import render_bootstrap

    def metadata(**kw):
        return render_bootstrap(node="vm1", trust_domain="cluster.local", xds_address="127.0.0.1:15012",
                                secrets_dir=tmp_path, admin_address="127.0.0.1:19000", **kw)["node"]["metadata"]

    assert metadata(system_ca_bundle="/etc/ssl/cert.pem")["system_ca_bundle"] == "/etc/ssl/cert.pem"
    assert metadata(system_ca_bundle="")["system_ca_bundle"] == ""  # looked, found none: the control plane says so
    assert "system_ca_bundle" not in metadata()  # not looked (e.g. a rendered config): the Debian path is assumed
