"""IdentityReconciler alone (no daemon): join, SVIDs for listed services, pending certificates for
services about to be registered, fast polls until the control plane lists them, backoff."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.config import AgentConfig
from meshcore.agent.identity import CertSummary, NodeIdentityStore
from meshcore.agent.reconcilers.identity import EXPECT_POLL, IdentityReconciler, OperatorActionRequired
from meshcore.agent.secrets import SecretsDirectory
from meshcore.federation import FederatedBundleFiles


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(timezone.utc)

    def __call__(self) -> datetime:
        return self.now


def _reconciler(api_server, tmp_path: Path, clock: Clock, token: str | None = None, refresh: float = 30.0):
    state = tmp_path / "state"
    config = AgentConfig(node="vm1", control_plane=api_server.url, ca_file=api_server.ca_file, state_dir=state,
                         admin="127.0.0.1:1", envoy_path="envoy", join_token=token, refresh_interval=refresh)
    issued: list[tuple[str, str]] = []
    secrets = SecretsDirectory(state / "secrets")
    rec = IdentityReconciler(lambda: config, store=NodeIdentityStore(state), secrets=secrets,
                             federated_files=FederatedBundleFiles(state / "federated"), clock=clock,
                             stopping=threading.Event(), issued=lambda s, r: issued.append((s, r)))
    return rec, secrets, issued


def _chain(secrets: SecretsDirectory, service: str) -> CertSummary | None:
    secret = secrets.read(naming.svid_secret(service))
    return CertSummary.of(secret["tls_certificate"]["certificate_chain"]["inline_string"]) if secret else None


def test_join_then_issue_the_listed_services_svids(api_server, tmp_path):
    clock = Clock()
    web_id = api_server.add_service("vm1", "web")
    rec, secrets, issued = _reconciler(api_server, tmp_path, clock, token=api_server.token("vm1"))
    rec.start()
    assert rec.node is not None and rec.bootstrap_inputs() is not None
    assert secrets.exists(naming.node_secret())
    assert rec.due(clock.now) and not rec.polled
    rec.reconcile(clock.now)
    assert rec.polled and rec.backoff.failures == 0
    assert _chain(secrets, "web").spiffe_id == web_id
    assert issued == [("web", "issue")] and rec.missing_svids() == set()
    assert not rec.due(clock.now)  # nothing to do until the next poll or renewal
    (status,) = rec.service_status()
    assert status.name == "web" and status.cert is not None and status.error is None


def test_no_token_and_no_certificate_needs_an_operator(api_server, tmp_path):
    rec, _, _ = _reconciler(api_server, tmp_path, Clock())
    with pytest.raises(OperatorActionRequired, match="meshctl token create --node vm1"):
        rec.start()


def test_a_service_about_to_be_registered_gets_a_pending_file_then_its_svid_quickly(api_server, tmp_path):
    clock = Clock()
    rec, secrets, _ = _reconciler(api_server, tmp_path, clock, token=api_server.token("vm1"))
    rec.start()
    rec.reconcile(clock.now)
    rec.prepare_services({"api"})  # the Consul reconciler, before registering it
    pending = _chain(secrets, "api")
    assert pending is not None and pending.spiffe_id == ""  # loadable by Envoy, trusted by nobody
    rec.expect_services({"api"}, clock.now)  # ... and after
    assert rec.due(clock.now)
    rec.reconcile(clock.now)  # the control plane does not list it yet: the pending file stays
    assert secrets.exists(naming.svid_secret("api")) and rec.next_poll == clock.now + timedelta(seconds=EXPECT_POLL)
    api_id = api_server.add_service("vm1", "api")  # the control plane saw the registration
    clock.now += timedelta(seconds=EXPECT_POLL)
    rec.reconcile(clock.now)
    assert _chain(secrets, "api").spiffe_id == api_id
    assert rec.next_poll == clock.now + timedelta(seconds=30)  # back to the refresh interval


def test_a_pending_file_of_a_service_that_is_gone_is_removed(api_server, tmp_path):
    clock = Clock()
    rec, secrets, _ = _reconciler(api_server, tmp_path, clock, token=api_server.token("vm1"))
    rec.start()
    rec.prepare_services({"api"})
    rec.forget_pending({"api"})
    rec.reconcile(clock.now)
    assert not secrets.exists(naming.svid_secret("api"))


def test_an_unreachable_control_plane_backs_off(api_server, tmp_path):
    clock = Clock()
    rec, _, _ = _reconciler(api_server, tmp_path, clock, token=api_server.token("vm1"))
    rec.start()
    api_server.fail_with = (503, "busy")
    rec.reconcile(clock.now)
    assert rec.backoff.failures == 1 and rec.retry_at is not None and rec.retry_at > clock.now
    assert rec.deadlines() == [rec.retry_at] and not rec.due(clock.now)
    api_server.fail_with = None
    clock.now = rec.retry_at
    rec.reconcile(clock.now)
    assert rec.backoff.failures == 0 and rec.last_error is None
