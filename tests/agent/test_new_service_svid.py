"""The NACK race, agent side: a service dropped into ``--consul-services-dir`` while the agent runs
must have a loadable SVID file before it is registered in Consul (the control plane builds a
listener naming that file as soon as it sees the registration, and Envoy rejects the listener if
the file is missing), and must get its real SVID promptly, not at the next refresh interval.

The agent runs as a process against the Consul double and the real-CA agent API; a bridge thread
plays the control plane's catalog: when the service shows up in Consul it records whether the
SVID file existed at that moment, then lists the service for the node (so signing is allowed).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import requests

from meshcore import naming
from meshcore.agent.identity import CertSummary
from meshcore.agent.secrets import SecretsDirectory

from .test_consul_sync import _write_service
from .test_daemon import AgentProcess, _agent_args, _free_port, _status, _wait

REFRESH = "60s"  # far longer than the test waits: everything must happen on events, not on the timer


def _svid(state: Path, service: str) -> CertSummary | None:
    secret = SecretsDirectory(state / "secrets").read(naming.svid_secret(service))
    if secret is None:
        return None
    return CertSummary.of(secret["tls_certificate"]["certificate_chain"]["inline_string"])


class CatalogBridge(threading.Thread):
    """Watches the Consul agent's services; on first sight of ``service_id`` records whether its SVID
    file exists, then lists it on the agent API (as the control plane would from its catalog)."""

    def __init__(self, consul_http, cp, state: Path, service: str, service_id: str):
        super().__init__(daemon=True)
        self.consul_http, self.cp, self.state = consul_http, cp, state
        self.service, self.service_id = service, service_id
        self.file_existed_at_registration: bool | None = None
        self.registered_at: float | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        headers = {"X-Consul-Token": self.consul_http.token} if self.consul_http.token else {}
        path = SecretsDirectory(self.state / "secrets").path_of(naming.svid_secret(self.service))
        while not self._halt.is_set():
            services = requests.get(self.consul_http.address + "/v1/agent/services", headers=headers, timeout=5).json()
            if self.service_id in services:
                self.file_existed_at_registration = path.exists()
                self.registered_at = time.monotonic()
                self.cp.add_service("vm1", self.service, self.service_id)
                return
            self._halt.wait(0.01)

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=10)


def test_new_service_has_its_svid_file_before_registration_and_its_svid_promptly(cp, consul_http, tmp_path):
    services_dir = tmp_path / "consul.d"
    services_dir.mkdir()
    state = tmp_path / "state"
    admin = f"127.0.0.1:{_free_port()}"
    agent = AgentProcess(_agent_args(cp, state, admin, "--join-token", cp.token("vm1"),
                                     "--consul-services-dir", str(services_dir), "--refresh-interval", REFRESH),
                         tmp_path / "agent.log", env=consul_http.env())
    bridge = None
    try:
        _wait(lambda: _status(state).get("state") == "ready", 60, "the agent to join and its envoy to be ready",
              agent)
        api = consul_http.unique("api")
        bridge = CatalogBridge(consul_http, cp, state, api, f"{api}-1")
        bridge.start()
        dropped = time.monotonic()
        _write_service(services_dir, api, 18181)
        _wait(lambda: bridge.registered_at is not None, 20, f"{api} to be registered in Consul", agent)
        assert bridge.file_existed_at_registration, (
            f"{api} was registered in Consul before its SVID file existed: a listener naming it would be NACKed\n"
            + agent.log())
        spiffe_id = naming.workload_spiffe_id(naming.DEFAULT_TRUST_DOMAIN, "default", api)
        _wait(lambda: (s := _svid(state, api)) is not None and s.spiffe_id == spiffe_id, 20,
              f"the real SVID of {api} to replace the pending one", agent)
        took = time.monotonic() - dropped
        assert took < 20, f"{api}'s SVID took {took:.1f}s (refresh interval {REFRESH})"
        _wait(lambda: any(s["name"] == api and s["serial"] for s in _status(state).get("services", [])), 10,
              f"status.json to show {api}'s SVID", agent)
    finally:
        if bridge is not None:
            bridge.stop()
        assert agent.stop() == 0, agent.log()


def test_pending_certificate_is_not_adopted_as_an_svid(tmp_path):
    """A pending certificate left by a previous run carries no SPIFFE ID: never taken for an SVID."""
    from meshcore.agent.identity import Credential, key_matches_cert, pending_certificate

    chain, key = pending_certificate("api")
    assert key_matches_cert(key, chain)
    assert Credential.build(chain, key, 0.0).summary.spiffe_id == ""
    secrets = SecretsDirectory(tmp_path / "secrets")
    secrets.prepare()
    from meshcore.agent.secrets import tls_certificate_secret

    secrets.write(tls_certificate_secret(naming.svid_secret("api"), chain, key))
    assert secrets.read(naming.svid_secret("api"))["tls_certificate"]["certificate_chain"]["inline_string"] == chain
