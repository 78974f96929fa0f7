"""Progressive delivery in the control plane: the IO around :mod:`meshcore.traffic.canary`.

One thread per active canary. Each thread measures the canary subset from the Envoys that call the
service (their admin ``/stats/prometheus``: the ``outbound:<service>|<caller>|<canary>`` clusters,
parsed with :mod:`meshcore.observe.graph`), asks the pure state machine what to do, writes the new
weights with the ``meshctl traffic split`` workflow (:func:`meshcore.traffic.workflows.split`) into the
resource store, and records every decision. Running here, not in ``meshctl``, a canary survives the
CLI exiting, any CLI can watch it, and each run's state is recorded in the control plane's state backend
(:mod:`meshcore.state`) at ``canaries/<service>.json``: a file in the state directory with one replica, a key
under ``meshcore/state/`` in Consul KV with ``--store consul``. A restarted control plane, or a new leader
replica, resumes a run from there where the last leader left it.

Operator API (added to the operator router by :func:`add_routes`)::

    POST /v1/canaries                    {"service", "to", "from"?, "steps"?, "interval"?, "max_error_rate"?,
                                          "max_p99"?, "min_requests"?, "max_holds"?, "label"?, "namespace"?}
    GET  /v1/canaries                    every canary's state (running and finished)
    GET  /v1/canaries/{service}          one canary's state with its decision history
    POST /v1/canaries/{service}/abort    all traffic back to the stable subset, canary marked aborted

The IO edges are small Protocols (:class:`TrafficWriter`, :class:`StatsProbe`), so the controller runs in
tests with a plain function in place of the Envoys.
"""

from __future__ import annotations

import builtins
import json
import logging
import re
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Callable, Protocol

from ..api.operator import CanaryDecision, CanaryRequest, CanarySpecView, CanaryStatus
from ..errors import CanaryConflict, CanaryNotFound, ConfigError, MeshError, StoreError, ValidationError
from ..observe.collector import catalog_address, fetch_text
from ..observe.graph import CLUSTER_PREFIXES, EnvoyStats, parse_envoy_prometheus, quantile_from_buckets
from ..policies.destination_rule import schema as dr_kind
from ..policies.virtual_service import schema as vs_kind
from ..resources.loader import validate_document, validate_set
from ..resources.model import Resource
from ..state import Entry, PrefixWatcher, Put, StateBackend
from ..traffic import canary as sm
from ..traffic import workflows as wf
from ._http import Request

if TYPE_CHECKING:
    from ..resources.store import ResourceStore
    from ._contexts import Leadership, MeshView
    from .operators import AuthorizingRouter

log = logging.getLogger("meshcore.controlplane.canary")

STATE_PREFIX = "canaries/"  # state key of a run: canaries/<service>.json (the file <state-dir>/canaries/<service>.json)
SYNC_TIMEOUT_S = 5.0
SCRAPE_TIMEOUT_S = 3.0
_SERVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,126}")

# --- measuring -------------------------------------------------------------------------------------------


def scrape_envoy(admin: str, timeout: float = SCRAPE_TIMEOUT_S) -> EnvoyStats:
    """One Envoy's outbound stats from its admin ``/stats/prometheus``."""
    url = f"http://{admin}/stats/prometheus"
    try:
        return parse_envoy_prometheus(fetch_text(url, timeout))  # no redirects followed
    except MeshError as exc:
        raise MeshError(f"cannot scrape Envoy stats at {url} ({exc})") from exc


def subset_clusters(stats: EnvoyStats, service: str, subset: str) -> dict:
    """The clusters of ``stats`` that send to ``subset`` of ``service`` (one per calling local service)."""
    out = {}
    for name, series in stats.clusters.items():
        parts = name[len(CLUSTER_PREFIXES[0]):].split("|")
        if len(parts) == 3 and parts[0] == service and parts[2] == subset:
            out[name] = series
    return out


class StatsProbe(Protocol):
    """Measures the canary subset: ``reset()`` starts a span, ``measure()`` reports since then."""

    def reset(self) -> None: ...

    def measure(self) -> sm.Measurement: ...


class EnvoyProbe:
    """A :class:`StatsProbe` over the admin endpoints of the Envoys that call the service.

    ``callers()`` answers ``{node: admin host:port}`` (asked at every scrape: proxies come and go).
    A node first seen after ``reset()`` gets that first scrape as its baseline, so nothing from before
    the span is counted; a counter that went down (Envoy restarted) counts from zero.
    """

    def __init__(self, service: str, subset: str, callers: Callable[[], dict[str, str]],
                 scrape: Callable[[str], EnvoyStats] = scrape_envoy, clock: Callable[[], float] = time.monotonic):
        self.service, self.subset = service, subset
        self._callers, self._scrape, self._clock = callers, scrape, clock
        self._base: dict[str, dict] = {}
        self._since = clock()
        self._failed: set[str] = set()

    def _scrape_all(self) -> dict[str, dict]:
        out = {}
        for node, admin in sorted(self._callers().items()):
            try:
                out[node] = subset_clusters(self._scrape(admin), self.service, self.subset)
                self._failed.discard(node)
            except MeshError as exc:
                if node not in self._failed:
                    log.warning("canary service=%s node=%s stats skipped: %s", self.service, node, exc)
                self._failed.add(node)
        return out

    def reset(self) -> None:
        self._base = self._scrape_all()
        self._since = self._clock()

    def measure(self) -> sm.Measurement:
        now = self._scrape_all()
        total = errors = 0.0
        buckets: dict[float, float] = {}
        for node, clusters in now.items():
            if node not in self._base:
                self._base[node] = clusters  # first seen now: baseline, counts from here
                continue
            for name, series in clusters.items():
                base = self._base[node].get(name)
                delta = series.minus(base) if base is not None else series
                total += delta.total
                errors += delta.errors
                for le, count in delta.buckets.items():
                    buckets[le] = buckets.get(le, 0.0) + count
        return sm.Measurement(requests=int(total), errors=int(errors), p99_ms=quantile_from_buckets(0.99, buckets),
                              seconds=self._clock() - self._since)


# --- writing weights -------------------------------------------------------------------------------------


class TrafficWriter(Protocol):
    """Puts a weight split into effect: ``apply(spec, {"v1": 90, "v2": 10})``; MeshError when it cannot."""

    def current_default(self, service: str) -> str: ...

    def subset_labels(self, service: str, subset: str, label: str) -> dict[str, str]: ...

    def apply(self, spec: sm.CanarySpec, weights: dict[str, int]) -> None: ...


def _first(resources: list[Resource], kind: str, matches: Callable[[dict], bool]) -> Resource | None:
    chosen = sorted((r for r in resources if r.kind == kind and matches(r.spec or {})),
                    key=lambda r: (r.namespace, r.name))
    return chosen[0] if chosen else None


def _to_resource(doc: dict) -> Resource:
    resource, errors = validate_document(doc, "canary", 0)
    if errors or resource is None:
        raise ValidationError(errors, summary="the canary's traffic change is invalid; nothing applied")
    return resource


class StoreTrafficWriter:
    """Writes splits into the control plane's resource store, make-before-break.

    New subsets go into the DestinationRule first; the VirtualService follows once every connected
    proxy ACKed the new clusters (or after ``sync_timeout``), so no request is routed to a cluster an
    Envoy does not have yet.
    """

    def __init__(self, store, synced: Callable[[Resource], bool] = lambda r: True,
                 sync_timeout: float = SYNC_TIMEOUT_S):
        self.store, self._synced, self.sync_timeout = store, synced, sync_timeout

    def _docs(self, service: str) -> tuple[list[Resource], dict | None, dict | None]:
        stored = self.store.list()
        dr = _first(stored, dr_kind.KIND_NAME, lambda s: s.get("host") == service)
        vs = _first(stored, vs_kind.KIND_NAME, lambda s: service in (s.get("hosts") or ()))
        return stored, dr.to_document() if dr else None, vs.to_document() if vs else None

    def current_default(self, service: str) -> str:
        """What the service's default route sends to now: ``*``, ``v1`` or ``v1=90,v2=10``."""
        _, _, vs = self._docs(service)
        for rule in reversed(((vs or {}).get("spec") or {}).get("http") or []):
            if not rule.get("match"):
                return wf.describe(rule["route"])
        return wf.WHOLE_SERVICE

    def subset_labels(self, service: str, subset: str, label: str) -> dict[str, str]:
        _, dr, _ = self._docs(service)
        for s in ((dr or {}).get("spec") or {}).get("subsets") or []:
            if s.get("name") == subset:
                return dict(s.get("labels") or {})
        return {label: subset}

    def apply(self, spec: sm.CanarySpec, weights: dict[str, int]) -> None:
        stored, dr, vs = self._docs(spec.service)
        plan = wf.split(spec.service, weights, dr, vs, label=spec.label, namespace=spec.namespace)
        changed = [_to_resource(d) for d in plan.documents()]
        if not changed:
            return
        merged = {r.key: r for r in stored}
        merged.update({r.key: r for r in changed})
        problems = validate_set(list(merged.values()))
        if problems:
            raise ValidationError(problems, summary=f"{spec.service}: the canary's split would be invalid")
        try:
            if plan.dr_changed and plan.vs_changed and len(changed) == 2:
                self.store.apply([changed[0]])
                self._wait(changed[0])
                self.store.apply([changed[1]])
            else:
                self.store.apply(changed)
        except StoreError as exc:
            raise StoreError(f"{spec.service}: cannot store the canary's split {weights}: {exc}") from exc
        self._wait(changed[-1])  # the new split is in effect when the next measurement starts

    def _wait(self, resource: Resource) -> None:
        deadline = time.monotonic() + self.sync_timeout
        while time.monotonic() < deadline:
            if self._synced(resource):
                return
            time.sleep(0.05)
        log.warning("canary: not every proxy ACKed %s within %.0fs; routing anyway", resource.key, self.sync_timeout)


# --- the controller --------------------------------------------------------------------------------------


class CanaryController:
    """Runs canaries: one thread each, every run's state recorded in a state backend at
    ``<prefix><service>.json`` (default ``canaries/``: the state directory's ``canaries/`` with one replica,
    Consul KV with several).

    With a ``leadership`` handle the loops run only on the leader replica: losing leadership stops every loop
    at once (their state stays as recorded: ``running``), gaining it reloads the runs from the backend and
    resumes them, so a new leader continues a run where the old one left it. Each record the leader writes
    goes behind ``fence()`` (the leader key's ``check-session``): a deposed leader cannot overwrite the new
    one's. A replica that does not lead follows the records (a blocking query on the prefix when the backend
    is shared), so ``GET /v1/canaries`` answers the same everywhere; it refuses to start or abort one and names
    the leader (the leader's loop owns a run's next step)."""

    def __init__(self, backend: StateBackend, writer: TrafficWriter,
                 probe_for: Callable[[sm.CanarySpec], StatsProbe], *, prefix: str = STATE_PREFIX,
                 ready: Callable[[], bool] = lambda: True, clock: Callable[[], float] = time.time,
                 instances_with: Callable[[str, dict[str, str]], int] | None = None,
                 check_every: float | None = None, leadership: Leadership | None = None,
                 fence: Callable[[], builtins.list[dict]] | None = None):
        self.backend = backend
        self.prefix = prefix
        self._leadership = leadership
        self._fence = fence if fence is not None else (leadership.fence if leadership is not None else None)
        self.writer, self.probe_for, self._ready, self._clock = writer, probe_for, ready, clock
        self._instances_with = instances_with
        self._check_every = check_every
        self._states: dict[str, sm.CanaryState] = {}
        self._locks: dict[str, threading.RLock] = {}
        self._stops: dict[str, threading.Event] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._watcher: PrefixWatcher | None = None
        self._taking_over = threading.Event()
        try:
            self._load()
        except MeshError as exc:  # Consul unreachable at start: the watch below (or gaining leadership) reads them
            log.error("canary runs at %s not readable yet (%s); reading them again in the background",
                      self.backend.location, exc)
        if self.backend.shared:  # follow the leader's records while this replica does not lead
            self._watcher = PrefixWatcher(self.backend, self.prefix, self._followed, name="canaries")
            self._watcher.start(first_read=False)
        if leadership is not None:
            leadership.subscribe(self._leadership_changed)

    # --- leadership ----------------------------------------------------------------------------
    def _leading(self) -> bool:
        return self._leadership is None or self._leadership.is_leader()

    def _require_leader(self, doing: str) -> None:
        lead = self._leadership
        if lead is None or lead.is_leader():
            return
        leader = lead.leader()
        where = f"the leader replica {leader!r}" if leader else "the leader replica (none now: one is being elected)"
        raise CanaryConflict(f"cannot {doing} on replica {lead.replica_id!r}: canaries are run by {where}; retry "
                             "against the leader (`meshctl status` names it) or in a few seconds")

    def _leadership_changed(self, leading: bool) -> None:
        if not leading:  # stop every loop now; each one's state stays recorded for the next leader
            self._taking_over.set()
            for ev in list(self._stops.values()):
                ev.set()
            return
        if self._stopped.is_set():
            return
        self._taking_over.set()  # a take-over still retrying from an earlier term ends
        self._taking_over = stop = threading.Event()  # losing leadership again (or stop()) ends its retries
        threading.Thread(target=self._take_over, args=(stop,), name="canary-take-over", daemon=True).start()

    def _take_over(self, stop: threading.Event) -> None:
        """On gaining leadership: read the runs as the last leader recorded them (this replica or another),
        retrying while the backend cannot be read, and resume those still progressing."""
        delay = 0.5
        while not stop.is_set() and not self._stopped.is_set() and self._leading():
            try:
                with self._lock:
                    self._load()
            except MeshError as exc:
                log.error("leader: cannot read the canary runs at %s (%s); retrying in %.0fs",
                          self.backend.location, exc, delay)
                stop.wait(delay)
                delay = min(10.0, delay * 2)
                continue
            resumed = self.resume_all()
            if resumed:
                log.info("leader: resumed canaries %s", ", ".join(sorted(resumed)))
            return

    # --- persistence ---------------------------------------------------------------------------
    def _key(self, service: str) -> str:
        return f"{self.prefix}{service}.json"

    def _parse(self, entries: builtins.list[Entry]) -> dict[str, sm.CanaryState]:
        out = {}
        for e in entries:
            name = e.key[len(self.prefix):]
            if "/" in name or not name.endswith(".json"):
                continue
            try:
                st = sm.CanaryState.from_dict(json.loads(e.value))
            except (ValueError, KeyError, TypeError, MeshError) as exc:
                log.error("canary state %s key %s unreadable, ignored (remove it to silence this): %s",
                          self.backend.location, e.key, exc)
                continue
            out[st.spec.service] = st
        return out

    def _adopt(self, states: dict[str, sm.CanaryState]) -> None:
        for service, st in states.items():
            self._states[service] = st
            self._locks.setdefault(service, threading.RLock())

    def _load(self) -> None:
        """Read every run from the backend (a consistent read: what the last leader recorded)."""
        self._adopt(self._parse(self.backend.list(self.prefix)))

    def _followed(self, entries: builtins.list[Entry]) -> None:
        """The runs changed in the shared state: take them, unless this replica leads (then it writes them)."""
        with self._lock:
            if self._leading() and self._states:
                return  # the leader writes them; it read them all when it started leading
            self._adopt(self._parse(entries))

    def _save(self, st: sm.CanaryState) -> None:
        value = (json.dumps(st.to_dict(), indent=2, sort_keys=True) + "\n").encode()
        guard = self._fence() if self._fence is not None else []  # ConsulError when this replica does not lead
        if not self.backend.put_all([Put(self._key(st.spec.service), value)], guard=guard):
            raise StoreError(f"canary {st.spec.service}: {self.backend.location} refused the record (this replica "
                             "no longer holds the leader lock); the next leader resumes from the last one")

    def _record(self, service: str, new: sm.CanaryState) -> None:
        self._save(new)  # recorded first: what is in memory is what the next leader will see
        self._states[service] = new
        d = new.decisions[-1]
        level = logging.WARNING if d.action in (sm.ROLLBACK, sm.ABORT) else logging.INFO
        log.log(level, d.log_line(service))

    # --- API -----------------------------------------------------------------------------------
    def list(self) -> builtins.list[CanaryStatus]:
        with self._lock:
            return [status_of(self._states[s]) for s in sorted(self._states)]

    def get(self, service: str) -> CanaryStatus:
        with self._lock:
            st = self._states.get(service)
        if st is None:
            raise CanaryNotFound(f"no canary for {service!r}; start one with `meshctl canary start {service} --to SUBSET`")
        return status_of(st)

    def start(self, spec: sm.CanarySpec) -> CanaryStatus:
        """Start a canary: first weight applied now (errors come back to the caller), then its thread runs."""
        service = spec.service
        self._require_leader(f"start a canary for {service}")
        with self._lock:
            running = self._states.get(service)
            if running is not None and not running.finished:
                raise CanaryConflict(f"a canary for {service} is already {running.phase} at {running.weight}%; "
                                    f"watch it with `meshctl canary status {service}` or stop it with "
                                    f"`meshctl canary abort {service}`")
            lock = self._locks.setdefault(service, threading.RLock())
        with lock:
            self._check_instances(spec)
            st = sm.start(spec, self._clock())
            self.writer.apply(spec, st.weights())
            st = replace(st, step_started_at=self._clock())
            with self._lock:
                self._record(service, st)
                self._spawn(service, resumed=False)
        return status_of(st)

    def _check_instances(self, spec: sm.CanarySpec) -> None:
        if self._instances_with is None:
            return
        for subset in (spec.canary, spec.stable):
            labels = self.writer.subset_labels(spec.service, subset, spec.label)
            if not self._instances_with(spec.service, labels):
                sel = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
                raise ConfigError(f"no instance of {spec.service} carries {sel} (subset {subset}); register one in "
                                  f"Consul first (meta {spec.label}: {subset}), or pick another subset")

    def abort(self, service: str, why: str = "aborted by the operator") -> CanaryStatus:
        self._require_leader(f"abort the canary for {service}")
        with self._lock:
            st = self._states.get(service)
            lock = self._locks.get(service)
        if st is None or lock is None:
            raise CanaryNotFound(f"no canary for {service!r}; `meshctl canary status` lists them")
        with lock:
            st = self._states[service]
            if st.finished:
                raise CanaryConflict(f"the canary for {service} already finished ({st.phase}); nothing to abort")
            d = sm.abort(st, self._clock(), why)
            new = sm.apply(st, d)
            self.writer.apply(st.spec, new.weights())
            with self._lock:
                self._record(service, new)
            self._stops.get(service, threading.Event()).set()
        return status_of(new)

    def resume_all(self) -> builtins.list[str]:
        """Restart the threads of canaries that were progressing (after a control plane restart)."""
        if not self._leading():
            return []
        with self._lock:
            resumed = [s for s, st in self._states.items() if not st.finished and s not in self._threads]
            for service in resumed:
                self._spawn(service, resumed=True)
        return resumed

    def stop(self) -> None:
        self._stopped.set()
        self._taking_over.set()
        if self._watcher is not None:
            self._watcher.stop()
        for ev in list(self._stops.values()):
            ev.set()
        for t in list(self._threads.values()):
            t.join(timeout=5)

    # --- the per-canary loop -------------------------------------------------------------------
    def _spawn(self, service: str, resumed: bool) -> None:
        stop = threading.Event()
        self._stops[service] = stop
        t = threading.Thread(target=self._run_safely, args=(service, stop, resumed), name=f"canary-{service}",
                             daemon=True)
        self._threads[service] = t
        t.start()

    def _period(self, spec: sm.CanarySpec) -> float:
        return self._check_every or min(1.0, max(0.2, spec.interval_s / 5))

    def _run_safely(self, service: str, stop: threading.Event, resumed: bool) -> None:
        try:
            self._run(service, stop, resumed)
        except Exception:  # a bug must not silently leave traffic half-shifted: say so loudly
            log.exception("canary service=%s controller failed; traffic stays as it is, abort or restart it",
                          service)
        finally:
            with self._lock:
                if self._threads.get(service) is threading.current_thread():
                    del self._threads[service]

    def _run(self, service: str, stop: threading.Event, resumed: bool) -> None:
        lock = self._locks[service]
        while not self._ready():
            if stop.wait(0.2) or self._stopped.is_set():
                return
        spec = self._states[service].spec
        probe = self.probe_for(spec)
        if resumed:
            with lock:
                st = self._states[service]
                if st.finished:
                    return
                self._apply_retrying(st, st.weights(), stop)
                if stop.is_set() or not self._recorded(service, sm.apply(st, sm.resume(st, self._clock())), stop):
                    return
        probe.reset()
        while not stop.wait(self._period(spec)):
            with lock:
                if stop.is_set() or not self._leading():  # leadership lost: the next leader decides
                    return
                st = self._states[service]
                if st.finished:
                    return
                try:
                    m = probe.measure()
                except MeshError as exc:
                    log.warning("canary service=%s measuring failed, retrying: %s", service, exc)
                    continue
                d = sm.evaluate(st, m, self._clock())
                if d is None:
                    continue
                new = sm.apply(st, d)
                if new.weights() != st.weights() or d.action == sm.PROMOTE:
                    try:
                        self.writer.apply(spec, new.weights())
                    except MeshError as exc:
                        log.error("canary service=%s decision=%s not applied, retrying: %s", service, d.action, exc)
                        continue
                    if not new.finished:
                        new = replace(new, step_started_at=self._clock())
                if not self._recorded(service, new, stop):
                    return
                if new.finished:
                    return
                probe.reset()

    def _recorded(self, service: str, new: sm.CanaryState, stop: threading.Event) -> bool:
        """Record a decision of the loop, retrying while the backend fails and this replica still leads; False
        (the loop ends) once it does not lead (the fence refused the write) or is stopping: the next leader
        resumes the run from its last record and re-applies that record's weights."""
        delay = 1.0
        while True:
            try:
                with self._lock:
                    self._record(service, new)
                return True
            except MeshError as exc:
                if stop.is_set() or self._stopped.is_set() or not self._leading():
                    log.warning("canary service=%s decision=%s not recorded, leadership lost: the next leader "
                                "resumes from the last record (%s)", service, new.decisions[-1].action, exc)
                    return False
                log.error("canary service=%s decision=%s not recorded, retrying in %.0fs: %s", service,
                          new.decisions[-1].action, delay, exc)
                if stop.wait(delay):
                    return False
                delay = min(10.0, delay * 2)

    def _apply_retrying(self, st: sm.CanaryState, weights: dict[str, int], stop: threading.Event) -> None:
        while True:
            try:
                self.writer.apply(st.spec, weights)
                return
            except MeshError as exc:
                log.error("canary service=%s cannot re-apply %s, retrying in 2s: %s", st.spec.service, weights, exc)
                if stop.wait(2):
                    return


# --- the API's types <-> the state machine's -------------------------------------------------------------


def status_of(st: sm.CanaryState) -> CanaryStatus:
    """The wire form of a canary's state (``GET /v1/canaries/{service}``)."""
    spec = st.spec
    return CanaryStatus(
        service=spec.service, phase=st.phase, step=st.step, weight=st.weight, steps=tuple(spec.steps),
        started_at=st.started_at, step_started_at=st.step_started_at, holds=st.holds, reason=st.reason,
        finished_at=st.finished_at, weights=st.weights(),
        spec=CanarySpecView(service=spec.service, canary=spec.canary, stable=spec.stable, steps=tuple(spec.steps),
                            interval_s=spec.interval_s, max_error_rate=spec.max_error_rate,
                            max_p99_ms=spec.max_p99_ms, min_requests=spec.min_requests, max_holds=spec.max_holds,
                            label=spec.label, namespace=spec.namespace),
        decisions=tuple(CanaryDecision(at=d.at, action=d.action, weight=d.weight, next_weight=d.next_weight,
                                       reason=d.reason, requests=d.requests, error_rate=d.error_rate,
                                       p99_ms=d.p99_ms) for d in st.decisions))


def spec_from_body(body: CanaryRequest | dict, default_stable: Callable[[str], str]) -> sm.CanarySpec:
    """A :class:`CanarySpec` from ``POST /v1/canaries`` (its JSON is checked first, naming the field that does
    not fit); ``from`` defaults to the single subset served now."""
    req = body if isinstance(body, CanaryRequest) else CanaryRequest.from_json(body)
    service = req.service
    if not _SERVICE.fullmatch(service):
        raise ConfigError(f"service {service!r}: give the Consul service name, e.g. reviews")
    to = wf.check_subset_name(req.to)
    stable = req.stable
    if not stable:
        current = default_stable(service)
        weights = wf.parse_spec(current) or {}
        others = sorted(((w, k) for k, w in weights.items() if k != to), reverse=True)
        if current == wf.WHOLE_SERVICE or not others:
            raise ConfigError(f"{service} routes to {'every instance' if current == wf.WHOLE_SERVICE else current} "
                              f"now; say which subset is stable: --from v1")
        stable = others[0][1]
    stable = wf.check_subset_name(stable)
    p99 = req.max_p99
    return sm.CanarySpec(
        service=service, canary=to, stable=stable,
        steps=sm.parse_steps(list(sm.DEFAULT_STEPS) if req.steps is None else req.steps),
        interval_s=sm.parse_interval(req.interval),
        max_error_rate=sm.parse_rate(req.max_error_rate),
        max_p99_ms=None if p99 in (None, "") else sm.parse_ms(p99),
        min_requests=_whole("min_requests", req.min_requests, sm.DEFAULT_MIN_REQUESTS),
        max_holds=_whole("max_holds", req.max_holds, sm.DEFAULT_MAX_HOLDS),
        label=req.label or wf.DEFAULT_SUBSET_LABEL,
        namespace=req.namespace or "default",
    )


def _whole(key: str, value: int | str | None, default: int) -> int:
    if value is None:
        return default
    if not str(value).isdigit():
        raise ConfigError(f"--{key.replace('_', '-')} {value!r}: must be a whole number (0 or more)")
    return int(value)


# --- wiring into the control plane -----------------------------------------------------------------------


def _callers_of(mesh: "MeshView", service: str) -> dict[str, str]:
    """``{node: Envoy admin}`` of connected proxies whose node has an instance calling ``service``."""
    catalog = mesh.catalog()
    if catalog is None:
        return {}
    nodes = {i.node for i in catalog.instances if any(u.destination_name == service for u in i.upstreams)}
    connected = set(mesh.connected_nodes())
    out = {}
    for n, st in mesh.proxies().items():
        node = catalog.node(n)  # only the catalog's address of the node, never one the proxy announced
        admin = catalog_address(st.info.admin, node.address if node is not None else None)
        if n in nodes and n in connected and admin:
            out[n] = admin
    return out


def _synced_with(mesh: "MeshView", resource: Resource) -> bool:
    """The mesh snapshot holds ``resource`` as written and every connected proxy ACKed that snapshot."""
    snap = mesh.snapshot()
    if snap is None or resource.canonical_json() not in {r.canonical_json() for r in snap.resources}:
        return False
    proxies = mesh.proxies()
    for node in mesh.connected_nodes():
        state = proxies.get(node)
        if state is None or state.built_hash != snap.hash or not mesh.synced(node):
            return False
    return True


def _instances_with(mesh: "MeshView", service: str, labels: dict[str, str]) -> int:
    catalog = mesh.catalog()
    if catalog is None:
        return 1  # catalog not read yet: do not refuse on that
    return sum(1 for i in catalog.instances_of(service) if all(i.labels.get(k) == v for k, v in labels.items()))


def for_control_plane(state: StateBackend, store: "ResourceStore", mesh: "MeshView",
                      leadership: Leadership | None = None) -> CanaryController:
    """The controller of a control plane: traffic changes go to its ``store``, measurements to the admin
    addresses of the proxies calling the service, its runs in the state backend ``state`` (shared by the
    replicas with ``--store consul``); loops only while leading, records fenced by the leader lock."""
    writer = StoreTrafficWriter(store, synced=lambda r: _synced_with(mesh, r))
    return CanaryController(
        state, writer,
        probe_for=lambda spec: EnvoyProbe(spec.service, spec.canary, lambda: _callers_of(mesh, spec.service)),
        ready=mesh.ready, instances_with=lambda s, labels: _instances_with(mesh, s, labels), leadership=leadership)


def add_routes(r: AuthorizingRouter, *, controller: Callable[[], CanaryController]) -> None:
    """``/v1/canaries`` routes on the operator router (GET read-only, POST admin, as every route), served by
    the controller ``controller()`` returns (the control plane's; a test may swap it)."""

    def create(req: Request) -> CanaryStatus:
        c = controller()
        return c.start(spec_from_body(CanaryRequest.from_json(req.json()), c.writer.current_default))

    r.add("POST", "/v1/canaries", create)
    r.add("GET", "/v1/canaries", lambda req: controller().list())
    r.add("GET", "/v1/canaries/{service}", lambda req: controller().get(req.params["service"]))
    r.add("POST", "/v1/canaries/{service}/abort", lambda req: controller().abort(req.params["service"]))


__all__ = [
    "CanaryConflict", "CanaryController", "EnvoyProbe", "StoreTrafficWriter", "StatsProbe", "TrafficWriter", "CanaryNotFound",
    "add_routes", "for_control_plane", "scrape_envoy", "spec_from_body", "status_of", "subset_clusters",
]
