"""EnvoyReconciler alone, with a stand-in supervisor (the real one is tested in test_supervisor and
test_hot_restart): it waits for the node's inputs, its secrets and ``may_start``; writes the bootstrap;
restarts Envoy for a changed bootstrap only; stops or hands over."""

from __future__ import annotations

from pathlib import Path

from meshcore import naming
from meshcore.agent.config import AgentConfig
from meshcore.agent.reconcilers.envoy import READY_POLL, EnvoyReconciler
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret, validation_context_secret

TD = naming.DEFAULT_TRUST_DOMAIN


class FakeSupervisor:
    def __init__(self, argv, hot_restart=None):
        self.argv, self.hot_restart = argv, hot_restart
        self.started = self.restarted = self.stopped = 0
        self.detached = False
        self.pid: int | None = None
        self.starts = self.restarts = 0
        self.last_exit_code = None

    @property
    def running(self) -> bool:
        return self.pid is not None

    def start(self):
        self.started += 1
        self.pid = 4242

    def restart(self):
        self.restarted += 1

    def stop(self):
        self.stopped += 1
        return 0

    def detach(self):
        self.detached = True
        return object()


def _setup(tmp_path: Path, ca, may_start=lambda: True):
    state = tmp_path / "state"
    config = {"value": AgentConfig(node="vm1", control_plane="https://127.0.0.1:1", ca_file=tmp_path / "ca.pem",
                                   state_dir=state, admin="127.0.0.1:1", envoy_path="/usr/bin/envoy")}
    secrets = SecretsDirectory(state / "secrets")
    secrets.prepare()
    inputs = {"value": None}
    made: list[FakeSupervisor] = []

    def factory(argv, hot_restart=None):
        made.append(FakeSupervisor(argv, hot_restart))
        return made[-1]

    rec = EnvoyReconciler(lambda: config["value"], secrets=secrets, inputs=lambda: inputs["value"],
                          may_start=may_start, supervisor_factory=factory)
    rec.prepare()
    return rec, secrets, inputs, made, config


def _write_node_secrets(secrets: SecretsDirectory, ca) -> None:
    from .._helpers import issue

    chain, key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    secrets.write(tls_certificate_secret(naming.node_secret(), chain, key))
    secrets.write(validation_context_secret(naming.trust_bundle_secret(TD), ca.bundle_pem()))


def test_starts_once_joined_with_its_secrets_and_restarts_only_for_a_new_bootstrap(tmp_path, ca):
    rec, secrets, inputs, made, config = _setup(tmp_path, ca)
    rec.reconcile()
    assert made == [] and not rec.bootstrap_path.exists()  # not joined yet
    inputs["value"] = (TD, "127.0.0.1:15012")
    rec.reconcile()
    assert made == [] and rec.bootstrap_path.exists()  # bootstrap written, secrets missing
    _write_node_secrets(secrets, ca)
    rec.reconcile()
    assert len(made) == 1 and made[0].started == 1 and rec.pid == 4242
    assert not rec.ready and rec.wants_poll() == READY_POLL  # nothing answers /ready on port 1
    rec.reconcile()
    assert made[0].restarted == 0  # nothing changed
    inputs["value"] = (TD, "127.0.0.1:15013")  # the xDS address moved: new bootstrap
    rec.reconcile()
    assert made[0].restarted == 1 and len(made) == 1
    rec.stop(handover=False)
    assert made[0].stopped == 1 and rec.status().pid == 4242 and rec.status(final=True).pid is None


def test_waits_for_may_start(tmp_path, ca):
    allowed = {"value": False}
    rec, secrets, inputs, made, _ = _setup(tmp_path, ca, may_start=lambda: allowed["value"])
    inputs["value"] = (TD, "127.0.0.1:15012")
    _write_node_secrets(secrets, ca)
    rec.reconcile()
    assert made == []
    allowed["value"] = True
    rec.reconcile()
    assert len(made) == 1


def test_handover_detaches_instead_of_stopping(tmp_path, ca):
    rec, secrets, inputs, made, _ = _setup(tmp_path, ca)
    inputs["value"] = (TD, "127.0.0.1:15012")
    _write_node_secrets(secrets, ca)
    rec.reconcile()
    rec.stop(handover=True)
    assert made[0].detached and made[0].stopped == 0 and rec.supervisor is None
