"""Operator tokens, operator certificate roles and federated bundles on a shared backend: every replica sees them."""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone

import pytest

from meshcore.ca import CertificateAuthority
from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.controlplane.operator_certs import OperatorCertStore
from meshcore.controlplane.operators import ADMIN, READ_ONLY, TOKENS_FILE, OperatorTokenStore
from meshcore.errors import OperatorAuthError
from meshcore.federation.store import FederatedBundleStore
from meshcore.state import ConsulStateBackend, DirBackend
from ._wait import wait_for


@pytest.fixture
def kv(consul_http):
    made: list[ConsulStateBackend] = []

    def make() -> ConsulStateBackend:
        made.append(ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "s/"))
        return made[-1]

    yield make


def _refused(store, token) -> bool:
    try:
        store.authenticate(token)
    except OperatorAuthError:
        return True
    return False


def test_operator_tokens_are_shared_by_replicas(kv, tmp_path):
    kek = os.urandom(32)
    a = OperatorTokenStore(tmp_path / "a" / "operator-tokens.sealed", kek, backend=kv())
    b = OperatorTokenStore(tmp_path / "b" / "operator-tokens.sealed", kek, backend=kv())
    try:
        assert not a.exists()
        token = a.create("alice", ADMIN)
        wait_for(lambda: not _refused(b, token), what="b to accept a's token")
        assert b.authenticate(token).role == ADMIN and b.exists()
        b.create("ci", READ_ONLY)
        assert sorted(t["name"] for t in a.list()) == ["alice", "ci"]
        assert b.revoke("alice") == 1
        wait_for(lambda: _refused(a, token), what="a to refuse the revoked token")
        assert not (tmp_path / "a").exists()  # nothing written locally
    finally:
        a.close()
        b.close()


def test_operator_cert_roles_are_shared_and_revoked_everywhere(kv, tmp_path):
    kek = os.urandom(32)
    a = OperatorCertStore(tmp_path / "operator-certs.sealed", kek, backend=kv())
    b = OperatorCertStore(tmp_path / "operator-certs.sealed", kek, backend=kv())
    try:
        a.record("alice", ADMIN, "0abc", datetime.now(timezone.utc) + timedelta(days=1))
        wait_for(lambda: [c.name for c in b.list()] == ["alice"], what="b to see alice's certificate")
        assert b.authenticate("alice", "abc").role == ADMIN
        assert b.revoke("alice") == 1
        wait_for(lambda: a.list() == [], what="a to see the revocation")
        with pytest.raises(OperatorAuthError, match="revoked"):
            a.authenticate("alice", "abc")
    finally:
        a.close()
        b.close()


def test_federated_bundles_are_shared(kv, tmp_path):
    other = CertificateAuthority.open(tmp_path / "other-ca", trust_domain="other.example", kek=os.urandom(32))
    a = FederatedBundleStore(tmp_path / "a", "cluster.local", backend=kv())
    b = FederatedBundleStore(tmp_path / "b", "cluster.local", backend=kv())
    a.put("other.example", other.bundle_pem())
    assert [td for td, _ in b.bundles()] == ["other.example"]
    assert a.local_sequence("pem-1") == 1 and b.local_sequence("pem-1") == 1 and b.local_sequence("pem-2") == 2
    assert b.remove("other.example") and a.bundles() == ()


def test_directory_files_are_the_ones_written_before(tmp_path):
    kek = os.urandom(32)
    OperatorTokenStore(tmp_path / "operator-tokens.sealed", kek).create("alice", ADMIN)
    assert (tmp_path / "operator-tokens.sealed").read_bytes().startswith(b"MESHCORE-SEALED-1\n")
    other = CertificateAuthority.open(tmp_path / "other-ca", trust_domain="other.example", kek=kek)
    fed = FederatedBundleStore(tmp_path / "federation", "cluster.local", backend=DirBackend(tmp_path / "ignored"))
    fed.put("other.example", other.bundle_pem())
    assert (tmp_path / "federation" / "bundles.json").exists() and not (tmp_path / "ignored").exists()


def test_operator_tokens_lost_by_consul_are_written_back(kv, tmp_path):
    kek = os.urandom(32)
    a = OperatorTokenStore(tmp_path / "operator-tokens.sealed", kek, backend=kv())
    try:
        token = a.create("alice", ADMIN)
        wait_for(lambda: not _refused(a, token), what="the followed copy")
        backend = kv()
        backend.delete("operators/tokens.sealed")
        wait_for(lambda: backend.get("operators/tokens.sealed") is not None, what="the store written back")
        assert a.authenticate(token).name == "alice"
    finally:
        a.close()


def test_offline_operator_token_command_writes_to_the_shared_store(consul_http, tmp_path, monkeypatch, capsys):
    from meshcore.controlplane.operators import cli_main

    kek_file = tmp_path / "kek"
    kek_file.write_bytes(os.urandom(32))
    kek_file.chmod(0o600)
    for name, value in {**consul_http.env(), "MESHCORE_STATE_PREFIX": consul_http.kv_prefix + "s/"}.items():
        monkeypatch.setenv(name, value)
    assert cli_main(["--state-dir", str(tmp_path / "st"), "--kek-file", str(kek_file), "--store", "consul",
                     "create", "--name", "ci", "--role", READ_ONLY]) == 0
    token = capsys.readouterr().out.strip()
    replica = OperatorTokenStore(tmp_path / "r" / TOKENS_FILE, kek_file.read_bytes(), backend=kv_backend(consul_http))
    try:
        assert replica.authenticate(token).role == READ_ONLY
    finally:
        replica.close()


def kv_backend(consul_http) -> ConsulStateBackend:
    return ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "s/")


def test_a_bundle_imported_on_one_replica_is_published_on_the_others(kv, tmp_path):
    other = CertificateAuthority.open(tmp_path / "other-ca", trust_domain="other.example", kek=os.urandom(32))
    a = FederatedBundleStore(tmp_path / "a", "cluster.local", backend=kv())
    b = FederatedBundleStore(tmp_path / "b", "cluster.local", backend=kv())
    published: list[tuple] = []
    b.follow(lambda: published.append(b.bundles()))
    try:
        a.put("other.example", other.bundle_pem())
        wait_for(lambda: published and [td for td, _ in published[-1]] == ["other.example"],
                 what="b to publish a's import")
    finally:
        b.close()
