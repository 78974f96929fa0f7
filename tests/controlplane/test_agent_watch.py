"""Blocking queries on ``/v1/agent/services``: held until the node's view changes, answered at once otherwise,
ended by shutdown; and the agent's identity reconciler following them instead of polling."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.client import AgentClient
from meshcore.agent.config import AgentConfig
from meshcore.agent.identity import NodeIdentityStore
from meshcore.agent.reconcilers.identity import IdentityReconciler
from meshcore.agent.secrets import SecretsDirectory
from meshcore.ca import generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.federation import FederatedBundleFiles

from ..policies._catalog import free_port, write_catalog


def _start(base: Path, **settings) -> ControlPlane:
    plane = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0",
                                  **settings), generate_kek_file(base / "kek"))
    plane.start()
    deadline = time.monotonic() + 30
    while plane.engine.catalog() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return plane


def _node_client(cp: ControlPlane, where: Path, node: str = "n1") -> AgentClient:
    where.mkdir(parents=True, exist_ok=True)
    bundle = cp.settings.state_dir / "ca" / "bundle.pem"
    key = new_private_key()
    issued = AgentClient(cp.addresses["api"], bundle).join(
        node, cp.tokens.create(node), make_csr(key, naming.node_spiffe_id(cp.ca.trust_domain, node)))
    (where / "node.pem").write_text(issued.chain)
    (where / "node.key").write_text(key_to_pem(key))
    return AgentClient(cp.addresses["api"], bundle, cert_file=where / "node.pem", key_file=where / "node.key")


def _add_service(base: Path, name: str, node: str = "n1") -> None:
    definition = {"name": name, "id": f"{name}-v1", "port": free_port("127.0.0.1"),
                  "connect": {"sidecar_service": {"port": free_port("127.0.0.1")}}}
    (base / "catalog" / node / f"{name}.json").write_text(json.dumps({"service": definition}))


@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    base = tmp_path_factory.mktemp("watch")
    write_catalog(base / "catalog", [{"name": "details"}])
    cp = _start(base)
    try:
        yield base, cp
    finally:
        cp.stop()


def test_an_answer_carries_an_index_and_a_differing_or_absent_one_is_answered_at_once(plane, tmp_path):
    base, cp = plane
    with _node_client(cp, tmp_path) as client:
        first = client.services()
        assert len(first.index) == 32 and [s.name for s in first.services] == ["details"]
        assert client.services().index == first.index  # nothing changed: the same index
        start = time.monotonic()
        assert client.services(index="0" * 32, wait=30).index == first.index  # not what it holds: at once
        assert time.monotonic() - start < 5


def test_a_held_call_answers_when_a_service_lands_on_its_node(plane, tmp_path):
    base, cp = plane
    with _node_client(cp, tmp_path) as client, ThreadPoolExecutor(1) as pool:
        before = client.services()
        held = pool.submit(client.services, before.index, 30)
        deadline = time.monotonic() + 10
        while cp.agent_api.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cp.agent_api.waiting == 1 and not held.done()
        start = time.monotonic()
        _add_service(base, "ratings")
        after = held.result(timeout=25)
        assert time.monotonic() - start < 10  # the snapshot woke it, not the 30 s wait or the recheck
        assert after.index != before.index and "ratings" in [s.name for s in after.services]
    assert cp.agent_api.waiting == 0


def test_an_unchanged_view_is_answered_after_the_wait(plane, tmp_path):
    base, cp = plane
    with _node_client(cp, tmp_path, node="n2") as client:
        before = client.services()
        start = time.monotonic()
        after = client.services(index=before.index, wait=1)
        assert 0.9 <= time.monotonic() - start < 10 and after.index == before.index


def test_over_the_bound_and_at_shutdown_calls_are_answered_at_once(tmp_path):
    write_catalog(tmp_path / "catalog", [{"name": "details"}])
    cp = _start(tmp_path, agent_max_waiting=1)
    try:
        with _node_client(cp, tmp_path / "a") as one, _node_client(cp, tmp_path / "b") as two, \
                ThreadPoolExecutor(1) as pool:
            index = one.services().index
            held = pool.submit(one.services, index, 60)
            deadline = time.monotonic() + 10
            while cp.agent_api.waiting == 0 and time.monotonic() < deadline:
                time.sleep(0.02)
            start = time.monotonic()
            assert two.services(index=index, wait=60).index == index  # the bound is reached: at once
            assert time.monotonic() - start < 5
            start = time.monotonic()
            cp.stop()
            assert held.result(timeout=10).index == index  # shutdown answers the held call
            assert time.monotonic() - start < 5
    finally:
        cp.stop()


def test_the_agent_follows_the_control_plane_without_polling(plane, tmp_path):
    base, cp = plane
    state = tmp_path / "state"
    config = AgentConfig(node="n3", control_plane=cp.addresses["api"],
                         ca_file=cp.settings.state_dir / "ca" / "bundle.pem", state_dir=state,
                         admin="127.0.0.1:1", envoy_path="envoy", join_token=cp.tokens.create("n3"),
                         refresh_interval=3600.0)  # the poll alone would not see the new service for an hour
    woken = threading.Event()
    stopping = threading.Event()
    rec = IdentityReconciler(lambda: config, store=NodeIdentityStore(state), secrets=SecretsDirectory(state / "secrets"),
                             federated_files=FederatedBundleFiles(state / "federated"),
                             clock=lambda: datetime.now(timezone.utc), stopping=stopping, wake=woken.set)
    write_catalog(base / "catalog", [{"name": "reviews"}], node="n3")
    try:
        rec.start()
        deadline = time.monotonic() + 20
        while "reviews" not in rec.svids and time.monotonic() < deadline:
            rec.reconcile(datetime.now(timezone.utc))
            time.sleep(0.05)
        assert "reviews" in rec.svids and rec.watching
        assert rec.next_poll is not None and rec.next_poll > datetime.now(timezone.utc).replace(microsecond=0)
        deadline = time.monotonic() + 10
        while cp.agent_api.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert cp.agent_api.waiting >= 1  # the watcher's blocking query is held
        woken.clear()
        _add_service(base, "ratings", node="n3")
        assert woken.wait(15), "the watcher did not wake the loop when a service landed on its node"
        assert rec.due(datetime.now(timezone.utc))
        rec.reconcile(datetime.now(timezone.utc))
        assert "ratings" in rec.svids

        # federation: an imported domain reaches the agent at the wake of its held call, and the agent's next
        # calls say it holds its roots (what `meshctl trust-bundle list` and rotate-ca.yml wait for); a node with
        # a held call counts however long ago it last called
        from meshcore.ca import CertificateAuthority
        from meshcore.controlplane.federation_api import publish

        other = CertificateAuthority.open(tmp_path / "other-ca", trust_domain="other.example",
                                          kek=generate_kek_file(tmp_path / "other-kek"))
        deadline = time.monotonic() + 10
        while cp.agent_api.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "n3" in cp.agent_api.federated_acks(within=-1)  # only its held call keeps it there
        assert cp.agent_api.federated_acks()["n3"] == {}
        woken.clear()
        cp.federation.put("other.example", other.bundle_pem())
        publish(cp.engine, cp.federation)
        assert woken.wait(15), "the watcher did not wake the loop when a trust domain was imported"
        want = {"other.example": __import__("hashlib").sha256(other.bundle_pem().encode()).hexdigest()}
        deadline = time.monotonic() + 20
        while cp.agent_api.federated_acks().get("n3") != want and time.monotonic() < deadline:
            rec.reconcile(datetime.now(timezone.utc))
            time.sleep(0.05)
        assert rec.federated == (("other.example", other.bundle_pem()),)
        assert cp.agent_api.federated_acks()["n3"] == want
    finally:
        stopping.set()
        cp.federation.remove("other.example")
        publish(cp.engine, cp.federation)


def test_the_collectors_targets_match_the_status_page(plane):
    from meshcore.controlplane.dashboard_api import scrape_target
    from meshcore.snapshot import ProxyInfo

    base, cp = plane
    cp.engine.proxy_connected(ProxyInfo(node="n1", secrets_dir="/tmp/s", admin="127.0.0.1:1"))
    cp.engine.proxy_connected(ProxyInfo(node="gone", secrets_dir="/tmp/s", metrics="127.0.0.1:2"))
    deadline = time.monotonic() + 20
    while cp.engine.build_for("n1") is None and time.monotonic() < deadline:
        time.sleep(0.05)
    expected = [scrape_target(p) for p in cp.status_view().proxies]
    assert cp.scrape_targets() == expected
    assert {t.node for t in expected} >= {"n1", "gone"}
    # a node that left the catalog keeps its row (its state still shows) but is never fetched: only addresses
    # the control plane derives from the catalog are (hardening finding 3)
    assert [t.url for t in expected if t.node == "gone"] == [""]
