"""Two real control planes with ``--store consul`` on one Consul: one CA, tokens used once, revocations everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.client import AgentClient
from meshcore.ca import generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.controlplane.operators import ADMIN_TOKEN_FILE
from meshcore.errors import AgentRequestError
from meshcore.resources.consul_store import ConsulKVStore

from ..policies._catalog import write_catalog
from ._wait import wait_for


@pytest.fixture
def two_replicas(consul_http, tmp_path, monkeypatch):
    for name, value in {**consul_http.env(), "MESHCORE_STATE_PREFIX": consul_http.kv_prefix + "state/"}.items():
        monkeypatch.setenv(name, value)
    write_catalog(tmp_path / "catalog", [{"name": "svc-n1"}], node="n1")
    kek = generate_kek_file(tmp_path / "kek")
    planes = []
    try:
        for name in ("r1", "r2"):
            store = ConsulKVStore(ConsulSettings.from_env(), prefix=consul_http.kv_prefix + "resources/")
            cp = ControlPlane(Settings(state_dir=tmp_path / name, catalog=f"files:{tmp_path / 'catalog'}",
                                       store="consul", xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0",
                                       http_bind="127.0.0.1:0"), kek, store=store)
            cp.start()
            planes.append(cp)
        wait_for(lambda: all(cp.engine.catalog() is not None for cp in planes), 30, "the catalogs")
        yield tmp_path, planes
    finally:
        for cp in planes:
            cp.stop()


def _join(cp: ControlPlane, where: Path, node: str, token: str) -> AgentClient:
    where.mkdir(parents=True, exist_ok=True)
    bundle = where / "bundle.pem"
    bundle.write_text(cp.ca.bundle_pem())
    key = new_private_key()
    issued = AgentClient(cp.addresses["api"], bundle).join(node, token,
                                                           make_csr(key, naming.node_spiffe_id(cp.ca.trust_domain, node)))
    (where / "node.pem").write_text(issued.chain)
    (where / "node.key").write_text(key_to_pem(key))
    return AgentClient(cp.addresses["api"], bundle, cert_file=where / "node.pem", key_file=where / "node.key")


def test_replicas_share_the_ca_tokens_and_revocations(two_replicas):
    base, (r1, r2) = two_replicas
    assert r1.ca.bundle_pem() == r2.ca.bundle_pem()  # r2 loaded r1's CA
    assert (base / "r1" / ADMIN_TOKEN_FILE).exists() and not (base / "r2" / ADMIN_TOKEN_FILE).exists()
    admin = (base / "r1" / ADMIN_TOKEN_FILE).read_text().strip()
    wait_for(lambda: r2.operators.list() != [], what="r2 to follow the operator tokens")
    assert r2.operators.authenticate(admin).role == "admin"

    token = r1.tokens.create("n1")
    client = _join(r2, base / "agent", "n1", token)  # made on r1, used on r2
    with pytest.raises(AgentRequestError, match="already used"):
        _join(r1, base / "again", "n1", token)
    renewed = client.renew_node(make_csr(new_private_key(), naming.node_spiffe_id(r2.ca.trust_domain, "n1")))
    assert renewed.chain

    r1.ca.revoke_node("n1", reason="test")
    on_r2 = AgentClient(r2.addresses["api"], base / "agent" / "bundle.pem", cert_file=base / "agent" / "node.pem",
                        key_file=base / "agent" / "node.key")

    def refused() -> bool:
        try:
            on_r2.renew_node(make_csr(new_private_key(), naming.node_spiffe_id(r2.ca.trust_domain, "n1")))
        except AgentRequestError as exc:
            return exc.status == 403
        return False

    wait_for(refused, what="r2 to refuse the node r1 revoked")
