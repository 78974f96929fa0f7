"""The control plane's core loop: sources in, one MeshSnapshot, per-proxy builds out.

Two watcher threads (catalog, resources) hand what they read to the engine and wake the builder
thread; they never build. The builder coalesces a burst of changes (it waits for a quiet window of
:data:`QUIET_S`, never more than :data:`MAX_DELAY_S` after the first change), updates the snapshot
incrementally (:meth:`MeshSnapshot.update`: only changed services and resources are hashed), and
rebuilds only the proxies whose last build read something that changed (the dependency index,
:mod:`._deps`). Builds run outside the lock that guards the engine's state: that lock only swaps
the snapshot and per-proxy bookkeeping, so ``build_for``, ``status``, CSR signing and new ADS
connections never wait on a rebuild of others; a newly connected proxy is built at once in its
own thread. A proxy whose build fails keeps its last good config and the error is kept for
``status``. ``incremental=False`` (``--full-rebuild``) keeps the old path as a baseline: the snapshot
built from scratch and every proxy rebuilt on every change, without coalescing.

Disconnected proxies (``track_streams=True``, as the daemon runs it): a proxy whose ADS streams have all
closed is not rebuilt by later changes; its last config stays in the cache and its bookkeeping stays
(so a reconnect is served at once, and needs no lookup of what it depends on). A change that would have
reached it marks it ``missed``; when it reconnects (:meth:`proxy_connected`, called by the ADS
authorizer before the stream is served) it is rebuilt from the current snapshot before anything is sent.
A proxy counts as connected for :data:`CONNECT_GRACE_S` after ``proxy_connected`` even without an open
stream, since the server records the stream only after the authorizer returns.

Garbage collection (``collect_garbage=True``, as the daemon runs it): the builder runs the process's full
cyclic collections itself when it has been quiet for a moment, and freezes the heap after them, so the
automatic ones during a burst of changes walk only what the burst made (:mod:`._gc`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, cast

from tenacity import Retrying, stop_never, wait_random_exponential

from ..catalog.model import Catalog, CatalogUpdate
from ..catalog.source import CatalogSource, SourceHealth
from ..observe.tracing import ControlPlaneTracing
from ..errors import ConsulAuthError, MeshError, StoreAuthError, XdsError
from ..resources.loader import validate_document
from ..resources.model import Resource, ResourceKey
from ..resources.store import ResourceStore, StoreHealth, store_health
from ..compose import build_proxy, generate_proxy, shape_proxy
from ..snapshot import MeshSettings, MeshSnapshot, ProxyInfo, SnapshotChange
from ..xds.cache import Prepared, ProxySnapshot, SnapshotCache
from ..xds.validate import publish
from ..xds.generate.shared import Keyed
from ._deps import ChangeKeys, Deps, RecordingSnapshot, change_keys
from ._gc import QUIET_S as GC_QUIET_S, QuietCollector, enabled_by_env as gc_enabled_by_env
from ._shared import Generated, SharedMemo, merge_deps
from ._supervise import Supervisor

if TYPE_CHECKING:
    from .metrics import ControlPlaneMetrics

log = logging.getLogger("meshcore.controlplane")

POLL_WAIT_S = 30.0
QUIET_S = 0.02
"""Coalescing: the builder starts once no new change arrived for this long..."""
MAX_DELAY_S = 0.1
"""...or this long after the first change of a burst, whichever comes first (a hard bound)."""
CONNECT_PRIORITY_S = 0.05
"""While a newly connected proxy is being built, the builder holds back before its next proxy (so the
new one gets the CPU), for at most this long per proxy, so a reconnect storm cannot starve changes."""
RETRY_FIRST_S = 1.0
RETRY_MAX_S = 30.0
"""A rebuild that failed is retried after :data:`RETRY_FIRST_S`, doubling up to this bound (never in a loop)."""
REFUSED_RETRY_S = 30.0
"""A watch whose ACL token Consul refuses (403) retries this often: fixing the token needs an operator."""
CONNECT_GRACE_S = 30.0
"""A proxy counts as connected this long after :meth:`MeshEngine.proxy_connected` even before (or without)
an open ADS stream in the cache (the server records the stream only once the authorizer returns)."""


@dataclass
class ProxyState:
    info: ProxyInfo
    error: str = ""
    built_hash: str = ""
    published_at: float = 0.0
    last_change_at: float = field(default=0.0)
    deps: Deps | None = None  # what its last successful build read; None = rebuild on any change
    built_seq: int = 0  # the engine's snapshot sequence number its last build used (0 = never built)
    built_info: ProxyInfo | None = None  # the info that build used
    connected_at: float = 0.0  # monotonic time of the last proxy_connected
    missed: bool = False  # a change reached it while it had no open stream: rebuild when it reconnects
    shared: frozenset[Keyed] = frozenset()  # shared entries its last build used unedited
    edited: frozenset[Keyed] = frozenset()  # shared entries a plugin edited in its last build
    reached_seq: int = 0  # the last snapshot whose change reached its own reads (or an entry a plugin edited)
    own_seq: int = 0  # the snapshot of its last full build; re-assembly suffices while own_seq >= reached_seq
    gen_deps: Deps | None = None  # what the generators read in its last full build (``deps`` adds the plugins')
    generated: Generated | None = None  # the generators' output of that build, before any plugin
    gen_reached_seq: int = 0  # the last snapshot whose change reached ``gen_deps``
    gen_seq: int = 0  # the snapshot ``generated`` is current for; re-running the plugins suffices while
    #                   gen_seq >= gen_reached_seq (a change reached only the plugins' reads or edited entries)
    build_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


class _Collect:
    """What the builder's wait returns at a quiet moment (see :class:`~._gc.QuietCollector`)."""


_COLLECT = _Collect()


@dataclass
class _Pending:
    """Inputs that arrived since the builder last took them (guarded by the engine's lock)."""

    catalog: bool = False
    hint: frozenset[str] | None = frozenset()  # union of the sources' hints; None = unknown
    inputs: tuple = ()  # (catalog, resources, settings) read when taken, atomically with the hint
    resources: bool = False
    settings: bool = False
    first_at: float = 0.0
    last_at: float = 0.0
    changes: int = 0
    reasons: set[str] = field(default_factory=set)

    def __bool__(self) -> bool:
        return self.catalog or self.resources or self.settings


def _as_source_health(name: str, store: StoreHealth) -> SourceHealth:
    """A resource store's own report (``meshctl store status``) as a source of the status page: a *suspect*
    store (its backend lost resources; the last good generation is served) shows as ``holding``."""
    if store.ok:
        return SourceHealth(name=name, kind=f"{store.backend} {store.location}".strip(), state="ok",
                            detail=f"generation {store.generation}, {store.resources} resources", index=store.generation)
    return SourceHealth(name=name, kind=f"{store.backend} {store.location}".strip(), state="holding",
                        detail=store.message or f"holding generation {store.held_generation} "
                                                f"({store.held_resources} resources); run meshctl store restore",
                        index=store.generation)


class MeshEngine:
    def __init__(self, catalog_source: CatalogSource, store: ResourceStore, cache: SnapshotCache, *,
                 trust_domain: str, settings: MeshSettings | None = None, on_snapshot: Callable[[MeshSnapshot], None] | None = None,
                 metrics: "ControlPlaneMetrics | None" = None, tracing: ControlPlaneTracing | None = None,
                 incremental: bool = True, quiet_s: float = QUIET_S, max_delay_s: float = MAX_DELAY_S,
                 track_streams: bool = False, collect_garbage: bool = False):
        self._source = catalog_source
        self._store = store
        self.cache = cache
        self.trust_domain = trust_domain
        self.settings = settings or MeshSettings()
        self._on_snapshot = on_snapshot
        self.metrics = metrics  # build time, build errors, watch errors, convergence start (optional)
        if metrics is not None:  # read at scrape time: the store keeps its health in memory, no IO
            metrics.store_suspect.set_function(lambda: 0.0 if store_health(self._store).ok else 1.0)
        self.tracing = tracing or ControlPlaneTracing()  # spans: change -> snapshot rebuild -> per proxy
        self.incremental = incremental
        self.track_streams = track_streams  # skip proxies without an open ADS stream in ``cache``
        # The process's full garbage collections at quiet moments of the builder (see _gc.py): the daemon's choice.
        self.gc = QuietCollector() if collect_garbage and gc_enabled_by_env() else None
        self._gc_owed = False  # something was built since the last quiet collection
        self._busy_at = 0.0  # monotonic time the builder (or a new connection's build) last finished
        self.quiet_s = quiet_s if incremental else 0.0
        self.max_delay_s = max_delay_s if incremental else 0.0
        self._lock = threading.RLock()  # guards the state below; never held while building
        self._wake = threading.Condition(self._lock)
        self._rebuilding = threading.Lock()
        self._connecting = 0  # proxy_connected builds in flight (the builder yields to them)
        self._pending = _Pending()
        self._catalog: Catalog | None = None
        self._resources: list = []
        self._resources_loaded = False
        self.snapshot: MeshSnapshot | None = None
        self._seq = 0  # bumped with every new snapshot
        self._memo: SharedMemo | None = None  # shared entries of snapshot number ``_memo_seq``
        self._memo_seq = 0
        # How many proxies' last builds use each shared entry (``shared | edited``), kept as they change, and
        # the entries no proxy uses any more since the last snapshot: the memo drops those on its next carry.
        self._in_use: Counter[Keyed] = Counter()
        self._unused: set[Keyed] = set()
        self.proxies: dict[str, ProxyState] = {}  # replaced whole on insert (readers need no lock)
        # Health of the sources and of the builder, for ``meshctl status`` (written by the watchers).
        self.source_error = ""  # the catalog source's last read error ("" once a read succeeds)
        self.store_error = ""  # the resource store's last read error
        self.build_error = ""  # the last failed rebuild ("" once one succeeds)
        self.last_error = ""  # the most recent error of any source or the builder, with its source and time
        self._errors_at: dict[str, float] = {}  # "catalog"/"resources"/"build" -> epoch of its error
        self._catalog_index: int | None = None
        self._store_index: int | None = None
        self._build_failures = 0
        self._checked: dict[ResourceKey, tuple[Resource, Resource | None, str]] = {}  # per-document validation memo
        self.rejected: dict[str, str] = {}  # stored documents left out (where they are -> why), see resources_changed
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.supervisor = Supervisor(self._stop, on_restart=self._count_restart)
        self.ready = threading.Event()

    # --- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Start the builder and the two watchers, each under the supervisor (a loop that dies is restarted)."""
        for target, name in ((self._build_loop, "mesh-build"), (self._catalog_loop, "catalog-watch"),
                             (self._store_loop, "resource-watch")):
            self._threads.append(self.supervisor.start(name, target))

    def _count_restart(self, thread: str) -> None:
        if self.metrics is not None:
            self.metrics.thread_restarts.labels(thread=thread).inc()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop building and watching. Waits up to ``timeout`` for the build thread (it may be publishing);
        the watch threads are daemons blocked in their source's or store's wait (up to ``POLL_WAIT_S``),
        so they get only a moment: waiting for them made every SIGTERM take seconds."""
        self._stop.set()
        with self._wake:
            self._wake.notify_all()
        deadline = time.monotonic() + timeout
        for t in self._threads:
            budget = deadline - time.monotonic() if t.name == "mesh-build" else 0.1
            t.join(timeout=max(budget, 0.0))

    def _sleep(self, seconds: float) -> None:
        """Tenacity's sleep between retries: returns early when the engine stops."""
        self._stop.wait(seconds)

    def _retrying(self, what: str, on_error: Callable[[BaseException], None]):
        """Retry forever with jittered exponential backoff on any exception; ``on_error`` records each one.
        Expected failures (meshcore's errors: Consul down, a store file being edited) log one WARNING line;
        anything else one ERROR line with its type (the traceback at DEBUG): never a bare traceback. A refused
        ACL token (403) is not transient: one ERROR naming the token's setting, then retries every
        :data:`REFUSED_RETRY_S` (at DEBUG) until one succeeds (one INFO line)."""
        refused: list[int] = []  # a refused ACL token is logged once (ERROR), until a read succeeds

        def before_sleep(state):
            exc = state.outcome.exception()
            if isinstance(exc, (ConsulAuthError, StoreAuthError)):
                (log.debug if refused else log.error)(
                    "%s: Consul refused the ACL token (HTTP 403, not a transient error: fix the token; meshcore "
                    "keeps what it last read and retries every %.0fs until then): %s",
                    what, REFUSED_RETRY_S, exc)
                refused.append(1)
            elif isinstance(exc, MeshError):
                log.warning("%s failed, retrying: %s", what, exc)
            else:
                log.error("%s failed unexpectedly, retrying (traceback at DEBUG level): %s: %s",
                          what, type(exc).__name__, exc)
                log.debug("%s failed", what, exc_info=exc)

        def record(state):
            exc = state.outcome.exception()
            if exc is not None:
                on_error(exc)
            elif refused:
                log.info("%s: Consul accepts the ACL token again", what)
            return exc is not None

        backoff = wait_random_exponential(multiplier=0.2, max=15)

        def wait(state):  # slowly while the token is refused: hammering Consul with it changes nothing
            if isinstance(state.outcome.exception(), (ConsulAuthError, StoreAuthError)):
                return REFUSED_RETRY_S
            return backoff(state)

        return Retrying(
            wait=wait, stop=stop_never,
            retry=record, sleep=self._sleep, before_sleep=before_sleep, reraise=True,
        )

    def _record_error(self, source: str, message: str) -> None:
        """Keep ``message`` as ``source``'s error (and the engine's last error) for status."""
        now = time.time()
        self._errors_at[source] = now
        self.last_error = f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))} {source}: {message}"
        if source == "catalog":
            self.source_error = message
        elif source == "resources":
            self.store_error = message
        else:
            self.build_error = message

    def _watch_failed(self, source: str, what: str, index: int | None) -> Callable[[BaseException], None]:
        """Records a failed read of ``source`` with the index it watched from (and counts it)."""
        def failed(exc: BaseException) -> None:
            where = f"{what} at index {index}" if index is not None else f"initial read ({what})"
            detail = str(exc) if isinstance(exc, MeshError) else f"{type(exc).__name__}: {exc}"
            self._record_error(source, f"{where}: {detail}")
            if self.metrics is not None:
                counter = self.metrics.catalog_watch_errors if source == "catalog" else self.metrics.store_watch_errors
                counter.inc()

        return failed

    def _catalog_loop(self) -> None:
        index = None
        while not self._stop.is_set():
            for attempt in self._retrying("catalog watch", self._watch_failed("catalog", "catalog watch", index)):
                with attempt:
                    if self._stop.is_set():
                        return
                    update = self._source.poll(index, POLL_WAIT_S)
                    self.catalog_changed(update)
                    if self.metrics is not None:
                        self.metrics.catalog_holding.set(1 if update.extra.get("holding") else 0)
            self.source_error = ""
            index = self._catalog_index = update.index

    def catalog_changed(self, update: CatalogUpdate) -> None:
        """A catalog source's update (the watcher calls this; a push-based source may too)."""
        # Compare content, not indexes: a source may hand out a newer catalog under the same index
        # (Consul's index can stay put while a read catches up). Compared outside the lock: only
        # this thread writes ``_catalog``, and catalogs are immutable.
        current = self._catalog
        hint = update.changed_services
        if update.catalog is current:
            return
        if current is not None:
            if hint is None:
                if update.catalog == current:
                    return
            elif not hint and update.catalog.nodes == current.nodes:
                return  # the source says no service changed, and no node did
        with self._wake:
            self._catalog = update.catalog
            pending = self._pending
            if not pending.catalog:
                pending.hint = hint
            elif pending.hint is not None:
                pending.hint = None if hint is None else pending.hint | hint
            pending.catalog = True
            self._changed_locked("catalog")

    def _store_loop(self) -> None:
        index = None
        while not self._stop.is_set():
            failed = self._watch_failed("resources", "resource store watch", index)
            for attempt in self._retrying("resource store watch", failed):
                with attempt:
                    if self._stop.is_set():
                        return
                    resources, new_index = self._store.watch(index, POLL_WAIT_S)
                    self.resources_changed(resources)
            self.store_error = ""
            index = self._store_index = new_index

    def _where(self, key: ResourceKey) -> str:
        """Where the store keeps ``key`` (a file, a Consul KV key), for errors an operator can act on."""
        for attr in ("path_of", "key_for"):
            locate = getattr(self._store, attr, None)
            if locate is not None:
                try:
                    return f"{key} ({locate(key)})"
                except Exception:  # noqa: BLE001 - only a description
                    break
        return str(key)

    def _admit(self, resources: list) -> list:
        """The stored documents that pass validation, each checked on its own (a memo keeps the verdict
        per unchanged document); the others are left out and kept in :attr:`rejected` with their error.

        A store holds what ``meshctl apply`` validated, but a document written behind its back (a store
        file, a Consul KV key) has not been: one nonsense spec must not stop the rest of the mesh."""
        memo: dict[ResourceKey, tuple[Resource, Resource | None, str]] = {}
        kept = []
        unreadable = getattr(self._store, "unreadable", None)  # documents the store could not even parse
        rejected: dict[str, str] = dict(unreadable()) if callable(unreadable) else {}
        for res in resources:
            key = res.key
            seen = self._checked.get(key)
            if seen is not None and seen[0] == res:
                good, error = seen[1], seen[2]
            else:
                good, error = self._check(res)
            memo[key] = (res, good, error)
            if good is None:
                where = self._where(key)
                rejected[where] = error
                if self.rejected.get(where) != error:
                    log.error("stored resource rejected, the mesh is built without it: %s: %s; fix it with "
                              "`meshctl apply` or remove it", where, error)
            else:
                kept.append(good)
        for where in self.rejected.keys() - rejected.keys():
            log.info("stored resource no longer rejected (fixed or removed): %s", where)
        self._checked, self.rejected = memo, rejected
        if self.metrics is not None:
            self.metrics.resources_rejected.set(len(rejected))
        return kept

    @staticmethod
    def _check(res: Resource) -> tuple[Resource | None, str]:
        """``res`` validated as the loader validates a document: (the resource, "") or (None, why not)."""
        try:
            good, problems = validate_document(res.to_document(), str(res.key), None)
        except Exception as exc:  # noqa: BLE001 - a validator bug rejects this document, not the store
            return None, f"validation failed: {type(exc).__name__}: {exc}"
        if good is None:
            return None, "; ".join(f"{p.path or '(document)'}: {p.message}" for p in problems) or "invalid"
        if good.key != res.key:
            return None, f"validates as {good.key}, but is stored as {res.key}"
        return good, ""

    def resources_changed(self, resources: list) -> None:
        """The resource store's current resources (the watcher calls this): each document is validated on
        its own, and those that fail are left out (see :meth:`_admit`); the rest are applied."""
        resources = self._admit(list(resources))
        if self._resources_loaded and resources == self._resources:
            return
        with self._wake:
            self._resources = resources
            self._resources_loaded = True
            self._pending.resources = True
            self._changed_locked("resources")

    def health(self) -> tuple[SourceHealth, ...]:
        """Each source's health: the catalog source and the resource store (with rejected documents).

        A source may report more of itself with a ``health()`` of its own (the Consul catalog source's
        hold; the stores', when they have one): its state and detail are used, with the engine's errors."""
        out = []
        for name, source, error, index in (("catalog", self._source, self.source_error, self._catalog_index),
                                           ("resources", self._store, self.store_error, self._store_index)):
            own = None
            report = getattr(source, "health", None)
            if callable(report):
                try:
                    own = report()
                except Exception as exc:  # noqa: BLE001 - status must render whatever a source does
                    log.debug("health() of the %s source failed: %s", name, exc)
            if isinstance(own, StoreHealth):
                own = _as_source_health(name, own)
            if not isinstance(own, SourceHealth):
                own = SourceHealth(name=name, kind=type(source).__name__)
            loaded = self._catalog is not None if name == "catalog" else self._resources_loaded
            state = own.state
            if error:
                state = "error"
            elif state == "starting" and loaded:
                state = "ok"
            rejected = tuple(sorted(self.rejected.items())) if name == "resources" else ()
            out.append(SourceHealth(
                name=name, kind=own.kind or type(source).__name__, state=state, detail=own.detail,
                index=own.index or index or 0, error=error or own.error,
                error_at=self._errors_at.get(name, 0.0) if error else own.error_at,
                rejected=tuple(own.rejected) + rejected))
        return tuple(out)

    def set_settings(self, settings: MeshSettings) -> None:
        """New mesh settings (telemetry, federated bundles): rebuild and push if they change the snapshot.
        To change some settings and keep the others, use :meth:`update_settings` (a read of ``settings``
        followed by this call loses another writer's change made in between)."""
        with self._wake:
            self.settings = settings
            self._pending.settings = True
            self._changed_locked("settings")

    def update_settings(self, change: Callable[[MeshSettings], MeshSettings]) -> None:
        """Replace the settings with ``change(current)``, atomically: two writers of different settings (OIDC
        discovery, federated bundles) never lose each other's change. ``change`` runs under the engine's lock:
        it must be quick and must not call the engine. A result equal to the current settings changes nothing
        (no rebuild)."""
        with self._wake:
            current = self.settings
            updated = change(current)
            if updated is not current and updated != current:
                self.settings = updated
                self._pending.settings = True
                self._changed_locked("settings")

    def _changed_locked(self, reason: str) -> None:
        pending = self._pending
        now = time.monotonic()
        if pending.changes == 0:
            pending.first_at = now
        pending.last_at = now
        pending.changes += 1
        pending.reasons.add(reason)
        self._wake.notify_all()

    # --- the builder ---------------------------------------------------------------------------
    def _take_pending(self) -> _Pending | _Collect | None:
        """Wait for a change, then for its burst to end (quiet window, bounded); the inputs to build. With
        :attr:`gc`, a quiet moment (nothing pending or built for ``GC_QUIET_S``) returns :data:`_COLLECT`."""
        with self._wake:
            while not self._stop.is_set():
                pending = self._pending
                if not pending or self._catalog is None or not self._resources_loaded:
                    if self.gc is None:
                        self._wake.wait()
                        continue
                    now = time.monotonic()
                    quiet_in = self._busy_at + GC_QUIET_S - now if self._gc_owed else self.gc.due_in()
                    if quiet_in <= 0 and not self._connecting:
                        self._gc_owed = False
                        return _COLLECT
                    self._wake.wait(max(quiet_in, 0.01))
                    continue
                now = time.monotonic()
                due = min(pending.last_at + self.quiet_s, pending.first_at + self.max_delay_s)
                if now < due:
                    self._wake.wait(due - now)
                    continue
                pending = self._take_locked()
                return pending
        return None

    def flush(self) -> bool:
        """Build what is pending now, in the caller's thread, without waiting for the coalescing
        window (for tests and tools that drive an engine whose threads were not started)."""
        with self._wake:
            pending = self._pending
            if not pending or self._catalog is None or not self._resources_loaded:
                return False
            pending = self._take_locked()
        self._run(pending)
        return True

    def _build_loop(self) -> None:
        while True:
            pending = self._take_pending()
            if pending is None:
                return
            if isinstance(pending, _Collect):
                assert self.gc is not None
                self.gc.quiet()
                continue
            self._run(pending)
            if self.gc is not None:
                with self._wake:
                    self._gc_owed, self._busy_at = True, time.monotonic()
                if self.gc.due_in() <= 0:  # never quiet for FULL_AT_MOST_S: the overdue full collection now
                    self.gc.full()

    def _run(self, pending: _Pending) -> None:
        reason = "+".join(sorted(pending.reasons))
        with self._rebuilding:  # one rebuild at a time (the builder thread, or flush)
            try:
                with self.tracing.span(f"{reason} change", reason=reason) as cause:
                    self._rebuild(pending, reason, cause)
            except Exception as exc:  # noqa: BLE001 - the builder must outlive a bug in one rebuild
                self._build_failures += 1
                delay = min(RETRY_FIRST_S * 2 ** (self._build_failures - 1), RETRY_MAX_S)
                self._record_error("build", f"rebuild for {reason} change failed: {type(exc).__name__}: {exc}")
                if self.metrics is not None:
                    self.metrics.build_errors.inc()
                log.error("rebuild failed reason=%s error=%s: %s; the fleet keeps its last good config, retrying in "
                          "%.0fs (traceback at DEBUG level)", reason, type(exc).__name__, exc, delay)
                log.debug("rebuild failed reason=%s", reason, exc_info=True)
                with self._wake:  # the sources' hints since the last good snapshot are lost: compare all next time
                    retry = self._pending
                    retry.catalog = retry.resources = retry.settings = True
                    retry.hint = None
                    # retried after a backoff, not in a loop; a new change (the fix, maybe) comes sooner
                    retry.first_at = retry.last_at = time.monotonic() + delay - self.max_delay_s
                    retry.reasons.add("retry")
            else:
                self._build_failures = 0
                self.build_error = ""

    def _rebuild(self, pending: _Pending, reason: str, cause) -> None:
        """Make the next snapshot and rebuild the proxies it reaches. A change that comes due while a
        long pass runs (its quiet window or bound passed) is taken in between two proxies: its own
        proxies go first, the rest of the pass continues from the newer snapshot."""
        step = self._next_snapshot(pending, reason, cause)
        if step is None:
            return
        snap, seq, targets = step
        made = [snap]
        queue = list(targets)
        while queue:
            if self._stop.is_set():
                return
            self._yield_to_connections()
            node = queue.pop(0)
            self._publish(node, snap, seq)
            if self.incremental and queue:
                more = self._take_due()
                if more is not None:
                    step = self._next_snapshot(more, "+".join(sorted(more.reasons)), cause)
                    if step is not None:
                        snap, seq, first = step
                        made.append(snap)
                        queued = set(first)
                        queue = first + [n for n in queue if n not in queued]
        self.ready.set()
        if self._on_snapshot:
            for each in made:
                self._on_snapshot(each)

    def _take_locked(self) -> _Pending:
        """Take the pending change with the inputs it describes (call with the lock held)."""
        pending = self._pending
        pending.inputs = (self._catalog, self._resources, self.settings)
        self._pending = _Pending()
        return pending

    def _yield_to_connections(self) -> None:
        """Hold back while a newly connected proxy is being built, at most :data:`CONNECT_PRIORITY_S`."""
        with self._wake:
            deadline = time.monotonic() + CONNECT_PRIORITY_S
            while self._connecting and not self._stop.is_set():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self._wake.wait(remaining)

    def _take_due(self) -> _Pending | None:
        """The pending change if its coalescing window is over (without waiting), else None."""
        with self._lock:
            pending = self._pending
            if not pending:
                return None
            now = time.monotonic()
            if now < min(pending.last_at + self.quiet_s, pending.first_at + self.max_delay_s):
                return None
            pending = self._take_locked()
            return pending

    def _next_snapshot(self, pending: _Pending, reason: str, cause) -> tuple[MeshSnapshot, int, list[str]] | None:
        """Swap in the snapshot for ``pending``; its sequence number and the proxies it reaches
        (None: nothing changed)."""
        started = time.monotonic()
        with self._lock:
            old = self.snapshot
        catalog, resources, settings = pending.inputs
        assert catalog is not None
        with self.tracing.span("snapshot rebuild") as span:
            if old is None or not self.incremental:
                snap = MeshSnapshot.build(catalog, resources, self.trust_domain, settings)
                change = SnapshotChange(full=True) if old is None or snap.hash != old.hash else SnapshotChange()
            else:
                snap, change = old.update(catalog=catalog, resources=resources if pending.resources else None,
                                          settings=settings, changed_services=pending.hint if pending.catalog else None)
            if span is not None:
                span.set_attribute("meshcore.version", snap.hash)
                cause.set_attribute("meshcore.changed", bool(change))
        snapshot_s = time.monotonic() - started
        if self.metrics is not None:
            self.metrics.snapshot_seconds.observe(snapshot_s)
            self.metrics.coalesced_changes.observe(pending.changes)
        if not change:
            if snap is not old:
                with self._lock:
                    self.snapshot = snap  # the same content in fresh objects
            return None
        keys = change_keys(change, old, snap) if self.incremental else ChangeKeys(True, frozenset(), ())
        dropped: frozenset[Keyed] = frozenset()
        memo = None
        if self.incremental:
            with self._lock:
                previous = self._memo
                unused, self._unused = self._unused, set()
            if previous is None:
                memo = SharedMemo(snap)
            else:
                memo, dropped = previous.carry(snap, keys, self._in_use, unused)
        with self._lock:
            self._seq += 1
            seq = self._seq
            self.snapshot = snap
            self._memo, self._memo_seq = memo, seq
            states = list(self.proxies.items())
            targets = []
            for node, state in states:
                if keys.reaches(state.deps) or not state.edited.isdisjoint(dropped):
                    state.reached_seq = seq
                    if keys.reaches(state.gen_deps):
                        state.gen_reached_seq = seq
                    targets.append(node)
                elif not state.shared.isdisjoint(dropped):
                    targets.append(node)  # only a shared entry it uses changed: re-assembled
            targets = self._connected_only(targets)
            reached = set(targets)
            for node, state in states:
                # A proxy the change does not reach, current as of the old snapshot, is current as of
                # this one (its config would be byte-identical): ``built_hash`` says so (canaries wait on it).
                if node not in reached and old is not None and state.built_hash == old.hash and not state.error:
                    state.built_hash = snap.hash
        log.info("new mesh snapshot version=%s reason=%s changes=%d instances=%d resources=%d proxies=%d/%d "
                 "snapshot_ms=%.1f", snap.hash, reason, pending.changes, len(snap.catalog.instances),
                 len(snap.resources), len(targets), len(states), snapshot_s * 1e3)
        return snap, seq, targets

    def _connected_only(self, targets: list[str]) -> list[str]:
        """``targets`` without the proxies that have no open stream (marked ``missed``; lock held)."""
        if not self.track_streams or not targets:
            return targets
        streaming = set(self.cache.connected_nodes())
        now = time.monotonic()
        kept = []
        for node in targets:
            state = self.proxies[node]
            if node in streaming or now - state.connected_at < CONNECT_GRACE_S:
                kept.append(node)
            else:
                state.missed = True
        if len(kept) < len(targets):
            log.info("skipped %d disconnected proxies (rebuilt when they reconnect)", len(targets) - len(kept))
        return kept

    # --- per-proxy build and publish -------------------------------------------------------------
    def _publish(self, node: str, snap: MeshSnapshot, seq: int) -> None:
        with self.tracing.span("proxy build+publish", node=node, version=snap.hash) as span:
            error = self._publish_traced(node, snap, seq)
            if error:
                self.tracing.fail(span, error)

    def _publish_traced(self, node: str, snap: MeshSnapshot, seq: int) -> str:
        """Build and publish ``node``'s config from ``snap``; the error message when not published, else "".

        One build per node at a time (its ``build_lock``); a build for an older snapshot than the one
        the node was last built from is skipped, so a slow builder never publishes stale config."""
        with self._lock:
            state = self.proxies.get(node)
        if state is None:
            return ""
        with state.build_lock:
            info = state.info
            if state.built_seq >= seq and state.built_info == info:
                return state.error
            started = time.monotonic()
            previous = self.cache.get(node)
            with self._lock:
                memo = self._memo if self._memo_seq == seq else None
            if memo is None and self.incremental:
                memo = SharedMemo(snap)  # an older snapshot than the engine's (a slow build): its own memo
            if (memo is not None and state.own_seq >= state.reached_seq and not state.error
                    and state.built_info == info and previous is not None and state.built_seq):
                if self._reassemble(node, state, memo, previous, seq, snap, started):
                    return ""
            session = memo.session() if memo is not None else None
            deps: Deps | None = None
            # Only the plugins' reads (or an entry a plugin edited) changed since the generators ran: re-run
            # the plugins on a copy of the generators' output, as of this snapshot's shared entries.
            replug = (self.incremental and state.generated is not None and state.gen_seq >= state.gen_reached_seq
                      and not state.error and state.built_info == info and bool(state.built_seq))
            if self.metrics is not None:
                (self.metrics.proxy_policy_reruns if replug else self.metrics.proxy_builds).inc()
            try:
                if not self.incremental:
                    resources = build_proxy(snap, info, session)
                else:
                    if replug:
                        assert state.generated is not None and state.gen_deps is not None
                        gen_deps, generated = state.gen_deps, state.generated.copy(session)
                    else:
                        gen_view = RecordingSnapshot(snap)
                        generated = generate_proxy(cast(MeshSnapshot, gen_view), info, session)
                        gen_deps = gen_view.deps()
                        state.generated = Generated.keep(generated, session)
                        state.gen_deps = gen_deps
                    plugin_view = RecordingSnapshot(snap)
                    resources = shape_proxy(cast(MeshSnapshot, plugin_view), info, generated, session)
                    edited = [e.deps for e in session.edited.values()] if session is not None else []
                    deps = merge_deps(gen_deps, [plugin_view.deps(), *edited])
                    if session is not None:
                        self._use_shared(state, session.used, frozenset(session.edited))
                    state.gen_seq = seq
                state.own_seq = seq
                published = publish(self.cache, node, resources)
            except Exception as exc:  # noqa: BLE001 - one proxy's failure (even a bug) fails that proxy only
                if self.metrics is not None:
                    self.metrics.build_seconds.observe(time.monotonic() - started)
                    self.metrics.build_errors.inc()
                expected = isinstance(exc, (XdsError, MeshError))
                with self._lock:
                    state.error = str(exc) if expected else (
                        f"building its config failed unexpectedly ({type(exc).__name__}: {exc}); a meshcore bug: "
                        f"the traceback is in the control plane's log at DEBUG level (node={node})")
                    state.deps = deps  # a rejected config is rebuilt when what it read changes
                    state.built_seq, state.built_info = seq, info
                log.error("config for node=%s not published, it keeps its last good config: %s", node, state.error)
                if not expected:
                    log.debug("build of node=%s failed", node, exc_info=True)
                return state.error
            pushed = previous is None or previous.version != published.version
            if self.metrics is not None:
                self.metrics.build_seconds.observe(time.monotonic() - started)
                if pushed:
                    self.metrics.proxy_pushes.inc()
                    self.metrics.config_published(node, started)
                    if self.cache.synced(node):  # the ACK raced ahead of us
                        self.metrics.config_synced(node)
            with self._lock:
                state.error = ""
                state.deps = deps
                state.built_seq, state.built_info = seq, info
                state.built_hash = snap.hash
                state.published_at = time.time()
        log.debug("published node=%s version=%s in %.1f ms", node, snap.hash, (time.monotonic() - started) * 1e3)
        return ""

    def _use_shared(self, state: ProxyState, shared: frozenset[Keyed], edited: frozenset[Keyed]) -> None:
        """Record the shared entries ``state``'s proxy now uses (and its reference counts in ``_in_use``)."""
        with self._lock:
            before, after = state.shared | state.edited, shared | edited
            for keyed in after - before:
                self._in_use[keyed] += 1
                self._unused.discard(keyed)
            for keyed in before - after:
                left = self._in_use[keyed] - 1
                if left > 0:
                    self._in_use[keyed] = left
                else:
                    del self._in_use[keyed]
                    self._unused.add(keyed)
            state.shared, state.edited = shared, edited

    def _reassemble(self, node: str, state: ProxyState, memo: SharedMemo, previous: ProxySnapshot, seq: int,
                    snap: MeshSnapshot, started: float) -> bool:
        """Publish ``node``'s last config with its shared entries as of ``memo`` (no per-proxy generation);
        False (a full build is needed) when an entry is missing from it or invalid. Call with its build lock."""
        replacements: list[Prepared] = []
        for keyed in state.shared:
            entry = memo.entry(keyed)
            if entry.problems:
                return False
            replacements.append(entry.prepared)
        try:  # only the types whose entries changed are re-versioned (an endpoint change: EDS alone)
            assembled = previous.replaced(replacements)
        except KeyError:
            return False
        pushed = assembled.version != previous.version and self.cache.set(node, assembled)
        if self.metrics is not None:
            self.metrics.proxy_reassemblies.inc()
            if pushed:
                self.metrics.proxy_pushes.inc()
                self.metrics.config_published(node, started)
                if self.cache.synced(node):
                    self.metrics.config_synced(node)
        with self._lock:
            state.built_seq = seq
            state.built_hash = snap.hash
            if pushed:
                state.published_at = time.time()
        log.debug("re-assembled node=%s version=%s in %.1f ms", node, assembled.version,
                  (time.monotonic() - started) * 1e3)
        return True

    def proxy_connected(self, info: ProxyInfo) -> None:
        """An Envoy opened an ADS stream: remember what it told us and build its config now, in the
        caller's thread (never queued behind a rebuild of the fleet)."""
        with self._lock:
            current = self.proxies.get(info.node)
            now = time.monotonic()
            if current is not None and current.info == info and current.built_seq and not current.missed:
                current.connected_at = now
                return
            if current is None:
                # Copy on write: status pages iterate ``proxies`` without the lock, never mid-insert.
                self.proxies = {**self.proxies, info.node: ProxyState(info=info, connected_at=now)}
            else:
                current.info = info
                current.connected_at = now
                current.missed = False
                current.built_seq = 0  # rebuilt from the current snapshot even if it was built from it
                current.reached_seq = current.gen_reached_seq = self._seq
            snap, seq = self.snapshot, self._seq
        if snap is None:
            return  # the first snapshot builds every proxy known by then
        with self._wake:
            self._connecting += 1
        try:
            with self.tracing.span("proxy connected", node=info.node):
                for _ in range(3):
                    self._publish(info.node, snap, seq)
                    with self._lock:  # a snapshot swapped in meanwhile may not have counted this proxy in
                        if self._seq == seq:
                            return
                        snap, seq = self.snapshot, self._seq
                    if snap is None:
                        return
        finally:
            with self._wake:
                self._connecting -= 1
                self._gc_owed, self._busy_at = True, time.monotonic()
                self._wake.notify_all()

    def build_for(self, node: str) -> dict | None:
        """The resources the engine would publish for ``node`` now (for ``meshctl proxy-config``)."""
        with self._lock:
            state = self.proxies.get(node)
            snap = self.snapshot
        if state is None or snap is None:
            return None
        return build_proxy(snap, state.info)

    def deps_of(self, node: str) -> Deps | None:
        """What ``node``'s last build read (None: not built yet, or built in full-rebuild mode)."""
        with self._lock:
            state = self.proxies.get(node)
            return state.deps if state is not None else None

    def catalog(self) -> Catalog | None:
        with self._lock:
            return self._catalog

    def describe(self) -> dict[str, Any]:
        """The engine's mode and coalescing bounds (for status pages and benchmarks)."""
        return {"incremental": self.incremental, "quiet_ms": self.quiet_s * 1e3, "max_delay_ms": self.max_delay_s * 1e3}
