"""File-based SDS secrets: atomic, 0600, and shaped as Envoy's DiscoveryResponse of Secrets."""

from __future__ import annotations

import json
import stat
import threading

from envoy.extensions.transport_sockets.tls.v3 import secret_pb2  # registers the Secret type for Any
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import json_format

from meshcore import naming
from meshcore.agent.secrets import (
    SECRET_TYPE,
    SecretsDirectory,
    tls_certificate_secret,
    validation_context_secret,
)

from ._helpers import issue

TD = naming.DEFAULT_TRUST_DOMAIN


def _secrets_of(path) -> list[secret_pb2.Secret]:
    response = json_format.Parse(path.read_text(), discovery_pb2.DiscoveryResponse())
    out = []
    for resource in response.resources:
        assert resource.type_url == SECRET_TYPE
        secret = secret_pb2.Secret()
        assert resource.Unpack(secret)
        out.append(secret)
    return out


def test_secret_files_parse_as_discovery_responses(tmp_path, ca):
    d = SecretsDirectory(tmp_path / "secrets")
    d.prepare()
    node_chain, node_key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    svid_chain, svid_key = issue(ca, naming.workload_spiffe_id(TD, "default", "web"))
    assert d.write(tls_certificate_secret(naming.node_secret(), node_chain, node_key))
    assert d.write(validation_context_secret(naming.trust_bundle_secret(TD), ca.bundle_pem()))
    assert d.write(tls_certificate_secret(naming.svid_secret("web"), svid_chain, svid_key))

    (node,) = _secrets_of(d.path_of(naming.node_secret()))
    assert node.name == "node-identity"
    assert node.tls_certificate.certificate_chain.inline_string == node_chain
    assert node.tls_certificate.private_key.inline_string == node_key

    (bundle,) = _secrets_of(d.path_of(naming.trust_bundle_secret(TD)))
    assert bundle.name == naming.trust_bundle_secret(TD)
    assert bundle.validation_context.trusted_ca.inline_string == ca.bundle_pem()

    (svid,) = _secrets_of(d.path_of(naming.svid_secret("web")))
    assert svid.name == "svid:web"
    assert svid.tls_certificate.certificate_chain.inline_string == svid_chain

    assert sorted(p.name for p in d.path.iterdir()) == sorted(
        naming.secret_file(n) for n in (naming.node_secret(), naming.trust_bundle_secret(TD), "svid:web"))
    assert sorted(d.names()) == sorted([naming.node_secret(), naming.trust_bundle_secret(TD), "svid:web"])


def test_permissions_are_private(tmp_path, ca):
    d = SecretsDirectory(tmp_path / "secrets")
    d.prepare()
    chain, key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    d.write(tls_certificate_secret(naming.node_secret(), chain, key))
    assert stat.S_IMODE(d.path.stat().st_mode) == 0o700
    assert stat.S_IMODE(d.path_of(naming.node_secret()).stat().st_mode) == 0o600


def test_writes_are_atomic_renames_and_skipped_when_unchanged(tmp_path, ca):
    d = SecretsDirectory(tmp_path / "secrets")
    d.prepare()
    name = naming.svid_secret("web")
    path = d.path_of(name)
    first = tls_certificate_secret(name, *issue(ca, naming.workload_spiffe_id(TD, "default", "web")))
    assert d.write(first)
    inode = path.stat().st_ino
    assert not d.write(first)  # same content: not rewritten, Envoy is not poked
    assert path.stat().st_ino == inode

    secrets = [tls_certificate_secret(name, *issue(ca, naming.workload_spiffe_id(TD, "default", "web")))
               for _ in range(5)]
    stop = threading.Event()
    seen: list[str] = []
    torn: list[str] = []

    def reader():
        while not stop.is_set():
            text = path.read_text()
            try:
                seen.append(json.loads(text)["resources"][0]["tls_certificate"]["certificate_chain"]["inline_string"])
            except ValueError:
                torn.append(text)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for _ in range(40):
            for secret in secrets:
                assert d.write(secret)
                assert path.stat().st_ino != inode  # each write is a new file renamed over the old one
                inode = path.stat().st_ino
    finally:
        stop.set()
        thread.join()
    assert not torn, "a reader saw a partly written secret file"
    assert seen
    assert set(seen) <= {s["tls_certificate"]["certificate_chain"]["inline_string"] for s in [first, *secrets]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert [p.name for p in d.path.iterdir()] == [path.name]  # no temp files left behind


def test_remove_except_keeps_only_named_secrets(tmp_path, ca):
    d = SecretsDirectory(tmp_path / "secrets")
    d.prepare()
    for service in ("web", "old"):
        d.write(tls_certificate_secret(naming.svid_secret(service),
                                       *issue(ca, naming.workload_spiffe_id(TD, "default", service))))
    d.write(validation_context_secret(naming.trust_bundle_secret(TD), ca.bundle_pem()))
    removed = d.remove_except({naming.svid_secret("web"), naming.trust_bundle_secret(TD)})
    assert removed == [naming.secret_file(naming.svid_secret("old"))]
    assert d.exists(naming.svid_secret("web")) and not d.exists(naming.svid_secret("old"))
    assert d.read(naming.svid_secret("web"))["name"] == "svid:web"
    assert d.read(naming.svid_secret("old")) is None


def test_prepare_removes_leftover_temp_files(tmp_path):
    d = SecretsDirectory(tmp_path / "secrets")
    d.path.mkdir()
    (d.path / ".tmp-node-identity.yaml.abc").write_text("half")
    d.prepare()
    assert list(d.path.iterdir()) == []
