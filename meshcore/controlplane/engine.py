"""The control plane's core loop: sources in, one MeshSnapshot, per-proxy builds out.

Two watcher threads (catalog, resources) feed the engine; every change builds a new
:class:`MeshSnapshot`; when its hash differs, every connected proxy's resources are built
(pure) and published (validated, cross-checked, then set in the cache). A proxy whose build
fails keeps its last good config and the error is kept for ``status``.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

from tenacity import Retrying, retry_if_exception_type, stop_never, wait_random_exponential

from ..catalog.model import Catalog
from ..catalog.source import CatalogSource
from ..observe.tracing import ControlPlaneTracing
from ..errors import CatalogError, MeshError, StoreError, ValidationError, XdsError
from ..resources.store import ResourceStore
from ..snapshot import MeshSettings, MeshSnapshot, ProxyInfo
from ..compose import build_proxy
from ..xds.cache import SnapshotCache
from ..xds.validate import publish

if TYPE_CHECKING:
    from .metrics import ControlPlaneMetrics

log = logging.getLogger("meshcore.controlplane")

POLL_WAIT_S = 30.0


@dataclass
class ProxyState:
    info: ProxyInfo
    error: str = ""
    built_hash: str = ""
    published_at: float = 0.0
    last_change_at: float = field(default=0.0)


class MeshEngine:
    def __init__(self, catalog_source: CatalogSource, store: ResourceStore, cache: SnapshotCache, *,
                 trust_domain: str, settings: MeshSettings | None = None, on_snapshot: Callable[[MeshSnapshot], None] | None = None,
                 metrics: "ControlPlaneMetrics | None" = None, tracing: ControlPlaneTracing | None = None):
        self._source = catalog_source
        self._store = store
        self.cache = cache
        self.trust_domain = trust_domain
        self.settings = settings or MeshSettings()
        self._on_snapshot = on_snapshot
        self.metrics = metrics  # build time, build errors, watch errors, convergence start (optional)
        self.tracing = tracing or ControlPlaneTracing()  # spans: change -> snapshot rebuild -> per proxy
        self._lock = threading.RLock()
        self._catalog: Catalog | None = None
        self._resources: list = []
        self._resources_loaded = False
        self.snapshot: MeshSnapshot | None = None
        self.proxies: dict[str, ProxyState] = {}
        self.source_error = ""
        self.store_error = ""
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        for target, name in ((self._catalog_loop, "catalog-watch"), (self._store_loop, "resource-watch")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=2)

    def _retrying(self, what: str, errors):
        def before_sleep(state):
            exc = state.outcome.exception()
            log.warning("%s failed, retrying: %s", what, exc)

        return Retrying(
            wait=wait_random_exponential(multiplier=0.2, max=15), stop=stop_never,
            retry=retry_if_exception_type(errors), sleep=self._stop.wait, before_sleep=before_sleep, reraise=True,
        )

    def _catalog_loop(self) -> None:
        index = None
        while not self._stop.is_set():
            try:
                for attempt in self._retrying("catalog watch", (CatalogError, ValidationError)):
                    with attempt:
                        if self._stop.is_set():
                            return
                        try:
                            update = self._source.poll(index, POLL_WAIT_S)
                        except (CatalogError, ValidationError) as exc:
                            self.source_error = str(exc)
                            if self.metrics is not None:
                                self.metrics.catalog_watch_errors.inc()
                            raise
            except (CatalogError, ValidationError):
                continue
            self.source_error = ""
            # Compare content, not indexes: a source may hand out a newer catalog under the same index
            # (Consul's index can stay put while a read catches up); the snapshot hash dedupes.
            with self._lock:
                changed = update.catalog != self._catalog
                self._catalog = update.catalog
            if changed:
                self._rebuild("catalog")
            index = update.index

    def _store_loop(self) -> None:
        index = None
        while not self._stop.is_set():
            try:
                for attempt in self._retrying("resource store watch", StoreError):
                    with attempt:
                        if self._stop.is_set():
                            return
                        try:
                            resources, new_index = self._store.watch(index, POLL_WAIT_S)
                        except StoreError as exc:
                            self.store_error = str(exc)
                            if self.metrics is not None:
                                self.metrics.store_watch_errors.inc()
                            raise
            except StoreError:
                continue
            self.store_error = ""
            with self._lock:
                changed = not self._resources_loaded or resources != self._resources
                self._resources = resources
                self._resources_loaded = True
            if changed:
                self._rebuild("resources")
            index = new_index

    def set_settings(self, settings: MeshSettings) -> None:
        """New mesh settings (telemetry, federated bundles): rebuild and push if they change the snapshot."""
        with self._lock:
            self.settings = settings
        self._rebuild("settings")

    # --- snapshot and publishing -----------------------------------------------------------
    def _rebuild(self, reason: str) -> None:
        with self.tracing.span(f"{reason} change", reason=reason) as cause:
            self._rebuild_snapshot(reason, cause)

    def _rebuild_snapshot(self, reason: str, cause) -> None:
        with self._lock, self.tracing.span("snapshot rebuild") as span:
            if self._catalog is None or not self._resources_loaded:
                return
            snap = MeshSnapshot.build(self._catalog, self._resources, self.trust_domain, self.settings)
            if span is not None:
                span.set_attribute("meshcore.version", snap.hash)
                cause.set_attribute("meshcore.changed", self.snapshot is None or snap.hash != self.snapshot.hash)
            if self.snapshot is not None and snap.hash == self.snapshot.hash:
                return
            self.snapshot = snap
            log.info("new mesh snapshot version=%s reason=%s instances=%d resources=%d",
                     snap.hash, reason, len(snap.catalog.instances), len(snap.resources))
            for node in list(self.proxies):
                self._publish(node)
            self.ready.set()
        if self._on_snapshot:
            self._on_snapshot(snap)

    def _publish(self, node: str) -> None:
        with self.tracing.span("proxy build+publish", node=node,
                               version=self.snapshot.hash if self.snapshot else "") as span:
            error = self._publish_traced(node)
            if error:
                self.tracing.fail(span, error)

    def _publish_traced(self, node: str) -> str:
        """Build and publish ``node``'s config; the error message when it was not published, else ""."""
        state = self.proxies[node]
        snap = self.snapshot
        if snap is None:
            return ""
        started = time.monotonic()
        previous = self.cache.get(node)
        try:
            resources = build_proxy(snap, state.info)
            published = publish(self.cache, node, resources)
        except (XdsError, MeshError) as exc:
            if self.metrics is not None:
                self.metrics.build_seconds.observe(time.monotonic() - started)
                self.metrics.build_errors.inc()
            state.error = str(exc)
            log.error("config for node=%s not published, it keeps its last good config: %s", node, exc)
            return state.error
        if self.metrics is not None:
            self.metrics.build_seconds.observe(time.monotonic() - started)
            if previous is None or previous.version != published.version:
                self.metrics.config_published(node, started)
                if self.cache.synced(node):  # the ACK raced ahead of us
                    self.metrics.config_synced(node)
        state.error = ""
        state.built_hash = snap.hash
        state.published_at = time.time()
        log.debug("published node=%s version=%s in %.1f ms", node, snap.hash, (time.monotonic() - started) * 1e3)
        return ""

    def proxy_connected(self, info: ProxyInfo) -> None:
        """An Envoy opened an ADS stream: remember what it told us and build its config now."""
        with self._lock:
            current = self.proxies.get(info.node)
            if current is not None and current.info == info and current.built_hash:
                return
            self.proxies[info.node] = ProxyState(info=info)
            with self.tracing.span("proxy connected", node=info.node):
                self._publish(info.node)

    def build_for(self, node: str) -> dict | None:
        """The resources the engine would publish for ``node`` now (for ``meshctl proxy-config``)."""
        with self._lock:
            state = self.proxies.get(node)
            if state is None or self.snapshot is None:
                return None
            return build_proxy(self.snapshot, state.info)

    def catalog(self) -> Catalog | None:
        with self._lock:
            return self._catalog
