"""``meshctl state migrate``: a single control plane's state directory into Consul KV, idempotently."""

from __future__ import annotations

import base64
import json
import os
from datetime import datetime, timedelta, timezone

import pytest

from meshcore import naming
from meshcore.ca import CertificateAuthority, JoinTokenStore, make_csr, new_private_key
from meshcore.ca.tokens import SharedJoinTokenStore
from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.cli.main import main
from meshcore.controlplane.operator_certs import CERTS_FILE, OperatorCertStore
from meshcore.controlplane.operators import ADMIN, TOKENS_FILE, OperatorTokenStore
from meshcore.errors import JoinTokenError
from meshcore.federation.store import FederatedBundleStore
from meshcore.state import ConsulStateBackend
from meshcore.traffic import canary as sm

from ._wait import wait_for


@pytest.fixture
def single(tmp_path):
    """A state directory as one control plane leaves it, made by the real stores."""
    kek = os.urandom(32)
    state = tmp_path / "state"
    ca = CertificateAuthority.open(state / "ca", kek=kek)
    node_id = naming.node_spiffe_id("cluster.local", "vm-1")
    leaf = ca.sign_csr(make_csr(new_private_key(), node_id), spiffe_id=node_id, node="vm-1")
    ca.revoke_node("vm-1", reason="lost", by="test")
    bundle = ca.bundle_pem()
    ca.close()
    tokens = JoinTokenStore(state / "join-tokens.sealed", kek)
    fresh, used = tokens.create("vm-2"), tokens.create("vm-3")
    tokens.consume(used, "vm-3")
    tokens.close()
    admin = OperatorTokenStore(state / TOKENS_FILE, kek).create("alice", ADMIN)
    OperatorCertStore(state / CERTS_FILE, kek).record("bob", ADMIN, "0abc", datetime.now(timezone.utc) + timedelta(days=1))
    other = CertificateAuthority.open(tmp_path / "other", trust_domain="other.example", kek=kek)
    FederatedBundleStore(state / "federation", "cluster.local").put("other.example", other.bundle_pem())
    canary = sm.start(sm.CanarySpec(service="reviews", canary="v2", stable="v1", steps=(10, 100)), 1.0)
    (state / "canaries").mkdir()
    (state / "canaries" / "reviews.json").write_text(json.dumps(canary.to_dict()))
    kek_file = tmp_path / "kek"
    kek_file.write_text(base64.b64encode(kek).decode())
    kek_file.chmod(0o600)
    return {"state": state, "kek": kek, "kek_file": kek_file, "bundle": bundle, "leaf": leaf, "fresh": fresh,
            "used": used, "admin": admin}


def _migrate(consul_http, single, prefix, capsys, *extra):
    args = ["state", "migrate", "--from-dir", str(single["state"]), "--consul", consul_http.address,
            "--prefix", prefix, "--kek-file", str(single["kek_file"]), "-o", "json", *extra]
    code = main(args)
    return code, json.loads(capsys.readouterr().out)


def test_migrate_then_replicas_serve_the_same_state_and_a_second_run_changes_nothing(consul_http, single, capsys,
                                                                                   tmp_path, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul_http.token or "")
    prefix = consul_http.kv_prefix + "state/"
    code, dry = _migrate(consul_http, single, prefix, capsys, "--dry-run")
    assert code == 0 and dry["dry_run"] and dry["written"] == 8
    backend = ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=prefix)
    assert backend.list("") == []  # a dry run writes nothing

    code, first = _migrate(consul_http, single, prefix, capsys)
    assert code == 0 and first["written"] == 8 and first["conflicts"] == 0, first
    assert {s["what"]: s["action"] for s in first["steps"]}["CA"] == "write"

    kek = single["kek"]
    ca = CertificateAuthority.open(tmp_path / "replica", backend=backend, kek=kek)
    try:
        assert ca.bundle_pem() == single["bundle"]  # the migrated CA, not a new root
        assert [c.serial for c in ca.recent()] == [single["leaf"].serial]
        assert ca.node_revocation("vm-1").reason == "lost"
    finally:
        ca.close()
    tokens = SharedJoinTokenStore(backend, kek)
    with pytest.raises(JoinTokenError, match="already used"):
        tokens.consume(single["used"], "vm-3")
    tokens.consume(single["fresh"], "vm-2")
    operators = OperatorTokenStore(tmp_path / "x" / TOKENS_FILE, kek, backend=backend)
    try:
        wait_for(lambda: operators.list() != [], what="the operator tokens")
        assert operators.authenticate(single["admin"]).name == "alice"
    finally:
        operators.close()
    assert [td for td, _ in FederatedBundleStore(tmp_path / "y", "cluster.local", backend=backend).bundles()] == \
        ["other.example"]
    [run] = backend.list("canaries/")  # the run a new leader resumes (meshcore.controlplane.canary)
    assert run.key == "canaries/reviews.json" and sm.CanaryState.from_dict(json.loads(run.value)).weight == 10

    code, second = _migrate(consul_http, single, prefix, capsys)
    assert code == 0 and second["written"] == 0 and second["conflicts"] == 0, second
    assert main(["state", "migrate", "--from-dir", str(single["state"]), "--consul", consul_http.address,
                 "--prefix", prefix, "--kek-file", str(single["kek_file"])]) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_another_ca_in_kv_is_a_conflict_never_overwritten(consul_http, single, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("CONSUL_HTTP_TOKEN", consul_http.token or "")
    prefix = consul_http.kv_prefix + "state/"
    backend = ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=prefix)
    other = CertificateAuthority.open(tmp_path / "r", backend=backend, kek=single["kek"])
    held = other.bundle_pem()
    other.close()
    code, plan = _migrate(consul_http, single, prefix, capsys)
    assert code == 4 and [s["what"] for s in plan["steps"] if s["action"] == "conflict"] == ["CA"]
    again = CertificateAuthority.open(tmp_path / "r2", backend=backend, kek=single["kek"])
    try:
        assert again.bundle_pem() == held
    finally:
        again.close()
