"""``meshcore-control-plane``: reads the catalog, runs the CA, serves every Envoy over ADS.

Three listeners: xDS (gRPC, mTLS, agents' Envoys), the agent API (HTTPS, join and SVIDs),
and the operator API (HTTP, for ``meshctl``; loopback by default). Once all three serve, it
writes ``<state-dir>/controlplane.json`` with their addresses and tells systemd it is ready.

The CA is generated (``--key-type``) or the operator's own intermediate (``--ca-cert``,
``--ca-key``, ``--ca-chain``: read once, then kept sealed). A root rotation (``meshctl ca rotate``)
moves the serving certificate and the client-verification roots of both TLS listeners with it.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import ssl
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from functools import partial
from datetime import timedelta
from pathlib import Path
from collections.abc import Callable
from typing import Any

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .. import naming
from ..catalog._consul_hold import DEFAULT_HOLD_S, DEFAULT_SHRINK_THRESHOLD
from .._files import atomic_write
from ..ca import KEY_TYPES, CertificateAuthority, load_kek, load_upstream_ca, make_csr, new_private_key, open_join_tokens
from ..state import open_state_backend
from ..ca.authority import DEFAULT_NODE_TTL, DEFAULT_RECOVERY_GRACE
from ..durations import parse_duration
from ..errors import CAError, ConfigError, MeshError
from ..logs import setup_logging
from ..observe.telemetry import access_log_path, telemetry_settings
from ..resources.consul_entries import EntrySettings, add_arguments as add_entry_arguments, entry_settings, with_config_entries, with_protocol_defaults
from ..api.operator import (ControlPlaneStatus, GatewayStatus, ProxyStatus, RejectedResource, ServiceStatus,
                            SourceStatus, StatusResponse, ThreadStatus)
from ..authz.patterns import DEFAULT_PATH_NORMALIZATION, PATH_NORMALIZATIONS
from ..snapshot import MeshSettings, ProxyInfo, TelemetrySettings
from ..system_ca import METADATA_KEY
from ..xds.cache import SnapshotCache
from ..observe.collector import (
    ControlPlaneSignals,
    MeshCollector,
    ScrapeTarget,
    Workload,
    fallback_urls,
    ca_signals,
    catalog_address,
    scrape_url,
    workload_of,
)
from ..xds.server import (
    DEFAULT_FIRST_REQUEST_TIMEOUT_S,
    DEFAULT_MAX_STREAMS_PER_IDENTITY,
    DEFAULT_MAX_STREAM_AGE_S,
    AdsServer,
    AdsServicer,
    mtls_node_authorizer,
    serve_ads,
)
from ._contexts import CaControl, MeshView
from ._http import JsonServer
from .oidc_discovery import OidcDiscovery, with_discovered
from .agent_api import DEFAULT_MAX_WAITING, AgentApi
from .alerting import add_routes as add_alert_routes
from .alerting import for_control_plane as alerting_for
from .alerting import webhook_urls as _webhook_urls
from ._bundle_holders import BundleHolders, live_replicas
from .canary import add_routes as add_canary_routes
from .canary import for_control_plane as canaries_for
from .dashboard_api import add_routes as add_dashboard_routes
from .dashboard_api import HISTORY_S as COLLECTOR_HISTORY_S
from ._supervise import Supervisor, describe_failure, install_thread_excepthook
from ._supervise import doing as _doing
from .engine import MeshEngine
from .leadership import (DEFAULT_LOCK_DELAY_S, DEFAULT_LOCK_TTL_S, LEADER_KEY, AlwaysLeader, ConsulLeadership, LeaderWork,
                         check_lock_settings, default_replica_id)
from .replicas import DEFAULT_CHECK_TTL_S, ReplicaRegistry, healthz_probe
from .federation_api import add_federation_routes, open_federation
from .metrics import ControlPlaneMetrics
from .node_revocation import add_node_routes
from .operator_api import OperatorApi, OperatorContext
from .operator_certs import CERTS_FILE as OPERATOR_CERTS_FILE
from .operator_certs import OperatorCertStore, add_operator_cert_routes
from .store_routes import add_store_routes
from .operators import TOKENS_FILE as OPERATOR_TOKENS_FILE
from .operators import OperatorTokenStore, ensure_bootstrap_token
from .proxy_versions import ProxyVersionBook
from .token_routes import add_token_routes

log = logging.getLogger("meshcore.controlplane")

STATE_FILE = "controlplane.json"
CA_WATCH_S = 5.0  # seconds between the CA watcher's looks when nothing wakes it
MIN_RENEW_S = 1.0
"""The serving certificate is renewed at half its remaining life, never sooner than this after an issuance."""
RENEW_RETRY_FIRST_S = 2.0
RENEW_RETRY_MAX_S = 60.0
"""A failed renewal (a full disk, ...) is retried after this backoff, doubling from :data:`RENEW_RETRY_FIRST_S`."""


@dataclass
class Settings:
    state_dir: Path
    trust_domain: str = naming.DEFAULT_TRUST_DOMAIN
    catalog: str = "files:/etc/consul.d"
    store: str = ""
    xds_bind: str = "127.0.0.1:15012"
    api_bind: str = "127.0.0.1:15443"
    http_bind: str = "127.0.0.1:15000"
    advertise: str = ""
    kek_file: str | None = None
    leaf_ttl: timedelta = timedelta(hours=24)
    node_cert_ttl: timedelta = DEFAULT_NODE_TTL  # node certificates: long-lived beside the short leaves
    node_recovery_grace: timedelta = DEFAULT_RECOVERY_GRACE  # an expired node certificate's key recovers it
    key_type: str = "ec-p256"
    ca_cert: str | None = None
    ca_key: str | None = None
    ca_chain: str | None = None
    collect_interval: float = 5.0  # seconds between the metrics collector's scrapes of every proxy
    collect_timeout: float | None = None  # a proxy's scrape budget per round; None: most of the interval
    alert_webhooks: tuple[str, ...] = ()  # Alertmanager-compatible webhook URLs (see alerting.py)
    operator_tls_bind: str = ""  # operator API over TLS (client certificates); "" = off
    telemetry: TelemetrySettings = field(default_factory=TelemetrySettings)  # access logs, tracing
    path_normalization: str = DEFAULT_PATH_NORMALIZATION  # Istio's pathNormalization (docs/security.md)
    allow_path_parameters: bool = False  # paths with ';' or %3B: 400 unless allowed
    ext_authz_providers: tuple = ()  # CUSTOM AuthorizationPolicies' authorizers (--mesh-config, meshcore.authz.providers)
    gateway_trusted_proxies: int = 0  # --mesh-config defaultConfig.gatewayTopology.numTrustedProxies
    jwks: Any = None  # JWKS trust and OIDC discovery (--mesh-config jwks:, request_authentication.trust.JwksSettings)
    full_rebuild: bool = False  # engine baseline: rebuild the snapshot and every proxy on each change
    # ADS server limits (see meshcore.xds.server): streams one node identity may hold open, streams in all
    # (0: no limit but the machine's), and how long a new stream may take to send its first request.
    xds_max_streams_per_identity: int = DEFAULT_MAX_STREAMS_PER_IDENTITY
    xds_max_streams: int = 0
    xds_first_request_timeout: float = DEFAULT_FIRST_REQUEST_TIMEOUT_S
    max_stream_age: float = DEFAULT_MAX_STREAM_AGE_S  # ADS connections closed after this age (+-10%), 0 = never
    agent_max_waiting: int = DEFAULT_MAX_WAITING  # agents' blocking /v1/agent/services calls held at once
    # Last known good through Consul faults (meshcore.catalog._consul_hold): how long missing instances are
    # held after an index reset or a drastic shrink, and the fraction that may vanish in one update.
    catalog_hold: float = DEFAULT_HOLD_S
    catalog_shrink_threshold: float = DEFAULT_SHRINK_THRESHOLD
    consul_entries: EntrySettings = field(default_factory=EntrySettings)  # Consul config entries (docs/consul.md)
    # Several replicas (--store consul): identity, the leader lock (leadership.py), the registration's check.
    replica_id: str = ""  # "": <host name>-<operator API port>
    leader_lock_ttl: float = DEFAULT_LOCK_TTL_S
    leader_lock_delay: float = DEFAULT_LOCK_DELAY_S
    leader_key: str = "meshcore/" + LEADER_KEY
    replica_check_ttl: float = DEFAULT_CHECK_TTL_S


CATALOG_HOLD_FILE = "catalog-hold.json"  # the Consul catalog hold's memory across restarts (catalog/_consul_hold.py)


def _split_source(spec: str, what: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in ("files", "consul", "dir"):
        raise ConfigError(f"--{what} {spec!r}: use files:DIR or consul (catalog), dir:DIR or consul (store)")
    return kind, arg


def open_catalog(spec: str, hold_s: float = DEFAULT_HOLD_S, shrink_threshold: float = DEFAULT_SHRINK_THRESHOLD,
                 state_dir: Path | None = None):
    kind, arg = _split_source(spec, "catalog")
    if kind == "consul":
        from ..catalog._consul_datacenters import DatacenterTargets
        from ..catalog.consul import ConsulCatalogSource, ConsulSettings

        return ConsulCatalogSource(ConsulSettings.from_env(), hold_s=hold_s, shrink_threshold=shrink_threshold,
                                   hold_memory=state_dir / CATALOG_HOLD_FILE if state_dir else None,
                                   datacenters=DatacenterTargets.parse(arg) if arg else None)  # docs/multi-dc.md
    if kind != "files" or not arg:
        raise ConfigError(f"--catalog {spec!r}: use files:DIR (Consul service-definition files) or consul")
    from ..catalog.files import FileCatalogSource

    return FileCatalogSource(Path(arg))


def open_store(spec: str, state_dir: Path, kek: bytes | None = None):
    kind, arg = _split_source(spec or f"dir:{state_dir / 'resources'}", "store")
    if kind == "consul":
        from ..catalog.consul import ConsulSettings
        from ..resources._last_applied import FILE_NAME, LastApplied
        from ..resources.consul_store import ConsulKVStore

        # with the KEK: a sealed copy of the last generation, so resources Consul loses are held (store owns this)
        return ConsulKVStore(ConsulSettings.from_env(), last_applied=LastApplied(state_dir / FILE_NAME, kek) if kek else None)
    if kind != "dir" or not arg:
        raise ConfigError(f"--store {spec!r}: use dir:DIR or consul")
    from ..resources.dir_store import DirectoryStore

    return DirectoryStore(Path(arg))


def _rfc3339(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def _host_of(bind: str) -> str:
    return bind.rpartition(":")[0].strip("[]")


TOKEN_CLEANUP_S = 3600.0  # how often the leader removes join tokens a week past their expiry from Consul KV


def _every(period_s: float, stop: threading.Event, work: Callable[[], int], what: str) -> None:
    """``work()`` now and every ``period_s`` until ``stop``; a failure is logged and retried next period."""
    while not stop.is_set():
        try:
            removed = work()
            if removed:
                log.info("%s removed %d entries", what, removed)
        except Exception as exc:  # noqa: BLE001 - singleton housekeeping must not end; Consul may be away
            log.warning("%s failed (retried in %.0fs): %s", what, period_s, describe_failure(exc))
        stop.wait(period_s)


class ControlPlane:
    """All the control plane's parts, wired; ``start()`` serves, ``stop()`` stops."""

    def __init__(self, settings: Settings, kek: bytes, *, catalog_source=None, store=None):
        self.settings = settings
        state = settings.state_dir
        state.mkdir(parents=True, exist_ok=True)
        os.chmod(state, 0o700)
        self.metrics = ControlPlaneMetrics()
        upstream = None
        if settings.ca_cert or settings.ca_key or settings.ca_chain:
            if not (settings.ca_cert and settings.ca_key):
                raise ConfigError("--ca-cert and --ca-key go together (and --ca-chain needs them): give the "
                                  "intermediate CA certificate meshcore signs with and its private key")
            upstream = load_upstream_ca(settings.ca_cert, settings.ca_key, settings.ca_chain,
                                        trust_domain=settings.trust_domain)
        self.state = open_state_backend(settings.store, state)  # Consul KV with --store consul: shared by replicas
        self.ca = CertificateAuthority.open(state / "ca", trust_domain=settings.trust_domain, kek=kek,
                                            leaf_ttl=settings.leaf_ttl, key_type=settings.key_type,
                                            upstream=upstream, node_ttl=settings.node_cert_ttl,
                                            recovery_grace=settings.node_recovery_grace, backend=self.state)
        self.tokens = open_join_tokens(self.state, kek)
        self.proxy_versions = ProxyVersionBook()  # what each proxy runs, from its ADS node
        # Operator API tokens (hashed, sealed); first start writes <state>/admin.token (0600).
        self.operators = OperatorTokenStore(state / OPERATOR_TOKENS_FILE, kek, backend=self.state)
        ensure_bootstrap_token(self.operators, state)
        self._owns_source = catalog_source is None
        self.source = catalog_source or open_catalog(settings.catalog, settings.catalog_hold,
                                                     settings.catalog_shrink_threshold, state)
        self.store = store or open_store(settings.store, state, kek)
        self.store = with_config_entries(self.store, settings.consul_entries, catalog_spec=settings.catalog,  # + config entries
                                         trust_domain=settings.trust_domain, catalog=lambda: self.engine.catalog())
        if self._owns_source:  # service protocols from service-defaults / proxy-defaults (docs/consul.md)
            self.source = with_protocol_defaults(self.source, self.store)
        self.cache = SnapshotCache()
        from ..observe.tracing import ControlPlaneTracing  # spans of its own work to the OTLP collector
        self.tracing = ControlPlaneTracing.start(settings.telemetry.tracing_otlp, trust_domain=settings.trust_domain)
        self.engine = MeshEngine(self.source, self.store, self.cache, trust_domain=settings.trust_domain,
                                 settings=MeshSettings(telemetry=settings.telemetry,
                                                       path_normalization=settings.path_normalization,
                                                       allow_path_parameters=settings.allow_path_parameters,
                                                       ext_authz_providers=settings.ext_authz_providers,
                                                       jwks=settings.jwks,
                                                       gateway_trusted_proxies=settings.gateway_trusted_proxies),
                                 tracing=self.tracing,
                                 on_snapshot=self._on_snapshot, metrics=self.metrics,
                                 incremental=not settings.full_rebuild, track_streams=True, collect_garbage=True)
        self.metrics.watch_ca(self.ca)
        self._servers: list = []
        self._grpc: AdsServer | None = None
        self._api_server: JsonServer | None = None
        self.agent_api: AgentApi | None = None
        self._serving_lock = threading.RLock()
        self._serving: tuple[str, str] = ("", "")
        self._applied_bundle = ""
        self._ca_wake = threading.Event()
        self.addresses: dict[str, str] = {}
        self._stopped = threading.Event()
        self._renew_at = 0.0
        self.serving_issuances = 0  # serving certificates issued by this process (renewals + rotations)
        self._serving_error = ""  # why the last renewal failed ("" once one succeeds)
        self.supervisor = Supervisor(self._stopped, on_restart=lambda t: self.metrics.thread_restarts.labels(thread=t).inc())
        self.oidc = OidcDiscovery(settings.jwks, lambda found: self.engine.update_settings(  # issuers' jwks_uri
            lambda current: with_discovered(current, found)), self._stopped, registry=self.metrics.registry)
        # The features get the narrow interfaces they use (_contexts.py), never this object.
        self.mesh = MeshView.of(self.engine, self.cache)  # the engine's and the cache's read side
        # stats -> Signals: the collector reads only its scrape targets (cheap, cached per catalog), not status
        self._targets_of: tuple[object, dict[str, tuple[tuple[str, str], ...]], dict[str, tuple[Workload, ...]]] = (
            None, {}, {})
        self._target_nodes: frozenset[str] = frozenset()
        interval = float(settings.collect_interval or 5.0)
        health = ControlPlaneSignals(catalog=self.source, store=self.store, rejected=lambda: self.engine.rejected,
                                     supervisors=(self.engine.supervisor, self.supervisor))  # loops, sources
        self.collector = MeshCollector(self.scrape_targets, interval=interval, timeout=settings.collect_timeout,
                                       history=max(COLLECTOR_HISTORY_S, interval),
                                       extra=lambda: {**ca_signals(self.ca, time.time(), self._target_nodes,
                                                                   self._expected_identities()), **health()})
        # Singleton work (rotation steps, canaries, alert notifications) runs on the leader only (leadership.py).
        self.replicas: ReplicaRegistry | None = None
        self.holders = BundleHolders(self.state, lambda: self.leadership.replica_id, live_replicas(
            lambda: self.replicas.replicas() if self.replicas is not None else ())) if self.state.shared else None
        self._token_cleanup: LeaderWork | None = None
        self._ha = _split_source(settings.store or "dir:", "store")[0] == "consul"
        self.leadership: AlwaysLeader | ConsulLeadership
        # <host name>-<operator API port>; a port picked at bind time (:0) is filled in by start()
        replica_id = settings.replica_id or default_replica_id(settings.http_bind.rsplit(":", 1)[-1])
        ledger = None  # what the leader notified: in memory with one replica, in Consul KV with several
        if self._ha:
            from ..catalog._consul_settings import ConsulSettings
            from .alerting import ConsulLedger

            self.leadership = ConsulLeadership(
                ConsulSettings.from_env(), settings.leader_key, replica_id,
                ttl=settings.leader_lock_ttl, lock_delay=settings.leader_lock_delay, registry=self.metrics.registry,
                service_check=lambda: self.replicas.registered_check() if self.replicas is not None else None)
            ledger = ConsulLedger(ConsulSettings.from_env(), settings.leader_key.rsplit("/", 1)[0] + "/alerts/notified",
                                  fence=self.leadership.fence)  # a deposed leader cannot overwrite the record
        else:
            self.leadership = AlwaysLeader(replica_id, registry=self.metrics.registry)
        self.leadership.subscribe(lambda leading: self._ca_wake.set())  # a new leader looks at the rotation now
        self.alerting = alerting_for(self.mesh, self.collector, self.metrics.registry,  # AlertRules -> webhooks
                                     webhooks=settings.alert_webhooks,
                                     external_url=lambda: self.addresses.get("http", ""), leadership=self.leadership,
                                     ledger=ledger)
        self.canaries = canaries_for(self.state, self.store, self.mesh,  # progressive delivery (meshctl canary)
                                     leadership=self.leadership)
        self.federation = open_federation(state, settings.trust_domain, self.engine, self.state)  # others' bundles
        self.operator_certs = OperatorCertStore(state / OPERATOR_CERTS_FILE, kek, backend=self.state)  # cert roles
        self._operator_tls: JsonServer | None = None

    def _expected_identities(self) -> set[tuple[str, str]] | None:
        """(SPIFFE ID, node) of every service instance in the catalog: whose expired SVID is an alarm."""
        catalog = self.engine.catalog()
        if catalog is None:
            return None
        td = self.ca.trust_domain
        return {(naming.workload_spiffe_id(td, i.namespace, i.service_account), i.node) for i in catalog.instances}

    # --- serving identity ------------------------------------------------------------------
    def _serving_identity(self) -> tuple[str, str, float]:
        """A key made here, in memory, and a certificate for it with the control plane's SPIFFE ID.

        Returns the key, the chain and the time (epoch seconds) at which to renew: half its life."""
        key = new_private_key()
        hosts = {_host_of(b) for b in (self.settings.xds_bind, self.settings.api_bind, self.settings.operator_tls_bind) if b}
        if self.settings.advertise:
            hosts.add(self.settings.advertise)
        ips, dns = [], ["localhost"]
        for h in sorted(hosts):
            try:
                ipaddress.ip_address(h)
                ips.append(h)
            except ValueError:
                if h:
                    dns.append(h)
        spiffe_id = naming.control_plane_spiffe_id(self.ca.trust_domain)
        issued_at = time.time()
        issued = self.ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id,
                                  dns_names=dns, ip_addresses=ips or ["127.0.0.1"])
        key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()).decode()
        self.serving_issuances += 1
        # Half of the life left from now, not from not_before: the CA backdates not_before for clock skew
        # (a minute), which made leaves shorter than two minutes due at once, re-issued in a loop.
        remaining = issued.not_after.timestamp() - issued_at
        return key_pem, issued.chain_pem, issued_at + max(remaining / 2, MIN_RENEW_S)

    def _https_context(self, key_pem: str, chain_pem: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl wants files: hand it the key encrypted with a throw-away passphrase, in a private temp dir.
        passphrase = os.urandom(24).hex().encode()
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        enc = load_pem_private_key(key_pem.encode(), None).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(passphrase))
        with tempfile.TemporaryDirectory(prefix="meshcore-tls-") as tmp:
            kp, cp = Path(tmp, "key.pem"), Path(tmp, "chain.pem")
            kp.write_bytes(enc)
            cp.write_text(chain_pem)
            ctx.load_cert_chain(str(cp), str(kp), password=passphrase)
        ctx.load_verify_locations(cadata=self.ca.bundle_pem())
        ctx.verify_mode = ssl.CERT_OPTIONAL
        return ctx

    def _apply_ca(self, reissue: bool) -> None:
        """Serve the CA's current state: a new serving certificate when ``reissue``, and the current
        trust bundle as client-verification roots (gRPC and HTTPS) and in ``<state>/ca/bundle.pem``.
        New connections get it; open ones keep theirs (no restart)."""
        with self._serving_lock:
            if reissue or not self._serving[0]:
                with _doing(f"issuing the serving certificate (CA state in {self.settings.state_dir / 'ca'})"):
                    key_pem, chain_pem, renew_at = self._serving_identity()
                self._serving = (key_pem, chain_pem)
                self._renew_at = renew_at
            key_pem, chain_pem = self._serving
            bundle = self.ca.bundle_pem()
            self._grpc_identity = (key_pem, chain_pem, bundle)
            with _doing("loading the serving certificate into the HTTPS listeners (a private temporary directory)"):
                if self._api_server is not None:
                    self._api_server.set_tls(self._https_context(key_pem, chain_pem))
                if self._operator_tls is not None:
                    self._operator_tls.set_tls(self._https_context(key_pem, chain_pem))
            if bundle != self._applied_bundle:
                with _doing(f"writing {self.settings.state_dir / 'ca' / 'bundle.pem'}"):
                    self._write_bundle_file(bundle)
                self._applied_bundle = bundle
        if self.agent_api is not None:
            self.agent_api.changed()  # agents waiting on /v1/agent/services see the new CA state now

    def _rotate_serving_identity(self) -> None:
        """Renew the serving certificate at half its life; new connections get the new one (no restart).

        Any failure (a full disk, an unreadable CA state file: not only meshcore's errors) is logged with
        what was being done and the file, and retried with backoff; the current certificate stays served."""
        failures = 0
        while not self._stopped.wait(max(0.5, min(60.0, self._renew_at - time.time()))):
            if time.time() < self._renew_at:
                continue
            try:
                self._apply_ca(reissue=True)
            except Exception as exc:  # noqa: BLE001 - this loop must outlive any failure
                failures += 1
                delay = min(RENEW_RETRY_FIRST_S * 2 ** (failures - 1), RENEW_RETRY_MAX_S)
                self._renew_at = time.time() + delay
                self._serving_error = describe_failure(exc)
                log.error("renewing the control plane's serving certificate failed, retrying in %.1fs (the current "
                          "one is served until then): %s", delay, self._serving_error)
                if not isinstance(exc, (MeshError, OSError)):
                    log.debug("serving certificate renewal failed", exc_info=True)
                continue
            failures = 0
            self._serving_error = ""
            log.info("control plane serving certificate renewed; next renewal in %.0fs", self._renew_at - time.time())

    # --- root rotation ---------------------------------------------------------------------
    def _bundle_view(self) -> tuple[str, list[str], dict[str, str]]:
        """This replica's view: the current bundle's hash, nodes with an Envoy connected here, agents' reports."""
        acks = self.agent_api.bundle_acks() if self.agent_api is not None else {}
        connected = [n for n in list(self.engine.proxies) if self.mesh.cache_status(n).get("connected_streams")]
        return self.ca.bundle_sha256(), connected, acks

    def nodes_without_bundle(self) -> list[str]:
        """Nodes with a connected proxy whose agent has not reported holding the current trust bundle (with
        several replicas: on any of them, see _bundle_holders.py)."""
        want, connected, acks = self._bundle_view()
        if self.holders is not None:
            return self.holders.missing(want, connected, acks)
        return sorted(n for n in connected if acks.get(n) != want)

    def _watch_ca(self) -> None:
        """Move a prepared rotation on once every connected node holds the two-root bundle, and keep
        the TLS roots in step with the bundle (also after changes made by another thread).

        Woken by a rotation step and, while a rotation is being prepared, by every agent reporting a
        bundle; otherwise it looks every :data:`CA_WATCH_S` seconds (a bundle changed elsewhere)."""
        while not self._stopped.is_set():
            self._ca_wake.wait(CA_WATCH_S)
            self._ca_wake.clear()
            if self._stopped.is_set():
                return
            try:
                if self.holders is not None:  # every replica shares its part of who holds the bundle
                    preparing = self.ca.rotation_phase == "preparing"  # (the view is read only then: O(proxies))
                    self.holders.share(preparing, *(self._bundle_view() if preparing else ("", [], {})))
                if (self.ca.rotation_phase == "preparing" and self.leadership.is_leader()  # a singleton step
                        and not self.ca.rotation_held and not self.nodes_without_bundle()):
                    self.ca.activate_rotation()
                    self._apply_ca(reissue=True)
                    log.info("every connected node holds the new trust bundle; signing from the new root, "
                             "control plane serving certificate re-issued")
                elif self.ca.bundle_pem() != self._applied_bundle:
                    self._apply_ca(reissue=False)
            except Exception as exc:  # noqa: BLE001 - this loop must outlive any failure
                log.error("CA rotation step failed, retrying in 2s: %s", describe_failure(exc))
                if not isinstance(exc, (MeshError, OSError)):
                    log.debug("CA rotation step failed", exc_info=True)
                self._stopped.wait(2)

    def ca_status(self) -> dict:
        state = self.ca.state()
        state["nodes_without_bundle"] = self.nodes_without_bundle() if state["phase"] == "preparing" else []
        return state

    def ca_rotate(self, force: bool = False, hold: bool = False) -> dict:
        """Start a root rotation; ``force`` signs from the new root at once (skips waiting for the
        bundle to reach every node: peers that lack it fail to connect until they have it); ``hold``
        keeps it preparing until :meth:`ca_release`."""
        if force and hold:
            raise CAError("--force signs from the new root at once and --hold keeps signing from the old one: "
                          "choose one")
        self.ca.begin_rotation(hold=hold)
        self._apply_ca(reissue=False)
        if force:
            self.ca.activate_rotation()
            self._apply_ca(reissue=True)
        self._ca_wake.set()
        return self.ca_status()

    def ca_release(self) -> dict:
        """Let a rotation started with ``hold`` move on (``preparing`` -> ``rotating`` once every connected
        node holds the two-root bundle); a rotation that is not held is left as it is."""
        self.ca.release_rotation()
        self._ca_wake.set()
        return self.ca_status()

    def ca_finish(self, force: bool = False) -> dict:
        left = self.ca.finish_rotation(force=force)
        self._apply_ca(reissue=False)
        return {**self.ca_status(), "forced_past": [c.spiffe_id for c in left]}

    def _grpc_credentials(self) -> grpc.ServerCredentials:
        served = {"identity": None}

        def current():
            identity = self._grpc_identity
            if identity is served["identity"]:
                return None  # unchanged: keep serving the current certificate
            served["identity"] = identity
            key_pem, chain_pem, bundle = identity
            return grpc.ssl_server_certificate_configuration(
                [(key_pem.encode(), chain_pem.encode())], root_certificates=bundle.encode())

        return grpc.dynamic_ssl_server_credentials(current(), current, require_client_authentication=True)

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        install_thread_excepthook()  # any thread that still dies: one ERROR line, never a bare traceback
        self._apply_ca(reissue=True)
        key_pem, chain_pem = self._serving
        authorize = mtls_node_authorizer(self.ca.trust_domain)

        def authorize_and_register(context, node):
            authorize(context, node)
            pem = (context.auth_context() or {}).get("x509_pem_cert") or [b""]
            refusal = self.ca.node_certificate_refusal(node.id, x509.load_pem_x509_certificate(pem[0])) \
                if pem[0] else None
            if refusal is not None:  # revoked (meshctl node revoke) or its root rotated away
                context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
            md = node.metadata.fields
            secrets_dir = md["secrets_dir"].string_value if "secrets_dir" in md else ""
            if not secrets_dir:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              "node metadata lacks secrets_dir; start Envoy with the bootstrap meshcore-agent writes")
            admin = md["admin"].string_value if "admin" in md else ""
            metrics = md["metrics"].string_value if "metrics" in md else ""
            system_ca = md[METADATA_KEY].string_value if METADATA_KEY in md else None  # meshcore.system_ca
            self.proxy_versions.record(node)  # Envoy's and its agent's versions (meshctl version)
            self.engine.proxy_connected(ProxyInfo(node=node.id, secrets_dir=secrets_dir, admin=admin,
                                                  metrics=metrics, system_ca_bundle=system_ca))

        def on_ack(node: str) -> None:  # convergence: observed once the node ACKed every type's version
            if self.cache.synced(node):
                self.metrics.config_synced(node)

        servicer = AdsServicer(self.cache, authorize_and_register, registry=self.metrics.registry, on_ack=on_ack,
                               max_streams_per_identity=self.settings.xds_max_streams_per_identity,
                               max_streams=self.settings.xds_max_streams or None,
                               first_request_timeout=self.settings.xds_first_request_timeout,
                               node_trust_domain=self.ca.trust_domain)  # ADS only for node identities
        self.ca.add_revocation_listener(  # a revoked node's open ADS streams end at once
            lambda node: servicer.end_node_streams(node, f"node {node!r} was revoked (meshctl node revoke)"))
        self.ca.add_revocation_listener(lambda node: self.agent_api.changed() if self.agent_api else None)
        self._grpc, xds_port = serve_ads(servicer, self.settings.xds_bind, self._grpc_credentials(),
                                          max_stream_age=self.settings.max_stream_age)
        xds_addr = f"{self.settings.advertise or _host_of(self.settings.xds_bind)}:{xds_port}"

        agent_api = self.agent_api = AgentApi(self.ca, self.tokens, self.engine.catalog, xds_addr,
                                              metrics=self.metrics,  # agents get the federated bundles too
                                              federated_bundles=lambda: self.engine.settings.federated_bundles,
                                              on_bundle_ack=self._ca_wake.set,  # a rotation may move on
                                              max_waiting=self.settings.agent_max_waiting)
        self._api_server = JsonServer(agent_api.router(), self.settings.api_bind,
                                      tls=self._https_context(key_pem, chain_pem), name="meshcore-agent-api").start()
        operator_api = OperatorApi(self._operator_context())
        http = JsonServer(operator_api.router(), self.settings.http_bind, name="meshcore-http").start()
        self._servers = [self._api_server, http]
        if self.settings.operator_tls_bind:  # the same operator API over TLS: operator client certificates
            self._operator_tls = JsonServer(operator_api.router(), self.settings.operator_tls_bind,
                                            tls=self._https_context(key_pem, chain_pem), name="meshcore-https").start()
            self._servers.append(self._operator_tls)
        if not self.settings.replica_id:  # <host name>-<operator API port>, once the port is bound
            self.leadership.replica_id = default_replica_id(http.address.rsplit(":", 1)[-1])
        self.engine.start()
        self.alerting.start()
        self.collector.start()
        self._start_replica(xds_addr, http.address)
        self.canaries.resume_all()
        self.supervisor.start("serving-cert", self._rotate_serving_identity)
        self.supervisor.start("ca-rotation", self._watch_ca)
        self.supervisor.start("oidc-discovery", self.oidc.run)
        self.addresses = {"xds": xds_addr, "api": f"https://{self._api_server.address}", "http": f"http://{http.address}"}
        if self._operator_tls is not None:
            self.addresses["https"] = f"https://{self._operator_tls.address}"
        self._write_state_file()
        log.info("control plane serving xds=%s api=%s http=%s trust_domain=%s", self.addresses["xds"],
                 self.addresses["api"], self.addresses["http"], self.ca.trust_domain)

    def _start_replica(self, xds_addr: str, http_address: str) -> None:
        """With --store consul: register this replica in Consul (its check is what the leader session is bound
        to), then join the leader election."""
        if self._ha:
            from ..catalog._consul_settings import ConsulSettings

            api_port = int(self._api_server.address.rsplit(":", 1)[-1]) if self._api_server is not None else 0
            host, _, http_port = http_address.rpartition(":")
            api_host = self.settings.advertise or _host_of(self.settings.api_bind)
            self.replicas = ReplicaRegistry(
                ConsulSettings.from_env(), self.leadership.replica_id, address=self.settings.advertise or host,
                ports={"xds": int(xds_addr.rsplit(":", 1)[-1]), "api": api_port, "http": int(http_port)},
                endpoints={"xds": xds_addr, "api": f"https://{api_host}:{api_port}"},
                health=healthz_probe(lambda: f"http://{http_address}/healthz"), check_ttl=self.settings.replica_check_ttl,
                leader=self.leadership.leader).start()
        prune = getattr(self.tokens, "prune", None)
        if prune is not None:  # shared join tokens: the leader removes long-expired ones (the file store does it itself)
            self._token_cleanup = LeaderWork(self.leadership, "join-token-cleanup",
                                             lambda stop: _every(TOKEN_CLEANUP_S, stop, prune, "join token cleanup"))
            self._token_cleanup.start()
        self.leadership.start()

    def _operator_context(self) -> OperatorContext:
        """The operator API's parts, and each feature's routes with the narrow interfaces it uses."""
        return OperatorContext(
            store=self.store, mesh=self.mesh, ca=self.ca, tokens=self.tokens, operators=self.operators,
            ca_control=CaControl(status=self.ca_status, rotate=self.ca_rotate, finish=self.ca_finish,
                                 release=self.ca_release),
            status=self.status_view, registry=self.metrics.registry, operator_certs=self.operator_certs,
            features=(
                partial(add_canary_routes, controller=lambda: self.canaries),  # /v1/canaries
                partial(add_dashboard_routes, collector=self.collector, ca=self.ca,  # /, /v1/dashboard/*
                        proxies=lambda: self.status_view().proxies, snapshot=self.mesh.snapshot),
                partial(add_alert_routes, alerting=self.alerting),  # /v1/alerts, /v1/alerts/rules
                partial(add_federation_routes, ca=self.ca, federation=self.federation, mesh=self.engine,
                        federated_acks=lambda: self.agent_api.federated_acks() if self.agent_api else {}),
                partial(add_operator_cert_routes, ca=self.ca, certs=self.operator_certs,  # /v1/operators/certs
                        https_address=lambda: self.addresses.get("https", "")),
                partial(add_node_routes, ca=self.ca),  # /v1/nodes/{name}/revoke (meshctl node revoke)
                partial(add_token_routes, tokens=self.tokens, operators=self.operators),  # meshctl token revoke
                partial(add_store_routes, store=self.store),  # /v1/store, /v1/store/restore (store owns these)
            ))

    def _write_state_file(self) -> None:
        data = {**self.addresses, "trust_domain": self.ca.trust_domain, "pid": os.getpid(),
                "ca_file": str(self.settings.state_dir / "ca" / "bundle.pem")}
        self._write_bundle_file(self.ca.bundle_pem())
        tmp = self.settings.state_dir / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, self.settings.state_dir / STATE_FILE)

    def _write_bundle_file(self, bundle: str) -> None:
        """``<state>/ca/bundle.pem``: the trust bundle to copy to VMs (``meshcore-agent --ca-file``)."""
        atomic_write(self.settings.state_dir / "ca" / "bundle.pem", bundle, 0o644)

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._ca_wake.set()
        if self._token_cleanup is not None:
            self._token_cleanup.stop()
        self.leadership.stop()  # singleton work stops, the lock is released: another replica leads at once
        if self.replicas is not None:
            self.replicas.stop()  # deregistered: agents and Prometheus stop picking this replica
        if self.agent_api is not None:
            self.agent_api.close()  # answer agents' held calls now
        self.collector.stop()
        self.alerting.stop()
        self.canaries.stop()
        self.engine.stop()
        getattr(self.store, "close_entries", lambda: None)()  # Consul config entry watches
        close = getattr(self.source, "close", None)
        if self._owns_source and close is not None:
            close()  # a catalog poll blocked in its wait returns now
        self.tracing.shutdown()
        # ADS streams never end on their own: the grace only lets a response being written go out; it runs
        # while the HTTP servers stop (each shutdown waits up to its 0.5 s poll), not after them.
        grpc_stopped = self._grpc.stop(grace=0.5) if self._grpc is not None else None
        for s in self._servers:
            s.stop()
        if grpc_stopped is not None:
            grpc_stopped.wait(2)
        self.ca.close()  # shared state: writes the pending issued records, stops following other replicas
        for shared in (self.operators, self.operator_certs, self.federation, self.tokens):
            getattr(shared, "close", lambda: None)()  # their watches of shared state end with this replica
        try:
            (self.settings.state_dir / STATE_FILE).unlink()
        except FileNotFoundError:
            pass

    # --- views -----------------------------------------------------------------------------
    def _on_snapshot(self, snap) -> None:
        self.metrics.snapshots.inc()
        self.metrics.catalog_instances.set(len(snap.catalog.instances))
        self.oidc.observe(snap)
        if self.agent_api is not None:
            self.agent_api.changed()  # agents waiting on /v1/agent/services look at their node again

    def status_view(self) -> StatusResponse:
        """The control plane and every proxy (``GET /v1/status``; ``/v1/proxies`` is its ``proxies``)."""
        catalog = self.engine.catalog()
        td = self.ca.trust_domain
        services: dict[str, list[ServiceStatus]] = {}
        gateways: dict[str, list[GatewayStatus]] = {}
        if catalog is not None:
            for inst in catalog.instances:
                services.setdefault(inst.node, [])
                gateways.setdefault(inst.node, [])
                spiffe_id = naming.workload_spiffe_id(td, inst.namespace, inst.service_account)
                if inst.kind == "":
                    # Every mesh service has an mTLS inbound listener; gateways (no inbound) are listed apart.
                    services[inst.node].append(ServiceStatus(
                        name=inst.service, id=inst.id, spiffe_id=spiffe_id, healthy=inst.healthy,
                        inbound=f"{inst.mesh_address}:{inst.mesh_port}", labels=inst.labels,
                        datacenter=inst.datacenter))
                else:
                    gateways[inst.node].append(GatewayStatus(
                        name=inst.service, id=inst.id, spiffe_id=spiffe_id, healthy=inst.healthy, kind=inst.kind,
                        listeners=tuple(f"{u.local_bind_address}:{u.local_bind_port}" for u in inst.upstreams),
                        datacenter=inst.datacenter, addresses=workload_of(inst).addresses))
        states = self.mesh.proxies()
        snap = self.engine.snapshot
        proxies = []
        for node in sorted(set(services) | set(states)):
            state = states.get(node)
            cs = self.mesh.cache_status(node)
            admin, metrics = self._fetchable(catalog, state.info if state else None)
            proxies.append(ProxyStatus(
                node=node, services=tuple(services.get(node, ())), gateways=tuple(gateways.get(node, ())),
                admin=admin, metrics=f"http://{metrics}/metrics" if metrics else "",
                connected=bool(cs.get("connected_streams")), synced=self._synced(node, state, snap),
                version=cs.get("version") or "", error=state.error if state else "",  # "": none yet
                access_log=access_log_path(self.engine.settings.telemetry, node),  # "", "stdout" or a file
                envoy_version=self.proxy_versions.get(node).envoy, agent_version=self.proxy_versions.get(node).agent))
        return StatusResponse(
            control_plane=ControlPlaneStatus(
                version=__import__("meshcore").__version__, **self._addresses(), trust_domain=td,
                snapshot=snap.hash if snap else "",
                catalog_error=self.engine.source_error, store_error=self.engine.store_error,
                build_error=self.engine.build_error, last_error=self.engine.last_error,
                sources=self._source_statuses(), threads=self._thread_statuses(), **self._replica_status()),
            proxies=tuple(proxies))

    def _addresses(self) -> dict[str, Any]:
        return dict(self.addresses)

    def _replica_status(self) -> dict[str, Any]:
        """This replica, the leader and (with --store consul) every registered replica with its health."""
        lead = self.leadership.status()
        out: dict[str, Any] = {"replica": self.leadership.replica_id, "leader": lead["leader"], "leadership": lead["mode"]}
        if self.replicas is not None:
            try:
                out["replicas"] = self.replicas.replicas()
            except MeshError as exc:
                out["replicas_error"] = str(exc)
        return out

    def _synced(self, node: str, state, snap) -> bool:
        """The proxy ACKed the latest *valid* config: the cache's versions, its last build did not fail,
        it was built from the current snapshot, and the builder is not failing (then nothing is current)."""
        if state is None or state.error or self.engine.build_error:
            return False
        if snap is not None and state.built_hash != snap.hash:
            return False
        return self.mesh.synced(node)

    def _source_statuses(self) -> tuple[SourceStatus, ...]:
        out = []
        for h in self.engine.health():
            out.append(SourceStatus(
                name=h.name, kind=h.kind, state=h.state, detail=h.detail, index=h.index, error=h.error,
                error_at=_rfc3339(h.error_at) if h.error_at else "",
                rejected=tuple(RejectedResource(key=k, error=e) for k, e in h.rejected)))
        oidc = self.oidc.source_status()
        return tuple(out) + ((oidc,) if oidc is not None else ())

    def _thread_statuses(self) -> tuple[ThreadStatus, ...]:
        threads = {**self.engine.supervisor.threads, **self.supervisor.threads}
        out = []
        for name in sorted(threads):
            t = threads[name]
            error = t.last_error
            if name == "serving-cert" and self._serving_error:
                error = f"renewal failing: {self._serving_error}"
            out.append(ThreadStatus(name=name, alive=t.alive, restarts=t.restarts, last_error=error))
        return tuple(out)

    def status(self) -> dict:
        """:meth:`status_view` as the API's JSON."""
        return self.status_view().to_json()

    @staticmethod
    def _fetchable(catalog, info) -> tuple[str, str]:
        """``(admin, metrics)`` host:port of a proxy that the control plane (and meshctl, which reads them from
        the status) may fetch: its node's catalog address with the ports it announced; "" for a node not in
        the catalog or an announced host that is not the node's (see :func:`catalog_address`)."""
        if info is None:
            return "", ""
        node = catalog.node(info.node) if catalog is not None else None
        host = node.address if node is not None else None
        return catalog_address(info.admin, host), catalog_address(info.metrics, host)

    def scrape_targets(self) -> list[ScrapeTarget]:
        """What the metrics collector needs of every proxy (the nodes :meth:`status_view` lists), without
        building the status: the services per node are recomputed only when the catalog changed (it is
        immutable: a new one is a new object), the rest is one cache lookup per node."""
        catalog = self.engine.catalog()
        seen, by_node, workloads = self._targets_of
        if catalog is not seen:
            grouped: dict[str, list[tuple[str, str]]] = {}
            placed: dict[str, list[Workload]] = {}
            for inst in catalog.instances if catalog is not None else ():
                entry = grouped.setdefault(inst.node, [])
                if inst.kind == "":  # mesh services; gateways have no inbound listener to read
                    entry.append((inst.id, inst.service))
                placed.setdefault(inst.node, []).append(workload_of(inst))
            by_node = {node: tuple(v) for node, v in grouped.items()}
            workloads = {node: tuple(sorted(v, key=lambda w: bool(w.kind))) for node, v in placed.items()}  # as /v1/proxies
            self._targets_of = (catalog, by_node, workloads)
        states = self.engine.proxies  # replaced whole on change: safe to read without the engine's lock
        connected = set(self.cache.connected_nodes())
        targets = []
        for node in sorted(set(by_node) | set(states)):
            state = states.get(node)
            admin, metrics = self._fetchable(catalog, state.info if state is not None else None)
            metrics = f"http://{metrics}/metrics" if metrics else ""
            is_connected = node in connected
            targets.append(ScrapeTarget(
                node=node, url=scrape_url(metrics, admin), fallback_urls=fallback_urls(metrics, admin),
                instances=by_node.get(node, ()), workloads=workloads.get(node, ()),
                heard_from=bool(is_connected or admin or metrics or self.cache.get(node) is not None),
                in_sync=is_connected and self.mesh.synced(node) and not (state.error if state else "")))
        self._target_nodes = frozenset(t.node for t in targets)
        return targets


def _mesh_config(path: str):
    """What ``--mesh-config`` sets (external authorizers, JWKS trust; the defaults without it)."""
    from ..authz.providers import MeshConfig, parse_mesh_settings

    if not path:
        return MeshConfig()

    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"--mesh-config {path}: {exc.strerror or exc}") from exc
    return parse_mesh_settings(text, path)


def _check_limits(settings: Settings) -> None:
    check_lock_settings(settings.leader_lock_ttl, settings.leader_lock_delay)
    if not settings.replica_check_ttl > 0:
        raise ConfigError(f"--replica-check-ttl {settings.replica_check_ttl:g}s: must be positive (e.g. 5s)")
    if settings.xds_max_streams_per_identity < 1:
        raise ConfigError(f"--xds-max-streams-per-identity {settings.xds_max_streams_per_identity}: must be at "
                          "least 1 (an Envoy holds one ADS stream; allow a few for hot restarts)")
    if settings.xds_max_streams < 0:
        raise ConfigError(f"--xds-max-streams {settings.xds_max_streams}: use 0 for no limit, or the number of "
                          "streams this replica should serve")
    if settings.agent_max_waiting < 0:
        raise ConfigError(f"--agent-max-waiting {settings.agent_max_waiting}: use 0 to hold no calls (agents "
                          "poll), or how many to hold at once")
    if settings.catalog_hold < 0:
        raise ConfigError(f"--catalog-hold {settings.catalog_hold:g}s: use 0 to publish Consul's reads as they are, "
                          "or how long to hold missing instances (e.g. 2m)")
    if not 0 < settings.catalog_shrink_threshold <= 1:
        raise ConfigError(f"--catalog-shrink-threshold {settings.catalog_shrink_threshold:g}: a fraction in (0, 1], "
                          "e.g. 0.5 (more than half the instances gone in one update is suspect)")
    if not settings.xds_first_request_timeout > 0:
        raise ConfigError(f"--xds-first-request-timeout {settings.xds_first_request_timeout:g}s: must be positive "
                          "(e.g. 30s)")


def parse_args(argv=None) -> argparse.Namespace:
    env = os.environ
    p = argparse.ArgumentParser(prog="meshcore-control-plane", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--state-dir", default=env.get("MESHCORE_STATE_DIR", "/var/lib/meshcore"),
                   help="where the CA, join tokens and (by default) resources live (default %(default)s)")
    p.add_argument("--trust-domain", default=env.get("MESHCORE_TRUST_DOMAIN", naming.DEFAULT_TRUST_DOMAIN))
    p.add_argument("--catalog", default=env.get("MESHCORE_CATALOG", "files:/etc/consul.d"),
                   help="files:DIR (Consul service-definition files, one sub-directory per node) or consul "
                        "(uses CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN, ...); consul:dc1,dc2 reads those datacenters "
                        "(?dc=), consul:dc1=ADDR,dc2=ADDR each at its own Consul, dc2@TRUST_DOMAIN a datacenter of "
                        "another (federated) trust domain (docs/multi-dc.md) (default %(default)s)")
    p.add_argument("--catalog-hold", default=env.get("MESHCORE_CATALOG_HOLD", f"{DEFAULT_HOLD_S:g}s"),
                   help="Consul catalog: after an index reset (Consul restarted empty) or a drastic shrink, keep the "
                        "missing instances as last seen for this long or until they re-register; 0s: off "
                        "(default %(default)s)")
    p.add_argument("--catalog-shrink-threshold", type=float,
                   default=env.get("MESHCORE_CATALOG_SHRINK_THRESHOLD", f"{DEFAULT_SHRINK_THRESHOLD:g}"),
                   help="Consul catalog: an update in which more than this fraction of the instances vanished "
                        "is suspect and held (default %(default)s)")
    p.add_argument("--store", default=env.get("MESHCORE_STORE", ""),
                   help="where mesh resources live: dir:DIR or consul (KV under meshcore/resources/) "
                        "(default dir:<state-dir>/resources)")
    add_entry_arguments(p, env)  # --consul-config-entries, --consul-intentions-default
    p.add_argument("--replica-id", default=env.get("MESHCORE_REPLICA_ID", ""),
                   help="this replica's name in Consul and in the leader lock (default: <host name>-<operator API "
                        "port>); unique per replica")
    p.add_argument("--leader-lock-ttl", default=env.get("MESHCORE_LEADER_LOCK_TTL", f"{DEFAULT_LOCK_TTL_S:g}s"),
                   help="--store consul: TTL of the leader-election session, renewed at half of it; a leader that "
                        "cannot renew within it stops its singleton work (10s to 24h; default %(default)s)")
    p.add_argument("--leader-lock-delay", default=env.get("MESHCORE_LEADER_LOCK_DELAY", f"{DEFAULT_LOCK_DELAY_S:g}s"),
                   help="--store consul: Consul's lock-delay: after a leader's session is invalidated no replica "
                        "may take the lock for this long (0s to 60s; default %(default)s, Consul's)")
    p.add_argument("--leader-key", default=env.get("MESHCORE_LEADER_KEY", "meshcore/" + LEADER_KEY),
                   help="--store consul: the Consul KV key of the leader lock (default %(default)s)")
    p.add_argument("--replica-check-ttl", default=env.get("MESHCORE_REPLICA_CHECK_TTL", f"{DEFAULT_CHECK_TTL_S:g}s"),
                   help="--store consul: TTL of the replica's Consul health check, which it passes from its own "
                        "/healthz every third of it; a dead leader loses the lock this long after it died "
                        "(default %(default)s)")
    p.add_argument("--xds-bind", default=env.get("MESHCORE_XDS_BIND", "127.0.0.1:15012"))
    p.add_argument("--api-bind", default=env.get("MESHCORE_API_BIND", "127.0.0.1:15443"))
    p.add_argument("--http-bind", default=env.get("MESHCORE_HTTP_BIND", "127.0.0.1:15000"))
    p.add_argument("--operator-tls-bind", default=env.get("MESHCORE_OPERATOR_TLS_BIND", ""),
                   help="also serve the operator API over TLS here, accepting operator client certificates "
                        "(`meshctl operator cert issue`) as well as tokens, e.g. 127.0.0.1:15001 (default: off)")
    p.add_argument("--xds-max-streams-per-identity", type=int,
                   default=env.get("MESHCORE_XDS_MAX_STREAMS_PER_IDENTITY", str(DEFAULT_MAX_STREAMS_PER_IDENTITY)),
                   help="ADS streams one node identity may hold open at once; more are refused with "
                        "RESOURCE_EXHAUSTED (default %(default)s)")
    p.add_argument("--xds-max-streams", type=int, default=env.get("MESHCORE_XDS_MAX_STREAMS", "0"),
                   help="ADS streams this control plane serves at once, all nodes together; more are refused "
                        "with RESOURCE_EXHAUSTED so agents fail over to another replica (default 0: no limit)")
    p.add_argument("--xds-first-request-timeout",
                   default=env.get("MESHCORE_XDS_FIRST_REQUEST_TIMEOUT", f"{DEFAULT_FIRST_REQUEST_TIMEOUT_S:g}s"),
                   help="how long a new ADS stream may stay silent before its first request; then it is "
                        "closed with DEADLINE_EXCEEDED (default %(default)s)")
    p.add_argument("--max-stream-age", default=env.get("MESHCORE_MAX_STREAM_AGE", f"{DEFAULT_MAX_STREAM_AGE_S / 60:g}m"),
                   help="close each ADS connection after this age, jittered by +-10%% (Envoy reconnects keeping its "
                        "config, possibly to another replica: load spreads back after a replica returns); "
                        "0 = never (default %(default)s)")
    p.add_argument("--agent-max-waiting", type=int,
                   default=env.get("MESHCORE_AGENT_MAX_WAITING", str(DEFAULT_MAX_WAITING)),
                   help="agents' blocking /v1/agent/services calls held at once (each holds its connection's "
                        "thread); beyond it calls are answered at once and those agents poll (default %(default)s)")
    p.add_argument("--collect-interval", default=env.get("MESHCORE_COLLECT_INTERVAL", "5s"),
                   help="how often the collector scrapes every proxy's metrics for the dashboard and alerts "
                        "(default %(default)s)")
    p.add_argument("--collect-timeout", default=env.get("MESHCORE_COLLECT_TIMEOUT", ""),
                   help="how long one round may wait for a proxy's metrics, its fallback sources included "
                        "(default: 80%% of --collect-interval)")
    p.add_argument("--alert-webhook", action="append", default=[], metavar="URL",
                   help="POST Alertmanager-compatible alert notifications here (repeatable; also "
                        "MESHCORE_ALERT_WEBHOOKS, comma separated)")
    from ..observe.telemetry import add_telemetry_args  # --access-log, --tracing-otlp, ...

    add_telemetry_args(p, env)
    p.add_argument("--path-normalization", choices=PATH_NORMALIZATIONS,
                   default=env.get("MESHCORE_PATH_NORMALIZATION", DEFAULT_PATH_NORMALIZATION),
                   help="how every Envoy normalizes request paths before authorization and routing, with "
                        "Istio's MeshConfig pathNormalization names (default %(default)s; see docs/security.md)")
    p.add_argument("--allow-path-parameters", action="store_true",
                   default=env.get("MESHCORE_ALLOW_PATH_PARAMETERS", "") == "1",
                   help="let paths carry parameters (';' or %%3B); by default inbound Envoys answer them 400, "
                        "since policies match the path with its parameters")
    p.add_argument("--mesh-config", default=env.get("MESHCORE_MESH_CONFIG", ""), metavar="FILE",
                   help="Istio MeshConfig subset: extensionProviders (envoyExtAuthzHttp, envoyExtAuthzGrpc), the external "
                        "authorizers CUSTOM AuthorizationPolicies name (see docs/security.md)")
    p.add_argument("--advertise", default=env.get("MESHCORE_ADVERTISE", ""),
                   help="address agents use to reach this control plane (default: the bind host)")
    p.add_argument("--kek-file", default=env.get("MESHCORE_KEK_FILE"),
                   help="key-encryption key file (0600); or set MESHCORE_KEK (base64)")
    p.add_argument("--leaf-ttl", default=env.get("MESHCORE_LEAF_TTL", "24h"), help="SVID lifetime (default %(default)s)")
    p.add_argument("--node-cert-ttl", default=env.get("MESHCORE_NODE_CERT_TTL", "7d"),
                   help="node certificate lifetime, renewed at half life: a control plane outage shorter than "
                        "half of it never expires one (default %(default)s)")
    p.add_argument("--node-recovery-grace", default=env.get("MESHCORE_NODE_RECOVERY_GRACE", "30d"),
                   help="how long after its node certificate expired an agent may still recover it with the same "
                        "key, without a join token (default %(default)s; 0s: never)")
    p.add_argument("--key-type", default=env.get("MESHCORE_KEY_TYPE", "ec-p256"), choices=KEY_TYPES,
                   help="key type of CA keys made from now on (new CA, intermediate renewal, root rotation) "
                        "(default %(default)s)")
    p.add_argument("--ca-cert", default=env.get("MESHCORE_CA_CERT"),
                   help="external upstream CA: PEM intermediate signed by your own root, to sign SVIDs with "
                        "(read once, then stored sealed in the state dir)")
    p.add_argument("--ca-key", default=env.get("MESHCORE_CA_KEY"), help="PEM private key of --ca-cert (unencrypted)")
    p.add_argument("--ca-chain", default=env.get("MESHCORE_CA_CHAIN"),
                   help="PEM certificates from --ca-cert's issuer up to and including your root")
    p.add_argument("--full-rebuild", action="store_true", default=env.get("MESHCORE_FULL_REBUILD", "") == "1",
                   help="baseline for benchmarks: on every change rebuild the whole mesh snapshot and every "
                        "connected proxy, without coalescing (default: incremental, only affected proxies)")
    p.add_argument("--log-level", default=env.get("MESHCORE_LOG_LEVEL", "info"))
    p.add_argument("--log-format", choices=("text", "json"), default=env.get("MESHCORE_LOG_FORMAT", "text"))
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["operator-token"]:  # offline token management: see operators.py
        from .operators import cli_main

        return cli_main(argv[1:])
    args = parse_args(argv)
    setup_logging(args.log_level, args.log_format)
    try:
        settings = Settings(
            state_dir=Path(args.state_dir).absolute(), trust_domain=args.trust_domain, catalog=args.catalog,
            store=args.store, xds_bind=args.xds_bind, api_bind=args.api_bind, http_bind=args.http_bind,
            advertise=args.advertise, kek_file=args.kek_file, leaf_ttl=parse_duration(args.leaf_ttl),
            node_cert_ttl=parse_duration(args.node_cert_ttl),
            node_recovery_grace=parse_duration(args.node_recovery_grace),
            key_type=args.key_type, ca_cert=args.ca_cert, ca_key=args.ca_key, ca_chain=args.ca_chain,
            collect_interval=parse_duration(args.collect_interval).total_seconds(),
            collect_timeout=parse_duration(args.collect_timeout).total_seconds() if args.collect_timeout else None,
            operator_tls_bind=args.operator_tls_bind, telemetry=telemetry_settings(args),
            path_normalization=args.path_normalization, allow_path_parameters=args.allow_path_parameters,
            ext_authz_providers=(mesh_config := _mesh_config(args.mesh_config)).ext_authz_providers,
            jwks=mesh_config.jwks, gateway_trusted_proxies=mesh_config.gateway_trusted_proxies,
            alert_webhooks=tuple(_webhook_urls(args.alert_webhook)), full_rebuild=args.full_rebuild,
            xds_max_streams_per_identity=args.xds_max_streams_per_identity, xds_max_streams=args.xds_max_streams,
            xds_first_request_timeout=parse_duration(args.xds_first_request_timeout).total_seconds(),
            max_stream_age=parse_duration(args.max_stream_age).total_seconds(),
            agent_max_waiting=args.agent_max_waiting,
            catalog_hold=parse_duration(args.catalog_hold).total_seconds(),
            catalog_shrink_threshold=args.catalog_shrink_threshold, consul_entries=entry_settings(args),
            replica_id=args.replica_id,
            leader_lock_ttl=parse_duration(args.leader_lock_ttl).total_seconds(),
            leader_lock_delay=parse_duration(args.leader_lock_delay).total_seconds(), leader_key=args.leader_key,
            replica_check_ttl=parse_duration(args.replica_check_ttl).total_seconds(),
        )
        _check_limits(settings)
        kek = load_kek(settings.kek_file)
        cp = ControlPlane(settings, kek)
        cp.start()
    except (MeshError, ValueError, OSError) as exc:
        print(f"meshcore-control-plane: {exc}", file=sys.stderr)
        return 2
    from ..agent.notify import notify

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    notify("READY=1\nSTATUS=serving xds on " + cp.addresses["xds"])
    watchdog = int(os.environ.get("WATCHDOG_USEC", "0")) / 1e6
    while not stop.wait(watchdog / 2 if watchdog else 3600):
        notify("WATCHDOG=1")
    notify("STOPPING=1")
    cp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
