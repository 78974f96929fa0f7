"""The Envoy reconciler: the bootstrap file, the Envoy process, and whether Envoy is ready.

It writes the bootstrap whenever its inputs change (restarting Envoy for a new one: certificates
never restart it, file SDS reloads them), starts Envoy once the node can run it and ``may_start``
agrees (the first start waits for the local services' SVID files, see the daemon), and asks Envoy's
admin ``/ready`` until it answers. Supervision itself (restarts with backoff, hot restart, handover)
is :class:`~meshcore.agent.supervisor.EnvoySupervisor`, in its own thread.

Collaborators: the settings, the secrets directory (read only), ``inputs`` (trust domain and xDS
address, None until the node joined), ``may_start``, ``metrics_address`` and ``notify_status``.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from pathlib import Path

from meshcore import naming
from meshcore.agent._net import admin_get
from meshcore.agent._unchanged import UnchangedFile
from meshcore.agent._xds_endpoints import XdsEndpointsFile
from meshcore.agent.bootstrap import envoy_concurrency, render_bootstrap, write_bootstrap
from meshcore.agent.config import AgentConfig
from meshcore.agent.secrets import SecretsDirectory
from meshcore.agent.status import EnvoyStatus
from meshcore.agent.supervisor import EnvoySupervisor, HotRestart, envoy_command, stable_base_id, stop_recorded_envoy
from meshcore.system_ca import SYSTEM_CA_BUNDLES, find_system_ca_bundle

log = logging.getLogger("meshcore.agent")

READY_POLL = 0.5
#: How often the status asks Envoy which control plane replica its ADS connection is open to.
XDS_UPSTREAM_EVERY = 15.0


class EnvoyReconciler:
    """Keeps Envoy's bootstrap current and Envoy running (see the module docstring)."""

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        *,
        secrets: SecretsDirectory,
        inputs: Callable[[], tuple[str, str] | None],
        may_start: Callable[[], bool],
        metrics_address: Callable[[], str] = lambda: "",
        notify_status: Callable[[str], object] = lambda text: None,
        supervisor_factory: Callable[..., EnvoySupervisor] = EnvoySupervisor,
        xds_addresses: Callable[[], list[str]] | None = None,
    ):
        """``xds_addresses()``: every known control plane replica's xDS ``host:port`` (Envoy's ADS cluster
        lists them all, from a file it watches); None: only the one in ``inputs``."""
        self._config = config
        self._secrets = secrets
        self._inputs = inputs
        self._may_start = may_start
        self._metrics_address = metrics_address
        self._notify_status = notify_status
        self._supervisor_factory = supervisor_factory
        self.supervisor: EnvoySupervisor | None = None
        self.ready = False
        self._xds_addresses = xds_addresses
        self.endpoints = XdsEndpointsFile(self.bootstrap_path.parent / "xds" / "endpoints.json")
        self._upstream: tuple[float, tuple[str, ...]] = (0.0, ())
        self._bootstrap_file = UnchangedFile(self.bootstrap_path)
        self._system_ca_bundle = find_system_ca_bundle()  # for remote JWKS over https (meshcore.system_ca)
        if not self._system_ca_bundle:
            log.warning("no system CA bundle on this VM (looked at %s): proxies here cannot verify https JWKS "
                        "servers unless the mesh config names a bundle (jwks.caCertificates)",
                        ", ".join(SYSTEM_CA_BUNDLES))

    @property
    def config(self) -> AgentConfig:
        return self._config()

    @property
    def bootstrap_path(self) -> Path:
        return self.config.state_dir / "envoy" / "bootstrap.json"

    def prepare(self) -> None:
        self.bootstrap_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def argv(self) -> list[str]:
        c = self.config
        return envoy_command(c.envoy_path, self.bootstrap_path, log_level=c.envoy_log_level,
                             log_path=c.envoy_log, hot_restart=True, concurrency=envoy_concurrency())

    def hot_restart(self) -> HotRestart:
        return HotRestart(stable_base_id(self.config.node, self.config.state_dir),
                          self.bootstrap_path.parent / "envoy.json")

    def reconcile(self) -> bool:
        """One round; returns True when Envoy just became ready for the first time in this run."""
        inputs = self._inputs()
        if inputs is None:
            return False
        td, xds = inputs
        c = self.config
        endpoints_file = None
        if self._xds_addresses is not None:
            addresses = self._xds_addresses() or [xds]
            self.endpoints.update(addresses)
            endpoints_file = self.endpoints.path if self.endpoints.addresses else None
        bootstrap = render_bootstrap(node=c.node, trust_domain=td, xds_address=xds, secrets_dir=self._secrets.path,
                                     admin_address=c.admin, metrics_address=self._metrics_address(),
                                     xds_protocol=c.xds_protocol, xds_endpoints_file=endpoints_file,
                                     system_ca_bundle=self._system_ca_bundle)
        changed = False
        if self._bootstrap_file.path != self.bootstrap_path:  # a reload moved the state directory
            self._bootstrap_file = UnchangedFile(self.bootstrap_path)
        if not self._bootstrap_file.holds(bootstrap):  # an idle tick: no JSON rendered, no file read
            changed = write_bootstrap(self.bootstrap_path, bootstrap)
            self._bootstrap_file.wrote(bootstrap)
        if changed:
            log.info("envoy bootstrap written path=%s xds=%s", self.bootstrap_path, xds)
        if self.supervisor is None:
            secrets_there = self._secrets.exists(naming.node_secret()) and self._secrets.exists(
                naming.trust_bundle_secret(td))
            if not secrets_there or not self._may_start():
                return False
            if c.envoy_log is not None:
                c.envoy_log.parent.mkdir(parents=True, exist_ok=True)
            self.supervisor = self._supervisor_factory(self.argv(), hot_restart=self.hot_restart())
            self.supervisor.start()
            self._notify_status("envoy starting")
        elif changed or self.supervisor.argv != self.argv():
            log.info("envoy configuration changed; restarting envoy")
            self.supervisor.argv = self.argv()
            self.ready = False
            self.supervisor.restart()
        was_ready, self.ready = self.ready, self._is_ready()
        return self.ready and not was_ready

    def _is_ready(self) -> bool:
        if self.supervisor is None or not self.supervisor.running:
            return False
        answer = admin_get(self.config.admin, "/ready", timeout=1)
        return answer is not None and answer[0] == 200

    def wants_poll(self) -> float | None:
        """How soon the loop should come back: READY_POLL while a started Envoy is not ready yet."""
        return READY_POLL if self.supervisor is not None and not self.ready else None

    def stop(self, handover: bool) -> None:
        """Stop Envoy, or with ``handover`` leave it running and recorded for the next agent."""
        if self.supervisor is not None and handover and self.supervisor.detach() is not None:
            self.supervisor = None  # handed over: still running, recorded for the next agent
        if self.supervisor is not None:
            log.info("stopping envoy")
            code = self.supervisor.stop()
            log.info("envoy stopped exit_code=%s", code)
        elif not handover:
            stop_recorded_envoy(self.hot_restart())  # a predecessor's Envoy this run never took over
        self.ready = False

    # ---------------------------------------------------------------- reporting

    @property
    def pid(self) -> int | None:
        return self.supervisor.pid if self.supervisor else None

    @property
    def restarts(self) -> int:
        return self.supervisor.restarts if self.supervisor else 0

    def xds_upstream(self) -> tuple[str, ...]:
        """The replicas (xDS ``host:port``) Envoy's ADS connection is open to, from its admin ``/clusters``
        (the xDS cluster only), asked at most every refresh interval (and :data:`XDS_UPSTREAM_EVERY` s)."""
        now = time.monotonic()
        if self.supervisor is None or not self.ready:
            return ()
        if now - self._upstream[0] < min(XDS_UPSTREAM_EVERY, self.config.refresh_interval):
            return self._upstream[1]
        answer = admin_get(self.config.admin, f"/clusters?filter=^{naming.XDS_CLUSTER}$", timeout=1)
        hosts: tuple[str, ...] = ()
        if answer is not None and answer[0] == 200:
            pattern = rf"^{re.escape(naming.XDS_CLUSTER)}::(\S+)::cx_active::([1-9]\d*)$"
            hosts = tuple(sorted(h for h, _ in re.findall(pattern, answer[1].decode(errors="replace"), re.MULTILINE)))
        self._upstream = (now, hosts)
        return hosts

    def status(self, final: bool = False) -> EnvoyStatus:
        sup = self.supervisor
        return EnvoyStatus(pid=sup.pid if sup and not final else None, starts=sup.starts if sup else 0,
                           restarts=sup.restarts if sup else 0, last_exit_code=sup.last_exit_code if sup else None,
                           ready=self.ready, admin=self.config.admin,
                           xds_upstream=() if final else self.xds_upstream())
