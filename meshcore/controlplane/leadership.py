"""Leader election for the control plane's singleton work, by a Consul session lock.

Every replica serves xDS, signs CSRs and answers the operator API; only the work that must happen once
per mesh (CA root rotation steps, canary controllers, alert notifications, cleanup of expired tokens)
runs on one replica, the leader. Election follows Consul's leader-election guide, with no consensus
of meshcore's own:

* each replica creates a session (``TTL`` = ``--leader-lock-ttl``, ``LockDelay`` = ``--leader-lock-delay``,
  ``Behavior=release``) bound to its node's ``serfHealth`` check and, when the replica is registered, to
  its own service check: a replica whose health check fails loses its session, and the lock, in Consul;
* it tries ``PUT <key>?acquire=<session>`` with its identity as the value; the holder is the leader;
* everybody watches the key with blocking queries: a free key (its holder's session invalidated, or
  released on a clean stop) is tried again; Consul refuses it for the lock-delay after an invalidation,
  so a leader that lost its session has that long to notice before another replica starts;
* the leader renews its session every TTL/2. **A failed renewal, a renewal that did not succeed within
  the TTL, or a watch showing another holder ends leadership at once**, before Consul could expire the
  session (it waits between TTL and 2 x TTL): the singleton work stops first, then the lock is tried again
  with a new session;
* a clean stop ends the work, releases the key (no lock-delay: another replica takes over at once) and
  destroys the session.

With ``--store dir`` (one replica) :class:`AlwaysLeader` leads from the start. The narrow interface
features receive is :class:`~meshcore.controlplane._contexts.Leadership`; :class:`LeaderWork` runs a
function only while this replica leads and stops it when leadership ends.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import consul
import requests
from prometheus_client import CollectorRegistry, Counter, Gauge

from ..catalog._consul_calls import check, consul_errors, raw
from ..catalog._consul_settings import ConsulSettings
from ..errors import ConfigError, ConsulError
from ._contexts import Leadership

log = logging.getLogger("meshcore.controlplane.leadership")

DEFAULT_LOCK_TTL_S = 15.0
DEFAULT_LOCK_DELAY_S = 15.0  # Consul's default lock-delay
LEADER_KEY = "leader"  # under the KV prefix: <prefix>leader
RETRY_MAX_S = 5.0  # backoff ceiling after a Consul error (sessions, acquire)
WATCH_WAIT_S = 10.0  # one blocking query on the key at most this long
# A leader cut off from Consul stops at its first failed renewal: sent at TTL/2 with a TTL/4 timeout, so it
# leads at most this fraction of the TTL past its last good one; a lock-delay at least this long keeps two
# replicas from leading at once (the next one waits for the invalidation, then the lock-delay).
OVERLAP_FRACTION = 0.75


def default_replica_id(port: int | str) -> str:
    """``<host name>-<port>``: unique per host and operator API port, stable across restarts."""
    return f"{socket.gethostname()}-{port}"


def check_lock_settings(ttl: float, delay: float) -> None:
    """Consul's limits: a session TTL of 10s to 24h, a lock-delay of 0 to 60s."""
    if not 10.0 <= ttl <= 86400.0:
        raise ConfigError(f"--leader-lock-ttl {ttl:g}s: Consul accepts session TTLs from 10s to 24h (default 15s)")
    if not 0.0 <= delay <= 60.0:
        raise ConfigError(f"--leader-lock-delay {delay:g}s: Consul accepts a lock-delay from 0s to 60s (default 15s)")


class LeadershipMetrics:
    """``meshcore_leader`` (1 while this replica leads) and ``meshcore_leadership_changes_total{change}``."""

    def __init__(self, registry: CollectorRegistry | None):
        self.leader = Gauge("meshcore_leader", "1 while this control plane replica is the leader (runs the "
                            "singleton work: root rotation steps, canaries, alert notifications, cleanup), else 0.",
                            registry=registry)
        self.changes = Counter("meshcore_leadership_changes", "Times this replica gained (acquired) or lost "
                               "(lost) the leadership.", ["change"], registry=registry)

    def set(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)
        self.changes.labels("acquired" if leading else "lost").inc()


class _Subscribers:
    """Change callbacks, each called as ``fn(is_leader)``; a failing callback is logged and skipped."""

    def __init__(self) -> None:
        self._fns: list[Callable[[bool], None]] = []
        self._lock = threading.Lock()
        self.cond = threading.Condition()

    def add(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        with self._lock:
            self._fns.append(fn)

        def remove() -> None:
            with self._lock:
                if fn in self._fns:
                    self._fns.remove(fn)

        return remove

    def notify(self, leading: bool) -> None:
        with self._lock:
            fns = list(self._fns)
        for fn in fns:
            try:
                fn(leading)
            except Exception:  # noqa: BLE001 - one feature's failure must not keep the others from hearing
                log.exception("leadership change callback %r failed", fn)
        with self.cond:
            self.cond.notify_all()


class AlwaysLeader:
    """The one replica of a ``--store dir`` control plane: leader from the start, never anything else."""

    def __init__(self, replica_id: str, registry: CollectorRegistry | None = None):
        self.replica_id = replica_id
        self._subs = _Subscribers()
        if registry is not None:
            LeadershipMetrics(registry).set(True)

    def is_leader(self) -> bool:
        return True

    def leader(self) -> str:
        return self.replica_id

    def term(self) -> int:
        return 1

    def subscribe(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        return self._subs.add(fn)

    def wait_leader(self, timeout: float | None = None) -> bool:
        return True

    def status(self) -> dict:
        return {"mode": "single", "replica": self.replica_id, "leader": self.replica_id, "is_leader": True}

    def fence(self) -> list[dict]:
        return []

    def start(self) -> AlwaysLeader:
        return self

    def stop(self) -> None:
        pass


class ConsulLeadership:
    """Leadership by a Consul session lock on ``key`` (see the module docstring). ``start()`` runs it;
    ``stop()`` steps down, releases the key and destroys the session."""

    def __init__(self, settings: ConsulSettings, key: str, replica_id: str, *, ttl: float = DEFAULT_LOCK_TTL_S,
                 lock_delay: float = DEFAULT_LOCK_DELAY_S, service_check: Callable[[], str | None] = lambda: None,
                 registry: CollectorRegistry | None = None, clock: Callable[[], float] = time.monotonic):
        if not key or key.startswith("/"):
            raise ConfigError(f"leader key {key!r} must be non-empty and must not start with '/'")
        self.settings = settings
        self.key = key
        self.replica_id = replica_id
        self.ttl = ttl
        self.lock_delay = lock_delay
        self._service_check = service_check  # the replica's own check ("" / None: not registered yet)
        self._clock = clock
        self._metrics = LeadershipMetrics(registry) if registry is not None else None
        if lock_delay < OVERLAP_FRACTION * ttl:
            log.warning("--leader-lock-delay %gs is under %d%% of --leader-lock-ttl %gs: a leader cut off from Consul "
                        "may keep leading for up to %gs after its last renewal, so another replica could start "
                        "before it stopped; keep the lock-delay at least the TTL (the defaults are 15s and 15s)",
                        lock_delay, OVERLAP_FRACTION * 100, ttl, OVERLAP_FRACTION * ttl)
        self._subs = _Subscribers()
        self._lock = threading.RLock()
        self._stopped = threading.Event()
        self._wake = threading.Event()
        self._session: str | None = None
        self._leading = False
        self._term = 0
        self._renewed_at = 0.0  # clock() when the last successful create/renew was *sent*
        self._leader_id = ""
        self._last_error = ""
        self._threads: list[threading.Thread] = []
        # Renewals get a short timeout: a renewal hanging past the TTL must not keep a stale leader leading.
        self._watch_client = settings.client()
        self._renew_client = dataclasses.replace(settings, timeout=max(1.0, ttl / 4)).client()

    # --- the Leadership protocol -------------------------------------------------------------
    def is_leader(self) -> bool:
        with self._lock:
            return self._leading and self._clock() < self._renewed_at + self.ttl

    def leader(self) -> str:
        """The replica holding the lock as last seen ("" while nobody holds it)."""
        with self._lock:
            return self.replica_id if self._leading else self._leader_id

    def term(self) -> int:
        """How many times this replica became leader (0: never); a worker compares it to notice a new term."""
        return self._term

    def subscribe(self, fn: Callable[[bool], None]) -> Callable[[], None]:
        return self._subs.add(fn)

    def wait_leader(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._subs.cond:
            while not self.is_leader() and not self._stopped.is_set():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._subs.cond.wait(left if left is not None else 1.0)
        return self.is_leader()

    def status(self) -> dict:
        with self._lock:
            return {"mode": "consul", "replica": self.replica_id, "leader": self.leader(),
                    "is_leader": self.is_leader(), "key": self.key, "session": self._session or "",
                    "term": self._term, "lock_ttl_s": self.ttl, "lock_delay_s": self.lock_delay,
                    "last_error": self._last_error}

    def fence(self) -> list[dict]:
        """A ``check-session`` of the leader key by this replica's session: a deposed leader's write fails.
        Raises ConsulError when this replica does not lead (nothing to write under its name)."""
        with self._lock:
            session = self._session if self.is_leader() else None
        if session is None:
            raise ConsulError(f"replica {self.replica_id!r} does not hold the leader lock {self.key!r}; "
                              "a leader-only write is refused")
        return [{"KV": {"Verb": "check-session", "Key": self.key, "Session": session}}]

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> ConsulLeadership:
        for name, target in (("leader-election", self._elect), ("leader-renewal", self._renew_loop)):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("leader election key=%s replica=%s lock_ttl=%gs lock_delay=%gs", self.key, self.replica_id,
                 self.ttl, self.lock_delay)
        return self

    def stop(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        was_leading = self._step_down("control plane stopping")
        with self._lock:
            session, self._session = self._session, None
        if session:
            try:
                with consul_errors(self.settings, f"releasing the leader lock {self.key!r}"):
                    if was_leading:
                        self._renew_client.kv.put(self.key, self._value(), release=session)
                    self._renew_client.session.destroy(session)
                log.info("leader lock key=%s released (session %s destroyed)", self.key, session)
            except ConsulError as exc:
                log.warning("could not release the leader lock %s (%s); another replica takes over once Consul "
                            "expires session %s (TTL %gs, then the lock-delay)", self.key, exc, session, self.ttl)
        with self._subs.cond:
            self._subs.cond.notify_all()
        for t in self._threads:  # the election may sit in a blocking query: it returns without acting once it ends
            t.join(timeout=2 if t.name == "leader-renewal" else 0.3)

    # --- internals -----------------------------------------------------------------------------
    def _value(self) -> bytes:
        return json.dumps({"replica": self.replica_id}).encode()

    def _become_leader(self) -> None:
        if self._stopped.is_set():  # stop() ran while the acquire was in flight: give the lock back now
            self._release_after_stop()
            return
        with self._lock:
            if self._leading:
                return
            self._leading = True
            self._term += 1
            self._leader_id = self.replica_id
        log.info("this replica is now the leader replica=%s key=%s term=%d", self.replica_id, self.key, self._term)
        if self._metrics is not None:
            self._metrics.set(True)
        self._wake.set()  # the renewer schedules from the new state
        self._subs.notify(True)

    def _step_down(self, why: str) -> bool:
        """End leadership now (the work's stop events are set before this returns); True when it led."""
        with self._lock:
            if not self._leading:
                return False
            self._leading = False
            if self._leader_id == self.replica_id:
                self._leader_id = ""
        log.warning("leadership lost replica=%s key=%s: %s; singleton work stopped", self.replica_id, self.key, why)
        if self._metrics is not None:
            self._metrics.set(False)
        self._subs.notify(False)
        return True

    def _release_after_stop(self) -> None:
        with self._lock:
            session, self._session = self._session, None
        if session:
            try:
                self._renew_client.kv.put(self.key, self._value(), release=session)
                self._renew_client.session.destroy(session)
            except (consul.ConsulException, requests.RequestException):
                pass  # Consul expires it after its TTL

    def _drop_session(self, why: str) -> None:
        """Forget the session (a new one is made for the next try) and end leadership at once."""
        self._step_down(why)
        with self._lock:
            session, self._session = self._session, None
        if session:
            try:  # best effort: it may already be gone; invalidating it frees the key for the others
                self._renew_client.session.destroy(session)
            except (consul.ConsulException, requests.RequestException):
                pass
        self._wake.set()

    def _create_session(self) -> str:
        body: dict[str, Any] = {"Name": f"meshcore-control-plane leader {self.replica_id}",
                                "TTL": f"{self.ttl:g}s", "LockDelay": f"{self.lock_delay:g}s", "Behavior": "release"}
        service_check = self._service_check()
        if service_check:
            body["NodeChecks"] = ["serfHealth"]
            body["ServiceChecks"] = [{"ID": service_check}]
        doing = f"creating the leader-election session for {self.key!r}"
        sent = self._clock()
        with consul_errors(self.settings, doing):
            resp = check(raw(self._renew_client, "PUT", "/v1/session/create", body=body), self.settings, doing)
        session = json.loads(resp.body)["ID"]
        with self._lock:
            self._session = session
            self._renewed_at = sent
        return session

    def _elect(self) -> None:
        """Hold a session, try the lock whenever it is free, watch it; runs until stop()."""
        failures = 0
        index = 0
        while not self._stopped.is_set():
            try:
                index, holder = self._read(index)  # first: the others learn who leads even without a session
                if self._stopped.is_set():
                    return
                with self._lock:
                    session, leading = self._session, self._leading
                if leading and holder != session:  # released (session invalidated) or taken: stop the work now
                    self._drop_session(f"the leader lock {self.key!r} is " +
                                       ("free: Consul invalidated this replica's session" if holder is None
                                        else f"held by another session ({holder})"))
                    session = None
                if holder is None:  # free: try it (refused during the lock-delay after an invalidation)
                    session = session or self._create_session()
                    if self._stopped.is_set():
                        self._release_after_stop()
                        return
                    with consul_errors(self.settings, f"acquiring the leader lock {self.key!r}"):
                        got = self._watch_client.kv.put(self.key, self._value(), acquire=session)
                    if got and self._session == session:
                        self._become_leader()
                    elif not got:
                        self._stopped.wait(min(1.0, max(0.2, self.lock_delay / 10)))
                    index = 0  # read the key again at once
                failures = 0
                self._last_error = ""
            except Exception as exc:  # noqa: BLE001 - the election must outlive any failure (ConsulError mostly)
                failures += 1
                self._last_error = str(exc)
                delay = min(RETRY_MAX_S, 0.5 * 2 ** (failures - 1))
                if isinstance(exc, ConsulError):
                    log.warning("leader election: %s; retrying in %.1fs", exc, delay)
                else:
                    log.exception("leader election failed unexpectedly; retrying in %.1fs", delay)
                    self._drop_session(f"the election failed unexpectedly ({exc!r})")
                index = 0
                self._stopped.wait(delay)

    def _read(self, index: int) -> tuple[int, str | None]:
        """A blocking read of the key (``index`` 0: at once): (index, holding session or None); updates the leader id."""
        wait = f"{WATCH_WAIT_S:g}s"
        with consul_errors(self.settings, f"watching the leader lock {self.key!r}"):
            new_index, entry = self._watch_client.kv.get(self.key, index=index or None, wait=wait)
        holder = (entry or {}).get("Session") or None
        leader_id = ""
        if holder is not None:
            try:
                leader_id = str(json.loads((entry or {}).get("Value") or b"{}").get("replica") or "")
            except (ValueError, AttributeError):
                leader_id = "?"
        with self._lock:
            if not self._leading:
                self._leader_id = leader_id
        return int(new_index or 0), holder

    def _renew_loop(self) -> None:
        """Renew the session every TTL/2; end leadership at once on a failed renewal or when none succeeded
        within the TTL (Consul may invalidate the session from then on)."""
        while not self._stopped.is_set():
            with self._lock:
                session, renewed_at, leading = self._session, self._renewed_at, self._leading
            if session is None:
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            now = self._clock()
            if leading and now >= renewed_at + self.ttl:
                self._drop_session(f"no session renewal succeeded within the lock TTL ({self.ttl:g}s)")
                continue
            due = renewed_at + self.ttl / 2
            if now < due:
                wake_at = min(due, renewed_at + self.ttl) if leading else due
                self._wake.wait(max(0.05, wake_at - now))
                self._wake.clear()
                continue
            sent = self._clock()
            try:
                with consul_errors(self.settings, f"renewing the leader-election session {session}"):
                    self._renew_client.session.renew(session)
            except Exception as exc:  # noqa: BLE001 - any failed renewal ends leadership; the loop goes on
                self._last_error = str(exc)
                # a 404 (Consul invalidated it: TTL, a failed check, destroyed) or Consul unreachable alike
                self._drop_session(f"renewing session {session} failed ({exc})")
                continue
            with self._lock:
                if self._session == session:
                    self._renewed_at = sent


class LeaderWork:
    """Runs ``work(stop)`` on a thread of its own while this replica leads; leadership lost sets ``stop``
    at once (before the leadership callback returns) and a new term starts ``work`` again, which resumes
    from the stored state. ``work`` should return soon after ``stop`` is set."""

    def __init__(self, leadership: Leadership, name: str, work: Callable[[threading.Event], None]):
        self._leadership = leadership
        self.name = name
        self._work = work
        self._lock = threading.Lock()
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None
        self._closed = False
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> LeaderWork:
        self._unsubscribe = self._leadership.subscribe(self._changed)
        self._changed(self._leadership.is_leader())
        return self

    def running(self) -> bool:
        with self._lock:
            return self._thread is not None and self._thread.is_alive() and not (self._stop and self._stop.is_set())

    def _changed(self, leading: bool) -> None:
        with self._lock:
            if leading and not self._closed and (self._thread is None or not self._thread.is_alive()
                                                 or (self._stop is not None and self._stop.is_set())):
                stop = self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(stop,), name=f"leader:{self.name}",
                                                daemon=True)
                self._thread.start()
            elif not leading and self._stop is not None:
                self._stop.set()

    def _run(self, stop: threading.Event) -> None:
        try:
            self._work(stop)
        except Exception:  # noqa: BLE001 - logged; the next term starts it again
            log.exception("singleton work %s failed", self.name)

    def stop(self, timeout: float = 2.0) -> None:
        with self._lock:
            self._closed = True
            if self._stop is not None:
                self._stop.set()
            thread = self._thread
        if self._unsubscribe is not None:
            self._unsubscribe()
        if thread is not None:
            thread.join(timeout)


__all__ = ["AlwaysLeader", "ConsulLeadership", "LeaderWork", "LeadershipMetrics", "check_lock_settings",
           "default_replica_id", "DEFAULT_LOCK_DELAY_S", "DEFAULT_LOCK_TTL_S", "LEADER_KEY"]
