"""``meshcore-agent``: the per-VM daemon.

The agent is a few small reconcilers, each owning its state and handed only what it needs
(:mod:`meshcore.agent.reconcilers`), driven by one loop in the main thread:

* identity: the node certificate, the trust bundles and each local service's SVID (file-based SDS);
* envoy: the bootstrap file and the Envoy process (supervised in its own thread);
* consul: this VM's registrations in the local Consul agent (its own worker thread);
* metrics and access log: the VM's Prometheus endpoint, computed when scraped.

:class:`Agent` wires them together, sleeps until the earliest deadline any of them has (or an event
wakes it: a signal, a new service registered), and reports to systemd and ``<state>/status.json``.
Losing the control plane never stops the agent: Envoy keeps running with what it has and the agent
retries with jittered backoff.

SIGUSR2 is the handover exit (agent upgrades): the agent exits leaving Envoy running and recorded
in ``<state>/envoy/envoy.json``; the next agent hot-restarts Envoy from it (see supervisor.py).

Exit status: 0 after SIGTERM/SIGINT/SIGUSR2, 2 when an operator must act first (bad configuration, no
valid node certificate and no join token, join refused), 1 on an unexpected error.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from meshcore.agent.config import AgentConfig, load_config
from meshcore.agent.config_version import AckedConfigVersion
from meshcore.agent.identity import NodeIdentityStore, next_wakeup, rfc3339
from meshcore.agent.metrics import AgentFacts
from meshcore.agent.notify import SystemdNotifier
from meshcore.agent.reconcilers.access_log import AccessLogReconciler
from meshcore.agent.reconcilers.consul import ConsulReconciler
from meshcore.agent.reconcilers.envoy import EnvoyReconciler
from meshcore.agent.reconcilers.identity import IdentityReconciler, OperatorActionRequired, RetryBackoff
from meshcore.agent.reconcilers.metrics import MetricsReconciler
from meshcore.agent.secrets import SecretsDirectory
from meshcore.agent.status import AgentStatus, ControlPlaneStatus, StatusWriter, build_status
from meshcore.errors import ConfigError, MeshError

log = logging.getLogger("meshcore.agent")

__all__ = ["Agent", "OperatorActionRequired", "RetryBackoff", "main", "setup_logging", "ENVOY_START_WAIT"]

LOCAL_ERROR_DELAY = 5.0
ENVOY_START_WAIT = 30.0


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Agent:
    """Wires the reconcilers together and runs the loop. ``run()`` returns the process exit status."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        reload_config: Callable[[], AgentConfig] | None = None,
        notifier: SystemdNotifier | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ):
        from meshcore.federation import FederatedBundleFiles  # other trust domains' roots, one file each

        self.config = config
        self._reload_config = reload_config
        self.notifier = notifier or SystemdNotifier()
        self.clock = clock
        self._stop = threading.Event()
        self._wake = threading.Event()  # set to cut the loop's sleep short
        self._reload_requested = False
        self.handover_requested = False  # SIGUSR2: exit leaving Envoy running for the next agent
        self._last_watchdog = 0.0
        self._started_at = time.monotonic()
        current = self._current_config
        self.secrets = SecretsDirectory(config.state_dir / "secrets")
        self._status_file = StatusWriter(config.state_dir)
        self.metrics = MetricsReconciler(config.node, lambda: self.config.metrics_bind,
                                         lambda: self.config.admin, self._metrics_facts)
        self.access_log = AccessLogReconciler(lambda: self.config.admin)
        self.identity = IdentityReconciler(
            current, store=NodeIdentityStore(config.state_dir), secrets=self.secrets,
            federated_files=FederatedBundleFiles(config.state_dir / "federated"), clock=clock,
            stopping=self._stop, keepalive=self._watchdog, status=self.notifier.status,
            issued=self.metrics.svid_issued, wake=self._wake.set)
        self._config_version = AckedConfigVersion(lambda: self.config.admin)  # for the sidecars' Consul meta
        self.consul = ConsulReconciler(
            config.consul_services_dir, config.node, interval=lambda: self.config.refresh_interval,
            own_payloads=self.metrics.own_registrations, prepare=self.identity.prepare_services,
            registered=self._services_registered, deregistered=self.identity.forget_pending,
            syncer_factory=self._consul_syncer, resync_on=self._config_version)
        self.envoy = EnvoyReconciler(
            current, secrets=self.secrets, inputs=self.identity.bootstrap_inputs, may_start=self._envoy_may_start,
            metrics_address=self.metrics.address, notify_status=self.notifier.status,
            xds_addresses=self.identity.xds_addresses)

    def _current_config(self) -> AgentConfig:
        return self.config

    def _consul_syncer(self) -> Any:
        """The Consul registrar, its sidecars' meta carrying the config version this node's Envoy ACKed."""
        from meshcore.agent.consul_registration import registrar_syncer  # py-consul loads only to register

        return registrar_syncer(self._config_version)

    # ---------------------------------------------------------------- lifecycle

    def request_stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def request_handover(self) -> None:
        """Ask the loop to exit leaving Envoy running, for a new agent to hot-restart (signal-safe)."""
        self.handover_requested = True
        self.request_stop()

    def request_reload(self) -> None:
        """Ask the loop to re-read the configuration (safe from a signal handler)."""
        self._reload_requested = True
        self._wake.set()

    def run(self) -> int:
        try:
            self._start()
            if self._stop.is_set():
                return 0
            self._loop()
            return 0
        except OperatorActionRequired as exc:
            log.error("%s", exc)
            self.notifier.status(f"stopped: {exc}")
            return 2
        finally:
            self._shutdown()

    def _start(self) -> None:
        if self.metrics.start():
            self.access_log.start()
        self.envoy.prepare()
        self.identity.prepare()  # the Consul worker may write pending SVID files from its first sync
        self.consul.reconcile(self.clock())  # registering in Consul needs no mesh identity: start at once
        self.identity.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            delay = LOCAL_ERROR_DELAY
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._apply_reload()
                now = self.clock()
                self.identity.reconcile(now)
                self.consul.reconcile(now)
                self.envoy.reconcile()
                if self.envoy.ready and not self.notifier.ready_sent:
                    log.info("envoy is ready admin=%s", self.config.admin)
                    self.notifier.ready(self._status_line())
                self._report()
                delay = self._sleep_seconds()
            except MeshError as exc:
                # e.g. a full disk: keep Envoy running with what it has rather than exit and take it down
                log.error("agent loop error (retrying in %.0fs): %s", delay, exc)
                self.notifier.status(f"error: {exc}")
                self._watchdog()
            self._wake.clear()
            self._wake.wait(delay)

    def _shutdown(self) -> None:
        self.notifier.stopping()
        self.metrics.stop()
        self.access_log.stop()
        self.consul.stop()
        self.identity.replicas.stop()
        self.envoy.stop(handover=self.handover_requested)
        try:
            self._report(final=True)
        except MeshError:
            log.debug("could not write the final status", exc_info=True)

    # ---------------------------------------------------------------- glue between reconcilers

    def _services_registered(self, names: frozenset[str]) -> None:
        """Consul worker thread: new mesh services were registered; get their SVIDs now."""
        log.info("new services registered in consul services=%s; polling the control plane for their SVIDs",
                 ",".join(sorted(names)))
        self.identity.expect_services(names)
        self._wake.set()

    def _envoy_may_start(self) -> bool:
        """Hold Envoy's first start until the local services' SVID files exist.

        The control plane's listeners name those files; Envoy rejects a listener whose secret file
        is missing and would not ask again until the next push. With ``--consul-services-dir`` the
        agent also waits for the control plane to list the services it just registered in Consul.
        Bounded by ``ENVOY_START_WAIT`` so one refused identity cannot keep Envoy down.
        """
        if time.monotonic() - self._started_at > ENVOY_START_WAIT:
            return True
        if not self.identity.polled:  # no answer from the control plane yet in this run
            return self.identity.backoff.failures > 0  # unreachable: run Envoy with what it has, nothing gets pushed
        missing = self.identity.missing_svids()
        if self.consul.enabled:
            if not self.consul.first_sync_done:
                return False  # first Consul sync still running
            missing |= set(self.consul.mesh_services) - set(self.identity.desired)
        if missing:
            log.debug("envoy start waits for SVIDs services=%s", ",".join(sorted(missing)))
        return not missing

    def _metrics_facts(self) -> AgentFacts:
        node = self.identity.node
        return AgentFacts(
            node=self.config.node, svids=self.identity.svid_expiry(),
            node_expiry=node.summary.not_after.timestamp() if node else None,
            envoy_restarts=self.envoy.restarts, envoy_ready=self.envoy.ready,
            envoy_pid=self.envoy.pid, policy_log=self.access_log.counts())

    # ---------------------------------------------------------------- reporting

    def _status_line(self) -> str:
        ident = self.identity
        parts = [f"envoy {'ready' if self.envoy.ready else 'not ready'}",
                 f"{len(ident.svids)}/{len(ident.desired)} SVIDs"]
        if ident.node is not None:
            parts.append(f"node cert until {rfc3339(ident.node.summary.not_after)}")
        if ident.replicas.current:
            parts.append(f"control plane {ident.replicas.current}")
        if ident.backoff.failures:
            parts.append(f"control plane sync failing ({ident.backoff.failures} failures)")
        return "; ".join(parts)

    def _state(self) -> str:
        if self._stop.is_set():
            return "stopped"
        if self.identity.node is None:
            return "joining"
        if self.identity.backoff.failures or self.identity.certificate_alarms(self.clock()):
            return "degraded"
        return "ready" if self.envoy.ready else "starting"

    def _report(self, final: bool = False) -> None:
        ident = self.identity
        status = AgentStatus(
            node=self.config.node,
            trust_domain=ident.meta.trust_domain,
            state=self._state(),
            node_cert=ident.node.summary if ident.node else None,
            node_renew_at=ident.node.renew_at if ident.node else None,
            services=ident.service_status(),
            envoy=self.envoy.status(final),
            control_plane=ControlPlaneStatus(address=ident.replicas.current, last_contact=ident.last_contact,
                                             last_error=ident.last_error,
                                             consecutive_failures=ident.backoff.failures,
                                             xds_address=ident.meta.xds_address,
                                             replicas=tuple(ident.replicas.status())),
            pid=os.getpid(),
            consul=self.consul.status(),
            certificate_alarms=tuple(ident.certificate_alarms(self.clock())),
        )
        self._status_file.write(build_status(status), force=final)
        if not final:
            self.notifier.status(self._status_line())
            self._watchdog()

    def _watchdog(self) -> None:
        interval = self.notifier.watchdog_interval()
        if interval is None:
            return
        now = time.monotonic()
        if now - self._last_watchdog >= interval * 0.9:
            self.notifier.watchdog()
            self._last_watchdog = now

    # ---------------------------------------------------------------- timing

    def _sleep_seconds(self) -> float:
        now = self.clock()
        cap = self.config.refresh_interval
        interval = self.notifier.watchdog_interval()
        if interval is not None:
            cap = min(cap, interval)
        envoy_poll = self.envoy.wants_poll()
        if envoy_poll is not None:
            cap = min(cap, envoy_poll)
        return next_wakeup(now, self.identity.deadlines(), cap)

    # ---------------------------------------------------------------- reload

    def _apply_reload(self) -> None:
        if self._reload_config is None:
            return
        self.notifier.reloading()
        try:
            new = self._reload_config()
        except (ConfigError, SystemExit) as exc:
            log.error("configuration reload failed, keeping the current configuration: %s", exc)
            self.notifier.ready(self._status_line())
            return
        fixed = {"node": new.node != self.config.node, "state_dir": new.state_dir != self.config.state_dir}
        for name, differs in fixed.items():
            if differs:
                log.warning("%s cannot change while the agent runs; restart the agent to apply it", name)
        new = replace(new, node=self.config.node, state_dir=self.config.state_dir)
        if new.log_level != self.config.log_level:
            logging.getLogger().setLevel(new.log_level.upper())
        self.consul.replace(new.consul_services_dir)
        self.identity.replicas.reconfigure(new.control_plane_urls, new.control_plane_service)
        self.config = new
        log.info("configuration reloaded from %s", new.config_file or "flags and environment")
        self.identity.reset_schedule()  # poll at once with the new settings
        self.notifier.ready(self._status_line())


def setup_logging(level: str, env: Mapping[str, str] | None = None) -> None:
    """Plain key=value lines on stderr; no timestamps under journald (it stamps lines itself)."""
    env = os.environ if env is None else env
    fmt = "%(levelname)s %(name)s: %(message)s" if env.get("JOURNAL_STREAM") else \
        "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=level.upper(), format=fmt, stream=sys.stderr, force=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``meshcore-agent`` (and ``python -m meshcore.agent``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ)
    try:
        config = load_config(argv, env)
    except ConfigError as exc:
        print(f"meshcore-agent: {exc}", file=sys.stderr)
        return 2
    setup_logging(config.log_level, env)
    agent = Agent(config, reload_config=lambda: load_config(argv, env))
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)}

    def on_stop(signum: int, _frame: Any) -> None:
        log.info("received %s; stopping", signal.Signals(signum).name)
        agent.request_stop()

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, lambda *_: agent.request_reload())

    def on_handover(signum: int, _frame: Any) -> None:
        log.info("received SIGUSR2; exiting and leaving envoy running for the next agent (hot restart)")
        agent.request_handover()

    signal.signal(signal.SIGUSR2, on_handover)  # upgrades: the next agent hot-restarts Envoy
    log.info("meshcore-agent starting node=%s control_plane=%s state_dir=%s", config.node,
             ",".join(config.control_plane_urls + ((f"consul:{config.control_plane_service}",)
                                                   if config.control_plane_service else ())), config.state_dir)
    try:
        return agent.run()
    except MeshError as exc:
        log.error("meshcore-agent failed: %s", exc)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
