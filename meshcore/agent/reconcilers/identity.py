"""The identity reconciler: the node certificate, the trust bundles and one SVID per local service.

It owns everything the agent holds from the control plane: the node credential (join with a
one-time token, renewal at half life, early renewal when the CA rotates its intermediate, and
recovery when it expired: see below), the trust
bundle and the federated bundles (written as Envoy SDS files), and each local service's SVID
(issued when the control plane lists the service on this node, renewed before expiry, removed when
the service leaves). Control plane failures back off with jitter; nothing here stops Envoy.

Its collaborators are narrow: the settings (:class:`~meshcore.agent.config.AgentConfig`, a value),
the files (:class:`NodeIdentityStore`, :class:`SecretsDirectory`, the federated bundle files), a
client factory, a clock, and callbacks (``keepalive`` for the systemd watchdog during long calls,
``issued`` for the metrics counter). Testable without a daemon.

New services and the NACK race: a listener names its service's SVID file, and Envoy rejects the
whole listener update when that file does not exist yet. :meth:`IdentityReconciler.prepare_services`
(called before a service is registered in Consul) writes a *pending* certificate into the file (a
self-signed throwaway that no peer trusts), so the file exists whenever a listener can name it;
:meth:`expect_services` makes the next polls come quickly until the control plane lists the new
service, and its real SVID replaces the pending one at once (file SDS reloads it in place).

An expired node certificate (a control plane outage longer than its remaining life, a full disk ...)
does not strand the VM: the agent proves to ``/v1/agent/recover`` that it still holds the expired
certificate's key (:mod:`meshcore.ca.recovery`) and gets a new one, retrying with backoff while the
control plane is down. Only when the control plane refuses (node revoked, left the catalog, expired
longer than the recovery grace) does it fall back to a join token, or ask for one.

Certificates Envoy serves are watched (:meth:`IdentityReconciler.certificate_alarms`): one expired, or
with less than :data:`ALARM_FRACTION` of its lifetime left, is logged at ERROR (once per certificate and
state) and listed in the agent's status; the sync-failure message then says so instead of claiming
Envoy keeps a working config.

Following the control plane without polling: after the first answer, a watcher thread keeps one
blocking query open (``/v1/agent/services?index=...&wait=60s``, Consul's style). The control plane
answers it as soon as this node's services, the CA state (bundle, signing intermediate), the xDS address
or the federated bundles change, and the watcher wakes the loop, which applies the answer (and fetches
the bundle only when the index moved). While the watcher works the loop's own poll is a safety net every
:data:`WATCH_FALLBACK` seconds; against a control plane without blocking queries (no ``index`` in its
answers), or one that answers at once because it holds too many calls, the loop polls every refresh
interval as before. Renewals keep their own deadlines.
"""

from __future__ import annotations

import logging
import random
import threading
from contextlib import closing
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timedelta, timezone

import tenacity

from meshcore import naming
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from meshcore.agent.client import AgentClient, AgentRequestError, FailoverClient, IssuedIdentity, NodeService
from meshcore.agent.config import AgentConfig
from meshcore.agent.identity import (
    AgentMeta,
    Credential,
    NodeIdentityStore,
    bundle_sha256,
    bundle_trust_domain,
    early_renewal,
    file_mtime,
    key_matches_cert,
    pending_certificate,
    random_jitter,
    rfc3339,
    token_digest,
)
from meshcore.agent.replicas import ReplicaSet
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret
from meshcore.agent.status import ServiceStatus
from meshcore.api.agent import NodeServices, RecoverRequest, TrustBundle, federated_digest
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.ca.recovery import recovery_message, sign_recovery
from meshcore.errors import AgentError, ControlPlaneUnavailable, MeshError, OperatorActionRequired

log = logging.getLogger("meshcore.agent")

MAX_RETRY_DELAY = 30.0
USED_TOKENS_KEPT = 5
# After a new service is registered, poll the control plane this often until it lists the service
# (it reads Consul with blocking queries: usually within a few hundred milliseconds) ...
EXPECT_POLL = 0.25
# ... for at most this long (a service the control plane never lists, e.g. not in the mesh).
EXPECT_FOR = 30.0

# The watcher's blocking query is held this long by the control plane (when nothing changes) ...
WATCH_WAIT = 60.0
# ... and while it works, the loop polls only this often (a safety net).
WATCH_FALLBACK = 300.0

# A served certificate with less than this fraction of its lifetime left is alarmed (it renews at half life).
ALARM_FRACTION = 0.25

ClientFactory = Callable[..., AgentClient]


def _seconds(value: float) -> timedelta:
    return timedelta(seconds=value)


def _alarm_state(cred: Credential, now: datetime) -> str:
    """``expired``, ``expiring`` (less than ALARM_FRACTION of its life left) or ``ok``."""
    summary = cred.summary
    if summary.expired(now):
        return "expired"
    if summary.not_after - now < cred.lifetime * ALARM_FRACTION:
        return "expiring"
    return "ok"


def _retryable(exc: BaseException) -> bool:
    if isinstance(exc, ControlPlaneUnavailable):
        return True
    return isinstance(exc, AgentRequestError) and exc.retryable


class RetryBackoff:
    """Jittered exponential delays (tenacity's ``wait_exponential_jitter``) for the control plane."""

    def __init__(self, maximum: float = MAX_RETRY_DELAY):
        self._wait = tenacity.wait_exponential_jitter(max=maximum, jitter=1)
        self._state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # no Retrying: only the wait
        self.failures = 0

    def failed(self) -> float:
        """Record a failure; returns the delay before the next attempt."""
        self.failures += 1
        self._state.attempt_number = self.failures
        return float(self._wait(self._state))

    def succeeded(self) -> None:
        self.failures = 0


class IdentityReconciler:
    """Keeps the node credential, the bundles and the SVIDs current (see the module docstring)."""

    def __init__(
        self,
        config: Callable[[], AgentConfig],
        *,
        store: NodeIdentityStore,
        secrets: SecretsDirectory,
        federated_files,  # meshcore.federation.FederatedBundleFiles (load/save)
        clock: Callable[[], datetime],
        stopping: threading.Event,
        keepalive: Callable[[], None] = lambda: None,
        status: Callable[[str], object] = lambda text: None,
        issued: Callable[[str, str], None] = lambda service, reason: None,
        client_factory: ClientFactory = AgentClient,
        wake: Callable[[], None] = lambda: None,
        replicas: ReplicaSet | None = None,
    ):
        """``wake()`` cuts the loop's sleep short (the watcher thread calls it when something changed).
        ``replicas``: the control plane replicas and their health (default: from the settings); every call
        goes through :class:`~meshcore.agent.client.FailoverClient` over them, ``client_factory`` makes
        the client of one replica."""
        self._config = config
        if replicas is None:
            replicas = ReplicaSet(node=config().node, urls=config().control_plane_urls,
                                  consul_service=config().control_plane_service)
        self.replicas = replicas
        self.store = store
        self.secrets = secrets
        self._federated_files = federated_files
        self._clock = clock
        self._stopping = stopping
        self._keepalive = keepalive
        self._status = status
        self._issued = issued
        self._client_factory = client_factory
        self._wake = wake
        self.meta = AgentMeta()
        self.node: Credential | None = None
        self.bundle: str | None = None
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
        # Services registered (or about to be) that the control plane does not list yet: their SVID
        # files hold a pending certificate, and polls come every EXPECT_POLL until they are listed.
        self._lock = threading.Lock()  # prepare_services runs in the Consul worker thread
        self._pending: set[str] = set()
        self._expected: dict[str, datetime] = {}  # service -> give up expecting it at
        self._prepared = False
        # The watcher (see the module docstring): its thread, whether its blocking queries work, the
        # newest answer it got that the loop has not applied yet, and the index the loop last applied.
        self._watcher: threading.Thread | None = None
        self.watching = False
        self._watch_unsupported = False
        self._watched: NodeServices | None = None
        self._index = ""
        self._alarmed: dict[str, tuple[str, str]] = {}  # what -> (serial, state) last logged at ERROR

    @property
    def config(self) -> AgentConfig:
        return self._config()

    # ---------------------------------------------------------------- start

    def prepare(self) -> None:
        """Create (or tighten) the state and secrets directories, once, before anything writes there
        (it also removes temporary files a crash left: never while another thread may write)."""
        if self._prepared:
            return
        self.store.prepare()
        self.secrets.prepare()
        self._prepared = True

    def start(self) -> None:
        """Load what a previous run left; join when there is no valid node certificate."""
        self.prepare()
        try:
            self.meta = self.store.load_meta()
            self.node = self.store.load_node(random_jitter())
        except AgentError as exc:
            raise OperatorActionRequired(str(exc)) from exc
        self.bundle = self.store.load_bundle()
        self.federated = self._federated_files.load()
        self._load_existing_svids()
        now = self._clock()
        if self.node is not None and self.node.summary.expired(now):
            refused = self._recover_with_retries()
            if refused is not None and not self._stopping.is_set():
                token = self._join_token()
                if token is None:
                    raise OperatorActionRequired(self._no_token_message(now, refused))
                self._join_with_retries(token)
        elif self.node is None:
            token = self._join_token()
            if token is None:
                raise OperatorActionRequired(self._no_token_message(now))
            self._join_with_retries(token)
        else:
            log.info("node identity loaded node=%s spiffe_id=%s not_after=%s; no join needed",
                     self.config.node, self.node.summary.spiffe_id, rfc3339(self.node.summary.not_after))
        self._write_node_secrets()

    @property
    def polled(self) -> bool:
        """True once the control plane answered a poll in this run."""
        return self.next_poll is not None

    def bootstrap_inputs(self) -> tuple[str, str] | None:
        """(trust domain, xDS address) once the node can run Envoy (joined, bundle held), else None."""
        td, xds = self.meta.trust_domain, self.meta.xds_address
        if not (td and xds and self.node and self.bundle):
            return None
        return td, xds

    def xds_addresses(self) -> list[str]:
        """Every known replica's xDS ``host:port`` (for Envoy's ADS cluster), else the last one answered."""
        addresses = self.replicas.xds_addresses()
        return addresses or ([self.meta.xds_address] if self.meta.xds_address else [])

    def missing_svids(self) -> set[str]:
        """Listed services without an SVID yet (and not refused): what Envoy's first start waits for."""
        return {name for name in self.desired if name not in self.svids and name not in self.svid_errors}

    # ---------------------------------------------------------------- join

    def _client(self, authenticated: bool = True) -> FailoverClient:
        client = FailoverClient(
            self.replicas,
            self.config.ca_file,
            client_factory=self._client_factory,
            cert_file=self.store.cert_path if authenticated else None,
            key_file=self.store.key_path if authenticated else None,
            extra_ca_files=(self.store.bundle_path,),
            bundle_sha256=bundle_sha256(self.bundle) if authenticated else "",
        )
        client.federated_digest = federated_digest(self.federated) if authenticated else ""
        return client

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

    def _no_token_message(self, now: datetime, refused: str = "") -> str:
        node = self.config.node
        if self.node is None:
            why = f"node {node!r} has not joined the mesh yet (no certificate in {self.config.state_dir})"
        else:
            why = f"the node certificate of {node!r} expired at {rfc3339(self.node.summary.not_after)}"
            if refused:
                why += f", the control plane refused to recover it ({refused})"
        return (f"{why} and no join token was given. Create one on the control plane with "
                f"`meshctl token create --node {node}`, pass it with --join-token-file FILE "
                f"(or --join-token), and start the agent again")

    def _interruptible_sleep(self, seconds: float) -> None:
        deadline = self._monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return
            self._keepalive()
            self._stopping.wait(min(remaining, 1.0))

    @staticmethod
    def _monotonic() -> float:
        import time

        return time.monotonic()

    def _retrying(self, what: str) -> tenacity.Retrying:
        """Retries while the control plane is unreachable (jittered backoff), until the agent stops."""
        return tenacity.Retrying(
            retry=tenacity.retry_if_exception(_retryable),
            wait=tenacity.wait_exponential_jitter(max=MAX_RETRY_DELAY, jitter=1),
            stop=lambda state: self._stopping.is_set(),
            sleep=self._interruptible_sleep,
            before_sleep=lambda state: log.warning(
                "%s: control plane not reachable, retrying in %.1fs attempt=%d: %s", what,
                state.upcoming_sleep, state.attempt_number, state.outcome.exception() if state.outcome else "",
                extra={"node": self.config.node}),
            reraise=True,
        )

    def _join_with_retries(self, token: str) -> None:
        retrying = self._retrying("join")
        self._status(f"joining the mesh at {self.replicas.current or self.config.control_plane_service}")
        try:
            retrying(self._join, token)
        except AgentRequestError as exc:
            if self._stopping.is_set():
                return
            raise OperatorActionRequired(
                f"the control plane refused to join node {self.config.node!r}: {exc.reason}. Create a new token "
                f"with `meshctl token create --node {self.config.node}` and start the agent again with it"
            ) from exc
        except ControlPlaneUnavailable:
            if self._stopping.is_set():
                return
            raise

    def _recover_with_retries(self) -> str | None:
        """Recover the expired node certificate, retrying while the control plane is unreachable.
        Returns None when recovered (or stopping), else the control plane's reason for refusing."""
        retrying = self._retrying("node certificate expired; recovery")
        self._status(f"node certificate expired; recovering it at {self.replicas.current}")
        try:
            retrying(self._recover)
        except AgentRequestError as exc:
            return exc.reason
        except ControlPlaneUnavailable:
            if self._stopping.is_set():
                return None
            raise
        return None

    def _recover(self) -> None:
        """Prove possession of the expired node certificate's key and install the new certificate."""
        assert self.node is not None
        try:
            old_key = load_pem_private_key(self.node.key_pem.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise AgentError(f"cannot read the node key {self.store.key_path}: {exc}") from exc
        key = new_private_key(self.config.key_type)
        key_pem = key_to_pem(key)
        td = self.meta.trust_domain or self._expected_trust_domain()
        spiffe_id = naming.node_spiffe_id(td, self.config.node)
        csr = make_csr(key, spiffe_id)
        timestamp = rfc3339(self._clock())
        proof = sign_recovery(old_key, recovery_message(td, self.config.node, timestamp, csr))
        old = self.node.summary
        with closing(self._client(authenticated=False)) as client:
            issued = client.recover(RecoverRequest(node=self.config.node, csr=csr, timestamp=timestamp,
                                                   signature=proof))
        if issued.spiffe_id != spiffe_id:
            raise AgentError(f"recover: the control plane issued {issued.spiffe_id}, expected {spiffe_id}")
        self.bundle = issued.bundle
        self.store.save_bundle(issued.bundle)
        self._install_node(issued, key_pem)
        self.last_contact = self._clock()
        log.warning("node certificate recovered without a join token node=%s old_serial=%s expired_at=%s "
                    "serial=%s not_after=%s", self.config.node, old.serial, rfc3339(old.not_after),
                    self.node.summary.serial, rfc3339(self.node.summary.not_after), extra={"node": self.config.node})

    def _join(self, token: str) -> None:
        key = new_private_key(self.config.key_type)
        key_pem = key_to_pem(key)
        expected = naming.node_spiffe_id(self._expected_trust_domain(), self.config.node)
        with closing(self._client(authenticated=False)) as client:
            issued = client.join(self.config.node, token, make_csr(key, expected))
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
        self.last_contact = self._clock()
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
        self.node = Credential.build(issued.chain, key_pem, random_jitter(), issued_at=self._clock())
        self._write_node_secrets()

    def _write_node_secrets(self) -> None:
        if self.node is not None:
            self.secrets.write(tls_certificate_secret(naming.node_secret(), self.node.chain_pem, self.node.key_pem))
        if self.bundle and self.meta.trust_domain:
            from meshcore.federation import trust_validation_secret  # per-domain roots when federated

            self.secrets.write(trust_validation_secret(naming.trust_bundle_secret(self.meta.trust_domain),
                                                       self.meta.trust_domain, self.bundle, self.federated))

    # ---------------------------------------------------------------- the loop's entry points

    def reset_schedule(self) -> None:
        """Poll at once (after a configuration reload)."""
        self.next_poll = None
        self.retry_at = None

    def deadlines(self) -> list[datetime]:
        """When this reconciler wants to run next (the loop sleeps until the earliest)."""
        if self.retry_at is not None:
            return [self.retry_at]
        deadlines = [self.next_poll or datetime.min.replace(tzinfo=timezone.utc)]
        if self.node is not None:
            deadlines.append(self.node.renew_at)
        deadlines.extend(self.svid_due.values())
        return deadlines

    def due(self, now: datetime) -> bool:
        return any(deadline <= now for deadline in self.deadlines())

    def reconcile(self, now: datetime) -> None:
        """One round when something is due: renew/join, poll, issue due SVIDs; failures back off.
        Certificates Envoy serves are checked on every call (an expiry is logged when it happens)."""
        if not self.due(now):
            self._check_certificates(now)
            return
        try:
            self._ensure_node_identity(now)
            if self.next_poll is None or now >= self.next_poll:
                self._poll(now)
            self._issue_due_svids(now)
        except (ControlPlaneUnavailable, AgentError) as exc:
            delay = self.backoff.failed()
            self.retry_at = now + _seconds(delay)
            self.last_error = str(exc)
            alarms = self._check_certificates(now)
            expired = [a for a in alarms if "expired" in a]
            if expired:
                log.error("control plane sync failed and Envoy serves EXPIRED certificates (%s): connections using "
                          "them fail; retrying in %.1fs failures=%d: %s", "; ".join(expired), delay,
                          self.backoff.failures, exc, extra={"node": self.config.node, "failures": self.backoff.failures})
            else:
                log.warning("control plane sync failed, envoy keeps its current config; retrying in %.1fs "
                            "failures=%d: %s", delay, self.backoff.failures, exc,
                            extra={"node": self.config.node, "failures": self.backoff.failures})
            self._status(f"control plane sync failing ({self.backoff.failures} failures): {exc}")
            return
        if self.backoff.failures:
            log.info("control plane reachable again after %d failed attempts", self.backoff.failures)
        self.backoff.succeeded()
        self.retry_at = None
        self.last_error = None
        self._check_certificates(now)

    # ---------------------------------------------------------------- alarms on served certificates

    def certificate_alarms(self, now: datetime) -> list[str]:
        """One line per certificate Envoy serves that has expired or has less than :data:`ALARM_FRACTION`
        of its lifetime left (it should have renewed at half life), for the status and the logs."""
        out = []
        for what, cred in self._served():
            state = _alarm_state(cred, now)
            if state == "expired":
                out.append(f"{what} certificate serial={cred.summary.serial} expired at "
                           f"{rfc3339(cred.summary.not_after)}")
            elif state == "expiring":
                out.append(f"{what} certificate serial={cred.summary.serial} expires at "
                           f"{rfc3339(cred.summary.not_after)} (less than {ALARM_FRACTION:.0%} of its life left)")
        return out

    def _served(self) -> list[tuple[str, Credential]]:
        held = [("node", self.node)] if self.node is not None else []
        held += [(f"service={name}", cred) for name, cred in sorted(self.svids.items())]
        return [(what, cred) for what, cred in held if cred is not None]

    def _check_certificates(self, now: datetime) -> list[str]:
        """Log at ERROR each certificate that became expired or expiring (once per serial and state)."""
        alarms = self.certificate_alarms(now)
        seen = set()
        for what, cred in self._served():
            seen.add(what)
            state = _alarm_state(cred, now)
            before = self._alarmed.get(what)
            if state == "ok":
                if before is not None and before[0] != cred.summary.serial:
                    log.info("%s certificate renewed serial=%s: alarm cleared", what, cred.summary.serial,
                             extra={"node": self.config.node})
                self._alarmed.pop(what, None)
                continue
            if before == (cred.summary.serial, state):
                continue
            self._alarmed[what] = (cred.summary.serial, state)
            left = cred.summary.not_after - now
            log.error("Envoy serves the %s certificate serial=%s that %s at %s; it was not renewed (control plane "
                      "unreachable or refusing: see the previous lines, `meshctl status`, status.json)",
                      what, cred.summary.serial, "EXPIRED" if state == "expired" else f"expires in {left}",
                      rfc3339(cred.summary.not_after), extra={"node": self.config.node})
        for what in set(self._alarmed) - seen:
            del self._alarmed[what]
        return alarms

    # ---------------------------------------------------------------- new services (the NACK race)

    def prepare_services(self, names: Iterable[str]) -> None:
        """Before ``names`` are registered: make sure each has an SVID file Envoy can load.

        A service without one gets a pending certificate (see the module docstring); thread-safe.
        """
        with self._lock:
            for name in sorted(set(names)):
                secret = naming.svid_secret(name)
                if name in self.svids or self.secrets.exists(secret):
                    continue
                chain, key = pending_certificate(name)
                self._pending.add(name)
                self.secrets.write(tls_certificate_secret(secret, chain, key))
                log.info("pending certificate written until the SVID is issued service=%s file=%s", name,
                         self.secrets.path_of(secret), extra={"service": name})

    def expect_services(self, names: Iterable[str], now: datetime | None = None) -> None:
        """``names`` were just registered: poll quickly until the control plane lists them (thread-safe)."""
        now = now or self._clock()
        with self._lock:
            for name in names:
                if name not in self.desired:
                    self._expected[name] = now + _seconds(EXPECT_FOR)
        if self.retry_at is None:
            self.next_poll = now  # the loop is woken by the caller

    def _kept_pending(self) -> set[str]:
        with self._lock:
            return set(self._pending)

    # ---------------------------------------------------------------- control plane sync

    def _ensure_node_identity(self, now: datetime) -> None:
        assert self.node is not None
        if self.node.summary.expired(now):
            try:
                self._recover()
                return
            except AgentRequestError as exc:
                if exc.retryable:
                    raise
                refused = exc.reason
            token = self._join_token()
            if token is None:
                raise AgentError(self._no_token_message(now, refused).replace(
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
        with closing(self._client()) as client:
            issued = client.renew_node(make_csr(key, self.node.summary.spiffe_id))
        if issued.spiffe_id != self.node.summary.spiffe_id:
            raise AgentError(f"renew-node: got {issued.spiffe_id}, expected {self.node.summary.spiffe_id}")
        old = self.node.summary.serial
        self._install_node(issued, key_pem)
        self.last_contact = self._clock()
        log.info("node certificate renewed node=%s old_serial=%s serial=%s not_after=%s renew_at=%s",
                 self.config.node, old, self.node.summary.serial, rfc3339(self.node.summary.not_after),
                 rfc3339(self.node.renew_at))

    def _poll(self, now: datetime) -> None:
        with self._lock:
            listing, self._watched = self._watched, None  # the watcher's newest answer, if any
        with closing(self._client()) as client:  # both calls on one kept-alive connection
            if listing is None:
                listing = client.services()
            if listing.node != self.config.node:
                raise AgentError(f"the control plane answered for node {listing.node!r}, this is {self.config.node!r}")
            # The index covers the bundle and the federated bundles: unchanged, there is nothing to fetch.
            bundle = client.bundle() if not listing.index or listing.index != self._index or not self.bundle else None
        self.last_contact = self._clock()
        self._keepalive()
        meta_changed = False
        if bundle is not None and bundle.trust_domain != self.meta.trust_domain:
            meta_changed = True
            log.warning("trust domain changed old=%s new=%s", self.meta.trust_domain, bundle.trust_domain)
            self.meta.trust_domain = bundle.trust_domain
        if listing.xds_address and listing.xds_address != self.meta.xds_address:
            log.info("xds address changed old=%s new=%s", self.meta.xds_address, listing.xds_address)
            self.meta.xds_address = listing.xds_address
            meta_changed = True
        if meta_changed:
            self.store.save_meta(self.meta)
        if bundle is not None:
            self._apply_bundle(bundle)
        self._follow_issuer(listing.signer_key_id, now)
        self._reconcile_services(listing.services, now)
        self._index = listing.index
        if listing.index:
            self._start_watcher()
        self.next_poll = now + _seconds(self._poll_interval(now))

    def _apply_bundle(self, bundle: TrustBundle) -> None:
        if self.store.save_bundle(bundle.bundle):
            log.info("trust bundle updated trust_domain=%s", bundle.trust_domain)
        self.bundle = bundle.bundle
        if self._federated_files.save(bundle.federated):
            log.info("federated trust bundles updated trust_domains=%s", ",".join(td for td, _ in bundle.federated))
        self.federated = bundle.federated
        self._write_node_secrets()

    # ---------------------------------------------------------------- the watcher (blocking queries)

    def _start_watcher(self) -> None:
        if self._watch_unsupported or (self._watcher is not None and self._watcher.is_alive()):
            return
        self.watching = True  # until its calls show otherwise (_watch_lost)
        self._watcher = threading.Thread(target=self._watch, name="control-plane-watch", daemon=True)
        self._watcher.start()

    def _watch_lost(self) -> None:
        """The watcher cannot follow the control plane now: the loop polls at the refresh pace again."""
        self.watching = False
        soon = self._clock() + _seconds(self.config.refresh_interval)
        if self.next_poll is not None and self.next_poll > soon:
            self.next_poll = soon

    def _watch(self) -> None:
        """The watcher thread: one blocking query at a time; a new index wakes the loop to apply it."""
        backoff = RetryBackoff()
        client: FailoverClient | None = None
        index = self._index
        try:
            while not self._stopping.is_set():
                if client is None:
                    client = self._client()
                client.bundle_sha256 = bundle_sha256(self.bundle) if self.bundle else ""
                client.federated_digest = federated_digest(self.federated)
                index = self._index if self._index else index
                started = self._monotonic()
                try:
                    listing = client.services(index=index, wait=WATCH_WAIT)
                except (ControlPlaneUnavailable, AgentError) as exc:
                    self._watch_lost()
                    client.close()
                    client = None
                    delay = backoff.failed()
                    log.debug("blocking query failed, the loop polls; watching again in %.1fs: %s", delay, exc)
                    self._stopping.wait(delay)
                    continue
                backoff.succeeded()
                if not listing.index:
                    log.info("the control plane answers no blocking queries; polling it every %gs",
                             self.config.refresh_interval, extra={"node": self.config.node})
                    self._watch_unsupported = True
                    self._watch_lost()
                    return
                if listing.index != index:
                    index = listing.index
                    with self._lock:
                        self._watched = listing
                    self.watching = True
                    self.next_poll = self._clock()
                    self._wake()
                elif self._monotonic() - started < WATCH_WAIT / 2:
                    # Answered at once although nothing changed: it holds no more calls now. Poll at the
                    # refresh pace for a while (the loop does), then try again.
                    self._watch_lost()
                    self._stopping.wait(self.config.refresh_interval)
                else:
                    self.watching = True
        finally:
            if client is not None:
                client.close()

    def _poll_interval(self, now: datetime) -> float:
        """The refresh interval, or EXPECT_POLL while a just-registered service is not listed yet."""
        with self._lock:
            for name, until in list(self._expected.items()):
                if name in self.desired or until <= now:
                    if name not in self.desired:
                        log.warning("the control plane did not list service %s within %.0fs of its registration; "
                                    "polling every %gs again", name, EXPECT_FOR, self.config.refresh_interval,
                                    extra={"service": name})
                    del self._expected[name]
            expecting = bool(self._expected)
        if expecting:
            return min(EXPECT_POLL, self.config.refresh_interval)
        return max(WATCH_FALLBACK, self.config.refresh_interval) if self.watching else self.config.refresh_interval

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
        keep |= {naming.svid_secret(name) for name in set(self.svids) | set(desired) | self._kept_pending()}
        for removed in self.secrets.remove_except(keep):
            log.info("removed secret file no longer needed file=%s", removed)

    def forget_pending(self, names: Iterable[str]) -> None:
        """``names`` are no longer registered here: their pending files may go at the next poll."""
        with self._lock:
            self._pending.difference_update(names)
            for name in names:
                self._expected.pop(name, None)

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
            self._keepalive()

    def _issue_svid(self, svc: NodeService) -> None:
        key = new_private_key(self.config.key_type)
        key_pem = key_to_pem(key)
        with closing(self._client()) as client:
            issued = client.sign(make_csr(key, svc.spiffe_id))
        if issued.spiffe_id != svc.spiffe_id or not key_matches_cert(key_pem, issued.chain):
            raise AgentError(f"sign: the control plane returned a certificate for {issued.spiffe_id}, "
                             f"not for {svc.spiffe_id} with the key sent")
        credential = Credential.build(issued.chain, key_pem, random_jitter(), issued_at=self._clock())
        with self._lock:
            self.secrets.write(tls_certificate_secret(naming.svid_secret(svc.name), issued.chain, key_pem))
            self._pending.discard(svc.name)
        old = self.svids.get(svc.name)
        self.svids[svc.name] = credential
        self.svid_due[svc.name] = credential.renew_at
        self.svid_errors.pop(svc.name, None)
        self.last_contact = self._clock()
        self._issued(svc.name, "renewal" if old else "issue")
        log.info("%s service=%s spiffe_id=%s serial=%s not_after=%s renew_at=%s",
                 "SVID renewed" if old else "SVID issued", svc.name, svc.spiffe_id, credential.summary.serial,
                 rfc3339(credential.summary.not_after), rfc3339(credential.renew_at),
                 extra={"service": svc.name})

    def _load_existing_svids(self) -> None:
        """Adopt SVID files a previous run wrote, so a restart does not re-sign what is still good
        (pending certificates carry no SPIFFE ID: they are never adopted)."""
        prefix = naming.svid_secret("")
        now = self._clock()
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
            if (not credential.summary.spiffe_id or credential.summary.expired(now)
                    or not key_matches_cert(key_pem, chain)):
                continue
            self.svids[service] = credential
            log.info("adopted SVID from a previous run service=%s serial=%s not_after=%s", service,
                     credential.summary.serial, rfc3339(credential.summary.not_after))

    # ---------------------------------------------------------------- reporting

    def service_status(self) -> tuple[ServiceStatus, ...]:
        return tuple(
            ServiceStatus(
                name=name, ids=self.instance_ids.get(name, ()),
                spiffe_id=self.desired[name].spiffe_id if name in self.desired else self.svids[name].summary.spiffe_id,
                cert=self.svids[name].summary if name in self.svids else None,
                renew_at=self.svids[name].renew_at if name in self.svids else None,
                error=self.svid_errors.get(name),
            )
            for name in sorted(set(self.desired) | set(self.svids))
        )

    def svid_expiry(self) -> dict[str, tuple[str, float]]:
        """service -> (SPIFFE ID, not_after as Unix time), for the metrics."""
        return {n: (c.summary.spiffe_id, c.summary.not_after.timestamp()) for n, c in list(self.svids.items())}
