"""Node identity end to end, with the real control plane and the real agent code (finding 10 and 16 of
issue 12): an agent whose node certificate expired while the control plane was down recovers by itself;
a stolen node key stops working on revocation, outside the catalog, and after a finished root rotation."""

from __future__ import annotations

import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.client import AgentClient
from meshcore.agent.config import AgentConfig
from meshcore.agent.identity import CertSummary, NodeIdentityStore
from meshcore.agent.reconcilers.identity import IdentityReconciler
from meshcore.agent.secrets import SecretsDirectory
from meshcore.ca import generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.errors import AgentRequestError, CAError, ControlPlaneUnavailable
from meshcore.federation import FederatedBundleFiles

from ..policies._catalog import free_port, write_catalog
from .test_operator_auth import _call


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _wait(condition, timeout: float, what: str, step=None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if step is not None:
            step()
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _plane(base: Path, kek: bytes, api_port: int = 0, **settings) -> ControlPlane:
    plane = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind=f"127.0.0.1:{api_port}",
                                  http_bind="127.0.0.1:0", **settings), kek)
    plane.start()
    _wait(lambda: plane.engine.catalog() is not None, 30, "the catalog")
    return plane


def _reconciler(cp_url: str, bundle: Path, state: Path, node: str, token: str | None,
                stopping: threading.Event) -> IdentityReconciler:
    config = AgentConfig(node=node, control_plane=cp_url, ca_file=bundle, state_dir=state, admin="127.0.0.1:1",
                         envoy_path="envoy", join_token=token, refresh_interval=3600.0)
    return IdentityReconciler(lambda: config, store=NodeIdentityStore(state), secrets=SecretsDirectory(state / "secrets"),
                              federated_files=FederatedBundleFiles(state / "federated"), clock=_now,
                              stopping=stopping)


def test_an_expired_node_certificate_recovers_by_itself_after_an_outage(tmp_path: Path, caplog) -> None:
    """The control plane is down longer than the node certificate's life; back up, the agent recovers
    with the key it holds: no join token (the one it had is spent), no human."""
    write_catalog(tmp_path / "catalog", [{"name": "details"}], node="n1")
    kek = generate_kek_file(tmp_path / "kek")
    port = free_port("127.0.0.1")
    ttl = timedelta(seconds=6)
    cp = _plane(tmp_path, kek, port, node_cert_ttl=ttl)
    bundle = cp.settings.state_dir / "ca" / "bundle.pem"
    stopping = threading.Event()
    rec = _reconciler(cp.addresses["api"], bundle, tmp_path / "agent", "n1", cp.tokens.create("n1"), stopping)
    try:
        rec.start()
        _wait(lambda: "details" in rec.svids, 30, "the first SVID", lambda: rec.reconcile(_now()))
        assert rec.node is not None
        first = rec.node.summary
        assert first.not_after - _now() <= ttl  # the node certificate has its own TTL (--node-cert-ttl)
        cp.stop()  # the outage begins

        caplog.set_level(logging.WARNING, logger="meshcore.agent")
        _wait(lambda: first.expired(_now()), 30, "the node certificate to expire")
        rec.reset_schedule()
        rec.reconcile(_now())  # fails: the control plane is down
        assert rec.last_error
        alarms = rec.certificate_alarms(_now())
        assert any(a.startswith("node certificate") and "expired" in a for a in alarms), alarms
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("EXPIRED" in r.getMessage() for r in errors), [r.getMessage() for r in caplog.records]
        assert not any("keeps its current config" in r.getMessage() for r in caplog.records)

        cp = _plane(tmp_path, kek, port, node_cert_ttl=timedelta(days=7))  # the outage ends
        _wait(lambda: rec.node is not None and not rec.node.summary.expired(_now()), 60, "the agent to recover",
              lambda: (rec.reset_schedule(), rec.reconcile(_now())))
        recovered = rec.node.summary
        assert recovered.serial != first.serial and recovered.spiffe_id == first.spiffe_id
        assert recovered.not_after - _now() > timedelta(days=6)
        on_disk = CertSummary.of((tmp_path / "agent" / "node.crt").read_text())
        assert on_disk.serial == recovered.serial
        _wait(lambda: not rec.certificate_alarms(_now()), 30, "the SVIDs to be renewed too",
              lambda: (rec.reset_schedule(), rec.reconcile(_now())))
        assert rec.last_error is None
    finally:
        stopping.set()
        cp.stop()


def test_an_agent_started_with_an_expired_node_certificate_recovers_at_start(tmp_path: Path) -> None:
    """The VM was off longer than the node certificate's life: the agent starts, recovers, no token."""
    write_catalog(tmp_path / "catalog", [{"name": "details"}], node="n1")
    kek = generate_kek_file(tmp_path / "kek")
    cp = _plane(tmp_path, kek, node_cert_ttl=timedelta(seconds=3))
    bundle = cp.settings.state_dir / "ca" / "bundle.pem"
    stopping = threading.Event()
    try:
        first = _reconciler(cp.addresses["api"], bundle, tmp_path / "agent", "n1", cp.tokens.create("n1"), stopping)
        first.start()
        assert first.node is not None
        expired = first.node.summary
        _wait(lambda: expired.expired(_now()), 30, "the node certificate to expire")  # the VM is off meanwhile
        again = _reconciler(cp.addresses["api"], bundle, tmp_path / "agent", "n1", None, stopping)
        again.start()  # before: "the node certificate of 'n1' expired ... and no join token was given"
        assert again.node is not None and not again.node.summary.expired(_now())
        assert again.node.summary.serial != expired.serial
    finally:
        stopping.set()
        cp.stop()


# --- a stolen node key -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def plane(tmp_path_factory):
    base = tmp_path_factory.mktemp("stolen")
    for node in ("n1", "n2", "n3"):
        write_catalog(base / "catalog", [{"name": f"svc-{node}"}], node=node)
    cp = _plane(base, generate_kek_file(base / "kek"))
    try:
        yield base, cp
    finally:
        cp.stop()


def _stolen(cp: ControlPlane, where: Path, node: str) -> AgentClient:
    """Join ``node`` and hand back a client holding its key and certificate (what a thief copies)."""
    where.mkdir(parents=True, exist_ok=True)
    bundle = where / "bundle.pem"  # the thief's own copy (the control plane's changes with a rotation)
    bundle.write_text((cp.settings.state_dir / "ca" / "bundle.pem").read_text())
    key = new_private_key()
    issued = AgentClient(cp.addresses["api"], bundle).join(
        node, cp.tokens.create(node), make_csr(key, naming.node_spiffe_id(cp.ca.trust_domain, node)))
    (where / "node.pem").write_text(issued.chain)
    (where / "node.key").write_text(key_to_pem(key))
    return AgentClient(cp.addresses["api"], bundle, cert_file=where / "node.pem", key_file=where / "node.key")


def _renew(client: AgentClient, cp: ControlPlane, node: str):
    return client.renew_node(make_csr(new_private_key(), naming.node_spiffe_id(cp.ca.trust_domain, node)))


def _sign(client: AgentClient, cp: ControlPlane, node: str):
    sid = naming.workload_spiffe_id(cp.ca.trust_domain, "default", f"svc-{node}")
    return client.sign(make_csr(new_private_key(), sid))


def _refused(call, *args) -> str:
    with pytest.raises(AgentRequestError) as info:
        call(*args)
    assert info.value.status == 403, info.value
    return info.value.reason


def test_revocation_stops_renewal_signing_and_the_api_at_once(plane, tmp_path) -> None:
    base, cp = plane
    with _stolen(cp, tmp_path, "n1") as thief, _stolen(cp, tmp_path / "held", "n1") as holder, \
            ThreadPoolExecutor(1) as pool:
        assert _renew(thief, cp, "n1").spiffe_id.endswith("/node/n1")  # before: it works
        assert _sign(thief, cp, "n1")
        index = thief.services().index  # a kept-alive connection, opened before the revocation
        held = pool.submit(holder.services, index, 60)  # a blocking query held across the revocation
        _wait(lambda: cp.agent_api.waiting == 1, 10, "the blocking query to be held")
        admin = (cp.settings.state_dir / "admin.token").read_text().strip()
        status, body = _call(cp, "POST", "/v1/nodes/n1/revoke", token=admin, body={"reason": "VM lost"})
        assert status == 200, body
        with pytest.raises(AgentRequestError) as info:  # answered at once, refused
            held.result(timeout=20)
        assert info.value.status == 403 and "revoked" in info.value.reason
        assert json.loads(body)["subject"] == "n1"
        assert "revoked" in _refused(_renew, thief, cp, "n1")
        assert "revoked" in _refused(_sign, thief, cp, "n1")
        assert "revoked" in _refused(thief.services)
    status, body = _call(cp, "GET", "/v1/nodes/revocations", token=admin)
    assert status == 200 and [r["subject"] for r in json.loads(body)["revocations"] if r["kind"] == "node"] == ["n1"]
    # a new ADS stream with the revoked certificate is refused (open ones end: tests/xds/test_server.py)
    import grpc

    from tests.xds._ads import AdsClient, CLUSTER

    creds = grpc.ssl_channel_credentials(root_certificates=(tmp_path / "bundle.pem").read_bytes(),
                                         private_key=(tmp_path / "node.key").read_bytes(),
                                         certificate_chain=(tmp_path / "node.pem").read_bytes())
    with grpc.secure_channel(cp.addresses["xds"], creds) as channel:
        ads = AdsClient(channel, node_id="n1")
        ads.send(CLUSTER)
        with pytest.raises(grpc.RpcError) as info:
            ads.recv()
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED and "revoked" in info.value.details()
        ads.close()
    # a new join with a new token is honoured again
    with _stolen(cp, tmp_path / "again", "n1") as rejoined:
        assert _renew(rejoined, cp, "n1")


def test_revoking_needs_the_admin_role(plane) -> None:
    base, cp = plane
    ro = cp.operators.create("auditor-nodes", "read-only")
    status, _ = _call(cp, "POST", "/v1/nodes/n3/revoke", token=ro, body={})
    assert status == 403
    assert cp.ca.node_revocation("n3") is None


def test_a_node_outside_the_catalog_gets_no_renewal_and_no_svid(plane, tmp_path) -> None:
    base, cp = plane
    with _stolen(cp, tmp_path, "ghost") as thief:
        assert "not in the catalog" in _refused(_renew, thief, cp, "ghost")
        assert "not in the catalog" in _refused(_sign, thief, cp, "ghost")


def test_a_finished_root_rotation_ends_certificates_under_the_old_root(plane, tmp_path) -> None:
    base, cp = plane
    with _stolen(cp, tmp_path, "n2") as thief:
        old_signer = cp.ca.signer_key_id()
        cp.ca.begin_rotation()  # preparing: renewals are still signed by the old intermediate
        key = new_private_key()  # the thief renews during the rotation
        issued = thief.renew_node(make_csr(key, naming.node_spiffe_id(cp.ca.trust_domain, "n2")))
        assert CertSummary.of(issued.chain).issuer_key_id == old_signer
        (tmp_path / "node.key").write_text(key_to_pem(key))
        (tmp_path / "node.pem").write_text(issued.chain)
        thief.services()  # kept alive from here
        try:
            cp.ca.activate_rotation()
        except CAError:  # the control plane's CA watcher was quicker (no proxy holds it back)
            pass
        cp._apply_ca(reissue=True)
        cp.ca_finish(force=True)
        # on the connection opened before the finish (TLS verified it then), every call is refused
        assert "root rotation" in _refused(_renew, thief, cp, "n2")
        assert "root rotation" in _refused(_sign, thief, cp, "n2")
        assert "root rotation" in _refused(thief.services)
        thief.close()  # and a new connection does not get through TLS any more
        with pytest.raises(ControlPlaneUnavailable):
            thief.services()


def test_meshctl_node_revoke(plane, capsys, monkeypatch) -> None:
    from meshcore.cli.main import main

    base, cp = plane
    # the token through the environment (meshctl --token would set it in os.environ for later tests)
    monkeypatch.setenv("MESHCORE_TOKEN", (cp.settings.state_dir / "admin.token").read_text().strip())
    common = ["--server", cp.addresses["http"]]
    assert main(["node", "revoke", "x/../n3", *common]) == 1  # checked before anything is sent
    assert "not a node name" in capsys.readouterr().err
    assert cp.ca.node_revocation("n3") is None
    assert main(["node", "revoke", "n3", "--reason", "lost", "-o", "json", *common]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["subject"] == "n3" and out["reason"] == "lost" and out["kind"] == "node"
    assert cp.ca.node_revocation("n3") is not None
    assert main(["node", "revocations", *common]) == 0
    assert "n3" in capsys.readouterr().out
