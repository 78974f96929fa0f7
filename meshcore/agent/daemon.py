"""``meshcore-agent``: the per-VM daemon.

One loop, in the main thread: keep the node identity, the trust bundle and each local service's
SVID current (file-based SDS for Envoy), keep the Envoy bootstrap current, supervise Envoy (its own
thread), report to systemd and to ``<state>/status.json``. Losing the control plane never stops the
agent: Envoy keeps running with what it has and the agent retries with jittered backoff.

SIGUSR2 is the handover exit (agent upgrades): the agent exits leaving Envoy running and recorded
in ``<state>/envoy/envoy.json``; the next agent hot-restarts Envoy from it (see supervisor.py).

Exit status: 0 after SIGTERM/SIGINT/SIGUSR2, 2 when an operator must act first (bad configuration, no
valid node certificate and no join token, join refused), 1 on an unexpected error.
"""

from __future__ import annotations

import http.client
import logging
import os
import random
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from typing import Any

import tenacity

from meshcore import naming
from meshcore.agent._consul import ConsulSync
from meshcore.agent._net import split_host_port
from meshcore.agent.bootstrap import render_bootstrap, write_bootstrap
from meshcore.agent.client import AgentClient, AgentRequestError, IssuedIdentity, NodeService
from meshcore.agent.config import AgentConfig, load_config
from meshcore.agent.identity import (
    AgentMeta,
    Credential,
    bundle_sha256,
    bundle_trust_domain,
    early_renewal,
    file_mtime,
    NodeIdentityStore,
    key_matches_cert,
    next_wakeup,
    random_jitter,
    rfc3339,
    token_digest,
)
from meshcore.agent._access_log import AccessLogFollower, envoy_access_log_path
from meshcore.agent.consul_registration import agent_service_payload
from meshcore.agent.metrics import AgentFacts, AgentMetrics, MetricsServer
from meshcore.agent.notify import SystemdNotifier
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret
from meshcore.agent.status import (
    AgentStatus,
    ControlPlaneStatus,
    EnvoyStatus,
    ServiceStatus,
    build_status,
    write_status,
)
from meshcore.agent.supervisor import (
    EnvoySupervisor,
    HotRestart,
    envoy_command,
    stable_base_id,
    stop_recorded_envoy,
)
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.errors import AgentError, ConfigError, ControlPlaneUnavailable, MeshError, OperatorActionRequired

log = logging.getLogger("meshcore.agent")

MAX_RETRY_DELAY = 30.0
READY_POLL = 0.5
LOCAL_ERROR_DELAY = 5.0
ENVOY_START_WAIT = 30.0
USED_TOKENS_KEPT = 5




def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ControlPlaneUnavailable):
        return True
    return isinstance(exc, AgentRequestError) and exc.retryable


class RetryBackoff:
    """Jittered exponential delays (tenacity's ``wait_exponential_jitter``) for the control plane."""

    def __init__(self, maximum: float = MAX_RETRY_DELAY):
        self._wait = tenacity.wait_exponential_jitter(max=maximum, jitter=1)
        self._state = tenacity.RetryCallState(None, None, (), {})
        self.failures = 0

    def failed(self) -> float:
        """Record a failure; returns the delay before the next attempt."""
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._wait(self._state))

    def succeeded(self) -> None:
        self.failures = 0


class Agent:
    """The agent's state and main loop. ``run()`` returns the process exit status."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        reload_config: Callable[[], AgentConfig] | None = None,
        notifier: SystemdNotifier | None = None,
        clock: Callable[[], datetime] = _utcnow,
    ):
        self.config = config
        self._reload_config = reload_config
        self.notifier = notifier or SystemdNotifier()
        self.clock = clock
        self.store = NodeIdentityStore(config.state_dir)
        self.secrets = SecretsDirectory(config.state_dir / "secrets")
        self.bootstrap_path = config.state_dir / "envoy" / "bootstrap.json"
        self.meta = AgentMeta()
        self.node: Credential | None = None
        self.bundle: str | None = None
        from meshcore.federation import FederatedBundleFiles  # other trust domains' roots, one file each
        self.federated_files = FederatedBundleFiles(config.state_dir / "federated")
        self.federated: tuple[tuple[str, str], ...] = ()
        self.svids: dict[str, Credential] = {}
        self.desired: dict[str, NodeService] = {}  # service name -> first instance on this node
        self.instance_ids: dict[str, tuple[str, ...]] = {}
        self.svid_due: dict[str, datetime] = {}
        self.svid_errors: dict[str, str] = {}
        self.next_poll: datetime | None = None
        self.retry_at: datetime | None = None
        self.backoff = RetryBackoff()
        self.last_contact: datetime | None = None
        self.last_error: str | None = None
        self.supervisor: EnvoySupervisor | None = None
        self.envoy_ready = False
        self.consul = ConsulSync(config.consul_services_dir, config.node, extra_payloads=self._own_registrations)
        self.next_consul_sync: datetime | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()  # set to cut the loop's sleep short
        self._reload_requested = False
        self.handover_requested = False  # SIGUSR2: exit leaving Envoy running for the next agent
        self._last_watchdog = 0.0
        self._started_at = time.monotonic()
        self.metrics = AgentMetrics(self._metrics_facts)
        self.metrics_server: MetricsServer | None = None
        self.access_log: AccessLogFollower | None = None  # policy decisions per caller (Envoy's access log)

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

    def _metrics_facts(self) -> AgentFacts:
        sup = self.supervisor
        return AgentFacts(
            node=self.config.node,
            svids={n: (c.summary.spiffe_id, c.summary.not_after.timestamp()) for n, c in list(self.svids.items())},
            node_expiry=self.node.summary.not_after.timestamp() if self.node else None,
            envoy_restarts=sup.restarts if sup else 0, envoy_ready=self.envoy_ready,
            envoy_pid=sup.pid if sup else None, policy_log=self.access_log.counts() if self.access_log else None)

    def _own_registrations(self) -> list[dict]:
        """The agent's own Consul service (its metrics endpoint), beside the VM's services."""
        bound = self.metrics_server.bound() if self.metrics_server else None
        return [agent_service_payload(self.config.node, *bound)] if bound else []

    def _start_metrics(self) -> None:
        """Serve the merged /metrics; a busy port is logged, not fatal (the data plane matters more)."""
        if not self.config.metrics_bind:
            return
        try:
            self.metrics_server = MetricsServer(self.config.metrics_bind, self.metrics,
                                                lambda: self.config.admin).start()
            log.info("serving metrics on http://%s/metrics", self.metrics_server.address)
            self.access_log = AccessLogFollower(lambda: envoy_access_log_path(self.config.admin)).start()
        except MeshError as exc:
            log.error("%s", exc)

    def _metrics_address(self) -> str:
        """The advertised metrics host:port (a wildcard bind is advertised with the admin host)."""
        if self.metrics_server is None:
            return ""
        host, port = split_host_port(self.metrics_server.address)
        if host in ("0.0.0.0", "::", ""):
            host = split_host_port(self.config.admin)[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _start(self) -> None:
        self._start_metrics()
        self.store.prepare()
        self.secrets.prepare()
        self.bootstrap_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._schedule_consul(self.clock())  # registering in Consul needs no mesh identity: start at once
        try:
            self.meta = self.store.load_meta()
            self.node = self.store.load_node(random_jitter())
        except AgentError as exc:
            raise OperatorActionRequired(str(exc)) from exc
        self.bundle = self.store.load_bundle()
        self.federated = self.federated_files.load()
        self._load_existing_svids()
        now = self.clock()
        if self.node is None or self.node.summary.expired(now):
            token = self._join_token()
            if token is None:
                raise OperatorActionRequired(self._no_token_message(now))
            self._join_with_retries(token)
        else:
            log.info("node identity loaded node=%s spiffe_id=%s not_after=%s; no join needed",
                     self.config.node, self.node.summary.spiffe_id, rfc3339(self.node.summary.not_after))
        self._write_node_secrets()

    def _loop(self) -> None:
        while not self._stop.is_set():
            delay = LOCAL_ERROR_DELAY
            try:
                if self._reload_requested:
                    self._reload_requested = False
                    self._apply_reload()
                now = self.clock()
                if self._control_plane_due(now):
                    self._sync_control_plane(now)
                self._schedule_consul(now)
                self._maintain_envoy()
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
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.access_log is not None:
            self.access_log.stop()
        self.consul.stop()
        if self.supervisor is not None and self.handover_requested and self.supervisor.detach() is not None:
            self.supervisor = None  # handed over: still running, recorded for the next agent
        if self.supervisor is not None:
            log.info("stopping envoy")
            code = self.supervisor.stop()
            log.info("envoy stopped exit_code=%s", code)
        elif not self.handover_requested:
            stop_recorded_envoy(self._hot_restart())  # a predecessor's Envoy this run never took over
        self.envoy_ready = False
        try:
            self._report(final=True)
        except MeshError:
            log.debug("could not write the final status", exc_info=True)

    # ---------------------------------------------------------------- join

    def _client(self, authenticated: bool = True) -> AgentClient:
        return AgentClient(
            self.config.control_plane,
            self.config.ca_file,
            cert_file=self.store.cert_path if authenticated else None,
            key_file=self.store.key_path if authenticated else None,
            extra_ca_files=(self.store.bundle_path,),
            bundle_sha256=bundle_sha256(self.bundle) if authenticated else "",
        )

    def _join_token(self) -> str | None:
        token = self.config.join_token
        source = "--join-token"
        if not token and self.config.join_token_file is not None:
            source = str(self.config.join_token_file)
            try:
                token = self.config.join_token_file.read_text().strip()
            except FileNotFoundError:
                token = None
            except OSError as exc:
                raise OperatorActionRequired(f"cannot read the join token file {source}: {exc}") from exc
        if not token:
            return None
        if token_digest(token) in self.meta.used_token_sha256:
            log.warning("the join token from %s was already used by this agent; ignoring it", source)
            return None
        return token

    def _no_token_message(self, now: datetime) -> str:
        node = self.config.node
        if self.node is None:
            why = f"node {node!r} has not joined the mesh yet (no certificate in {self.config.state_dir})"
        else:
            why = f"the node certificate of {node!r} expired at {rfc3339(self.node.summary.not_after)}"
        return (f"{why} and no join token was given. Create one on the control plane with "
                f"`meshctl token create --node {node}`, pass it with --join-token-file FILE "
                f"(or --join-token), and start the agent again")

    def _join_with_retries(self, token: str) -> None:
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=tenacity.wait_exponential_jitter(max=MAX_RETRY_DELAY, jitter=1),
            stop=lambda state: self._stop.is_set(),
            sleep=self._interruptible_sleep,
            before_sleep=lambda state: log.warning(
                "join: control plane not reachable, retrying in %.1fs attempt=%d: %s",
                state.upcoming_sleep, state.attempt_number, state.outcome.exception() if state.outcome else ""),
            reraise=True,
        )
        self.notifier.status(f"joining the mesh at {self.config.control_plane}")
        try:
            retrying(self._join, token)
        except AgentRequestError as exc:
            if self._stop.is_set():
                return
            raise OperatorActionRequired(
                f"the control plane refused to join node {self.config.node!r}: {exc.reason}. Create a new token "
                f"with `meshctl token create --node {self.config.node}` and start the agent again with it"
            ) from exc
        except ControlPlaneUnavailable:
            if self._stop.is_set():
                return
            raise

    def _join(self, token: str) -> None:
        key = new_private_key(self.config.key_type)
        key_pem = key_to_pem(key)
        expected = self._node_spiffe_id(self._expected_trust_domain())
        issued = self._client(authenticated=False).join(self.config.node, token, make_csr(key, expected))
        if issued.spiffe_id != naming.node_spiffe_id(issued.trust_domain, self.config.node):
            raise AgentError(f"join: the control plane issued {issued.spiffe_id}, expected the node identity of "
                             f"{self.config.node!r} in trust domain {issued.trust_domain!r}")
        self.bundle = issued.bundle
        self.store.save_bundle(issued.bundle)
        self.meta.trust_domain = issued.trust_domain
        if issued.xds_address:
            self.meta.xds_address = issued.xds_address
        self.meta.used_token_sha256 = (self.meta.used_token_sha256 + [token_digest(token)])[-USED_TOKENS_KEPT:]
        self._install_node(issued, key_pem)  # also writes the node and bundle secret files
        self.store.save_meta(self.meta)
        self._retire_token_file()
        self.last_contact = self.clock()
        log.info("joined the mesh node=%s spiffe_id=%s not_after=%s xds=%s", self.config.node, issued.spiffe_id,
                 issued.not_after, self.meta.xds_address)

    def _expected_trust_domain(self) -> str:
        """The trust domain to join: known from a previous join, else named by the --ca-file root."""
        if self.meta.trust_domain:
            return self.meta.trust_domain
        try:
            from_bundle = bundle_trust_domain(self.config.ca_file.read_text())
        except OSError:
            from_bundle = None
        return from_bundle or naming.DEFAULT_TRUST_DOMAIN

    def _node_spiffe_id(self, trust_domain: str) -> str:
        return naming.node_spiffe_id(trust_domain, self.config.node)

    def _retire_token_file(self) -> None:
        path = self.config.join_token_file
        if path is None or self.config.join_token:
            return
        try:
            with open(path, "w"):
                pass  # truncate: the token is spent
            log.info("join token file emptied path=%s", path)
        except OSError as exc:
            log.warning("could not empty the join token file %s (%s); it is ignored from now on", path, exc)

    def _install_node(self, issued: IssuedIdentity, key_pem: str) -> None:
        if not key_matches_cert(key_pem, issued.chain):
            raise AgentError("the control plane returned a node certificate for another key")
        self.store.save_node(issued.chain, key_pem)
        self.node = Credential.build(issued.chain, key_pem, random_jitter(), issued_at=self.clock())
        self._write_node_secrets()

    def _write_node_secrets(self) -> None:
        if self.node is not None:
            self.secrets.write(tls_certificate_secret(naming.node_secret(), self.node.chain_pem, self.node.key_pem))
        if self.bundle and self.meta.trust_domain:
            from meshcore.federation import trust_validation_secret  # per-domain roots when federated

            self.secrets.write(trust_validation_secret(naming.trust_bundle_secret(self.meta.trust_domain),
                                                       self.meta.trust_domain, self.bundle, self.federated))

    # ---------------------------------------------------------------- control plane sync

    def _control_plane_due(self, now: datetime) -> bool:
        if self.retry_at is not None:
            return now >= self.retry_at
        return any(deadline <= now for deadline in self._deadlines())

    def _deadlines(self) -> list[datetime]:
        deadlines = [self.next_poll or datetime.min.replace(tzinfo=timezone.utc)]
        if self.node is not None:
            deadlines.append(self.node.renew_at)
        deadlines.extend(self.svid_due.values())
        return deadlines

    def _sync_control_plane(self, now: datetime) -> None:
        try:
            self._ensure_node_identity(now)
            if self.next_poll is None or now >= self.next_poll:
                self._poll(now)
            self._issue_due_svids(now)
        except (ControlPlaneUnavailable, AgentError) as exc:
            delay = self.backoff.failed()
            self.retry_at = now + _seconds(delay)
            self.last_error = str(exc)
            log.warning("control plane sync failed, envoy keeps its current config; retrying in %.1fs "
                        "failures=%d: %s", delay, self.backoff.failures, exc,
                        extra={"node": self.config.node, "failures": self.backoff.failures})
            self.notifier.status(f"control plane sync failing ({self.backoff.failures} failures): {exc}")
            return
        if self.backoff.failures:
            log.info("control plane reachable again after %d failed attempts", self.backoff.failures)
        self.backoff.succeeded()
        self.retry_at = None
        self.last_error = None

    def _ensure_node_identity(self, now: datetime) -> None:
        assert self.node is not None
        if self.node.summary.expired(now):
            token = self._join_token()
            if token is None:
                raise AgentError(self._no_token_message(now).replace(
                    "start the agent again", "reload the agent (systemctl reload meshcore-agent)"))
            try:
                self._join(token)
            except AgentRequestError as exc:
                if exc.retryable:
                    raise
                raise AgentError(f"join refused: {exc.reason}; create a new token with `meshctl token create "
                                 f"--node {self.config.node}`") from exc
            return
        if now >= self.node.renew_at:
            self._renew_node()

    def _renew_node(self) -> None:
        assert self.node is not None
        key = new_private_key(self.config.key_type)
        key_pem = key_to_pem(key)
        issued = self._client().renew_node(make_csr(key, self.node.summary.spiffe_id))
        if issued.spiffe_id != self.node.summary.spiffe_id:
            raise AgentError(f"renew-node: got {issued.spiffe_id}, expected {self.node.summary.spiffe_id}")
        old = self.node.summary.serial
        self._install_node(issued, key_pem)
        self.last_contact = self.clock()
        log.info("node certificate renewed node=%s old_serial=%s serial=%s not_after=%s renew_at=%s",
                 self.config.node, old, self.node.summary.serial, rfc3339(self.node.summary.not_after),
                 rfc3339(self.node.renew_at))

    def _poll(self, now: datetime) -> None:
        client = self._client()
        listing = client.services()
        bundle = client.bundle()
        self.last_contact = self.clock()
        self._watchdog()
        if listing.node != self.config.node:
            raise AgentError(f"the control plane answered for node {listing.node!r}, this is {self.config.node!r}")
        meta_changed = False
        if bundle.trust_domain != self.meta.trust_domain:
            log.warning("trust domain changed old=%s new=%s", self.meta.trust_domain, bundle.trust_domain)
            self.meta.trust_domain = bundle.trust_domain
            meta_changed = True
        if listing.xds_address and listing.xds_address != self.meta.xds_address:
            log.info("xds address changed old=%s new=%s", self.meta.xds_address, listing.xds_address)
            self.meta.xds_address = listing.xds_address
            meta_changed = True
        if meta_changed:
            self.store.save_meta(self.meta)
        if self.store.save_bundle(bundle.bundle):
            log.info("trust bundle updated trust_domain=%s", bundle.trust_domain)
        self.bundle = bundle.bundle
        if self.federated_files.save(bundle.federated):
            log.info("federated trust bundles updated trust_domains=%s", ",".join(td for td, _ in bundle.federated))
        self.federated = bundle.federated
        self._write_node_secrets()
        self._follow_issuer(listing.signer_key_id, now)
        self._reconcile_services(listing.services, now)
        self.next_poll = now + _seconds(self.config.refresh_interval)

    def _follow_issuer(self, signer_key_id: str, now: datetime) -> None:
        """Root rotation: renew early (jittered over one refresh interval) every certificate the
        current intermediate did not sign: the node certificate and each SVID."""
        if not signer_key_id:
            return
        window = self.config.refresh_interval
        held = [("node", self.node)] if self.node is not None else []
        held += [(f"service={name}", cred) for name, cred in sorted(self.svids.items())]
        for what, cred in held:
            if cred is None or not cred.summary.issuer_key_id or cred.summary.issuer_key_id == signer_key_id:
                continue
            renew_at = early_renewal(cred.renew_at, now, window, random.random())
            if renew_at != cred.renew_at:
                log.info("issuer changed (CA rotation): renewing early %s serial=%s renew_at=%s", what,
                         cred.summary.serial, rfc3339(renew_at), extra={"node": self.config.node})
                cred.renew_at = renew_at

    def _reconcile_services(self, services: Sequence[NodeService], now: datetime) -> None:
        desired: dict[str, NodeService] = {}
        ids: dict[str, list[str]] = {}
        for svc in services:
            first = desired.setdefault(svc.name, svc)
            if first.spiffe_id != svc.spiffe_id:
                log.warning("service %s has instances with different identities (%s, %s); using %s",
                            svc.name, first.spiffe_id, svc.spiffe_id, first.spiffe_id)
            ids.setdefault(svc.name, []).append(svc.id)
        for name in sorted(set(self.desired) | set(self.svids)):
            if name not in desired:
                log.info("service left this node; removing its SVID service=%s", name)
                self.svids.pop(name, None)
                self.svid_due.pop(name, None)
                self.svid_errors.pop(name, None)
        for name, svc in desired.items():
            held = self.svids.get(name)
            if held is None or held.summary.spiffe_id != svc.spiffe_id:
                self.svid_due[name] = now  # new, refused before, or its identity changed: (re)issue now
            else:
                self.svid_due[name] = held.renew_at
        self.desired = desired
        self.instance_ids = {name: tuple(v) for name, v in ids.items()}
        keep = {naming.node_secret(), naming.trust_bundle_secret(self.meta.trust_domain)}
        keep |= {naming.svid_secret(name) for name in set(self.svids) | set(desired)}
        for removed in self.secrets.remove_except(keep):
            log.info("removed secret file no longer needed file=%s", removed)

    def _issue_due_svids(self, now: datetime) -> None:
        for name in sorted(self.svid_due):
            if self.svid_due[name] > now or name not in self.desired:
                continue
            svc = self.desired[name]
            try:
                self._issue_svid(svc)
            except AgentRequestError as exc:
                if exc.retryable:
                    raise
                self.svid_errors[name] = exc.reason
                self.svid_due[name] = self.next_poll or now
                log.warning("SVID refused service=%s spiffe_id=%s: %s", name, svc.spiffe_id, exc.reason,
                            extra={"service": name})
            self._watchdog()

    def _issue_svid(self, svc: NodeService) -> None:
        key = new_private_key(self.config.key_type)
        key_pem = key_to_pem(key)
        issued = self._client().sign(make_csr(key, svc.spiffe_id))
        if issued.spiffe_id != svc.spiffe_id or not key_matches_cert(key_pem, issued.chain):
            raise AgentError(f"sign: the control plane returned a certificate for {issued.spiffe_id}, "
                             f"not for {svc.spiffe_id} with the key sent")
        credential = Credential.build(issued.chain, key_pem, random_jitter(), issued_at=self.clock())
        self.secrets.write(tls_certificate_secret(naming.svid_secret(svc.name), issued.chain, key_pem))
        old = self.svids.get(svc.name)
        self.svids[svc.name] = credential
        self.svid_due[svc.name] = credential.renew_at
        self.svid_errors.pop(svc.name, None)
        self.last_contact = self.clock()
        self.metrics.svid_issued.labels(svc.name, "renewal" if old else "issue").inc()
        log.info("%s service=%s spiffe_id=%s serial=%s not_after=%s renew_at=%s",
                 "SVID renewed" if old else "SVID issued", svc.name, svc.spiffe_id, credential.summary.serial,
                 rfc3339(credential.summary.not_after), rfc3339(credential.renew_at),
                 extra={"service": svc.name})

    def _load_existing_svids(self) -> None:
        """Adopt SVID files a previous run wrote, so a restart does not re-sign what is still good."""
        prefix = naming.svid_secret("")
        now = self.clock()
        for name in self.secrets.names():
            if not name.startswith(prefix):
                continue
            secret = self.secrets.read(name)
            if not secret or "tls_certificate" not in secret:
                continue
            service = name[len(prefix):]
            try:
                chain = secret["tls_certificate"]["certificate_chain"]["inline_string"]
                key_pem = secret["tls_certificate"]["private_key"]["inline_string"]
                credential = Credential.build(chain, key_pem, random_jitter(),
                                              issued_at=file_mtime(self.secrets.path_of(name)))
            except (KeyError, TypeError, MeshError):
                continue
            if credential.summary.expired(now) or not key_matches_cert(key_pem, chain):
                continue
            self.svids[service] = credential
            log.info("adopted SVID from a previous run service=%s serial=%s not_after=%s", service,
                     credential.summary.serial, rfc3339(credential.summary.not_after))

    def _schedule_consul(self, now: datetime) -> None:
        """Consul registration does not depend on the control plane: it runs even when that is down."""
        if self.consul.enabled and (self.next_consul_sync is None or now >= self.next_consul_sync):
            self.consul.trigger()
            self.next_consul_sync = now + _seconds(self.config.refresh_interval)

    # ---------------------------------------------------------------- envoy

    def _envoy_argv(self) -> list[str]:
        return envoy_command(self.config.envoy_path, self.bootstrap_path, log_level=self.config.envoy_log_level,
                             log_path=self.config.envoy_log, hot_restart=True)

    def _hot_restart(self) -> HotRestart:
        return HotRestart(stable_base_id(self.config.node, self.config.state_dir),
                          self.bootstrap_path.parent / "envoy.json")

    def _maintain_envoy(self) -> None:
        td, xds = self.meta.trust_domain, self.meta.xds_address
        if not (td and xds and self.node and self.bundle):
            return
        bootstrap = render_bootstrap(node=self.config.node, trust_domain=td, xds_address=xds,
                                     secrets_dir=self.secrets.path, admin_address=self.config.admin,
                                     metrics_address=self._metrics_address(), xds_protocol=self.config.xds_protocol)
        changed = write_bootstrap(self.bootstrap_path, bootstrap)
        if changed:
            log.info("envoy bootstrap written path=%s xds=%s", self.bootstrap_path, xds)
        ready_to_start = self.secrets.exists(naming.node_secret()) and self.secrets.exists(
            naming.trust_bundle_secret(td))
        if self.supervisor is None:
            if not ready_to_start or not self._workload_secrets_ready():
                return
            if self.config.envoy_log is not None:
                self.config.envoy_log.parent.mkdir(parents=True, exist_ok=True)
            self.supervisor = EnvoySupervisor(self._envoy_argv(), hot_restart=self._hot_restart())
            self.supervisor.start()
            self.notifier.status("envoy starting")
        elif changed or self.supervisor.argv != self._envoy_argv():
            log.info("envoy configuration changed; restarting envoy")
            self.supervisor.argv = self._envoy_argv()
            self.envoy_ready = False
            self.supervisor.restart()
        self.envoy_ready = self._envoy_is_ready()
        if self.envoy_ready and not self.notifier.ready_sent:
            log.info("envoy is ready admin=%s", self.config.admin)
            self.notifier.ready(self._status_line())

    def _workload_secrets_ready(self) -> bool:
        """Hold Envoy's first start until the local services' SVID files exist.

        The control plane's listeners name those files; Envoy rejects a listener whose secret file
        is missing and would not ask again until the next push. With ``--consul-services-dir`` the
        agent also waits for the control plane to list the services it just registered in Consul.
        Bounded by ``ENVOY_START_WAIT`` so one refused identity cannot keep Envoy down.
        """
        if time.monotonic() - self._started_at > ENVOY_START_WAIT:
            return True
        if self.next_poll is None:  # no answer from the control plane yet in this run
            return self.backoff.failures > 0  # unreachable: run Envoy with what it has, nothing gets pushed
        missing = {name for name in self.desired if name not in self.svids and name not in self.svid_errors}
        if self.consul.enabled:
            if self.consul.last_sync is None and self.consul.last_error is None:
                return False  # first Consul sync still running
            missing |= set(self.consul.mesh_services) - set(self.desired)
        if missing:
            log.debug("envoy start waits for SVIDs services=%s", ",".join(sorted(missing)))
        return not missing

    def _envoy_is_ready(self) -> bool:
        if self.supervisor is None or not self.supervisor.running:
            return False
        host, port = split_host_port(self.config.admin)
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        conn = http.client.HTTPConnection(host, port, timeout=1)  # direct: never through an HTTP proxy
        try:
            conn.request("GET", "/ready")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    # ---------------------------------------------------------------- reporting

    def _status_line(self) -> str:
        parts = [f"envoy {'ready' if self.envoy_ready else 'not ready'}",
                 f"{len(self.svids)}/{len(self.desired)} SVIDs"]
        if self.node is not None:
            parts.append(f"node cert until {rfc3339(self.node.summary.not_after)}")
        if self.backoff.failures:
            parts.append(f"control plane sync failing ({self.backoff.failures} failures)")
        return "; ".join(parts)

    def _state(self) -> str:
        if self._stop.is_set():
            return "stopped"
        if self.node is None:
            return "joining"
        if self.backoff.failures:
            return "degraded"
        return "ready" if self.envoy_ready else "starting"

    def _report(self, final: bool = False) -> None:
        services = tuple(
            ServiceStatus(
                name=name, ids=self.instance_ids.get(name, ()),
                spiffe_id=self.desired[name].spiffe_id if name in self.desired else self.svids[name].summary.spiffe_id,
                cert=self.svids[name].summary if name in self.svids else None,
                renew_at=self.svids[name].renew_at if name in self.svids else None,
                error=self.svid_errors.get(name),
            )
            for name in sorted(set(self.desired) | set(self.svids))
        )
        sup = self.supervisor
        status = AgentStatus(
            node=self.config.node,
            trust_domain=self.meta.trust_domain,
            state=self._state(),
            node_cert=self.node.summary if self.node else None,
            node_renew_at=self.node.renew_at if self.node else None,
            services=services,
            envoy=EnvoyStatus(pid=sup.pid if sup and not final else None, starts=sup.starts if sup else 0,
                              restarts=sup.restarts if sup else 0, last_exit_code=sup.last_exit_code if sup else None,
                              ready=self.envoy_ready, admin=self.config.admin),
            control_plane=ControlPlaneStatus(address=self.config.control_plane, last_contact=self.last_contact,
                                             last_error=self.last_error,
                                             consecutive_failures=self.backoff.failures,
                                             xds_address=self.meta.xds_address),
            pid=os.getpid(),
            consul=self.consul.status(),
        )
        write_status(self.config.state_dir, build_status(status))
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
        if self.supervisor is not None and not self.envoy_ready:
            cap = min(cap, READY_POLL)
        deadlines = [self.retry_at] if self.retry_at is not None else self._deadlines()
        return next_wakeup(now, deadlines, cap)

    def _interruptible_sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self._watchdog()
            interval = self.notifier.watchdog_interval() or remaining
            self._stop.wait(min(remaining, interval))

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
        if new.consul_services_dir != self.config.consul_services_dir:
            self.consul.stop()
            self.consul = ConsulSync(new.consul_services_dir, self.config.node, extra_payloads=self._own_registrations)
            self.next_consul_sync = None
        self.config = new
        log.info("configuration reloaded from %s", new.config_file or "flags and environment")
        self.next_poll = None  # poll at once with the new settings
        self.retry_at = None
        self.notifier.ready(self._status_line())


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


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
    log.info("meshcore-agent starting node=%s control_plane=%s state_dir=%s", config.node, config.control_plane,
             config.state_dir)
    try:
        return agent.run()
    except MeshError as exc:
        log.error("meshcore-agent failed: %s", exc)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
