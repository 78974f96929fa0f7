"""Which control plane replica the agent talks to, and where it goes when that one fails.

Every replica is active (issue 14): any of them answers join, signing, renewal and polls, and serves
xDS. The agent knows them from ``--control-plane`` (one URL or a comma-separated list) and/or from
Consul (``--control-plane-from-consul SERVICE``: the passing instances of that service in the local
Consul agent's health endpoint, followed with blocking queries).

Spreading: each agent orders the replicas by rendezvous (highest random weight) hashing on its node
name, so the fleet spreads evenly, each node's choice is stable, and adding or removing one replica
moves only the nodes that chose it. Failover: a replica whose call fails (unreachable, or a retryable
answer such as 503) is marked down for a jittered exponential delay (tenacity's
``wait_exponential_jitter``: 1 s, 2 s, 4 s ... :data:`MAX_DOWN` plus up to 1 s of jitter) and the call
moves to the next replica at once; a replica that answers is up again. Once a down mark expires the
agent tries its preferred replica again, so load spreads back after a replica returns.

Envoy's ADS (see :mod:`meshcore.agent.bootstrap`) reads the xDS addresses of every known replica from a
file the agent keeps current (file-based EDS for the bootstrap's xDS cluster).

Consul meta of a ``meshcore-control-plane`` instance (each replica registers itself:
:mod:`meshcore.controlplane.replicas`): ``meshcore-api-address`` (the agent API's URL) and
``meshcore-xds-address`` (ADS ``host:port``) are what the agent dials; without them, the service address
(else the node's) with ``meshcore-api-port`` / ``meshcore-xds-port``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import tenacity

from meshcore.errors import ConfigError, ConsulError, MeshError

log = logging.getLogger("meshcore.agent.replicas")

DEFAULT_SERVICE = "meshcore-control-plane"
API_ADDRESS_KEY = "meshcore-api-address"
XDS_ADDRESS_KEY = "meshcore-xds-address"
AGENT_API_PORT_KEY = "meshcore-api-port"
XDS_PORT_KEY = "meshcore-xds-port"

#: A failed replica is skipped for at most this long (plus jitter) before the agent tries it again.
MAX_DOWN = 60.0
#: The Consul watch holds its blocking query this long; on errors it retries with jittered backoff.
CONSUL_WAIT = "60s"


@dataclass(frozen=True)
class Replica:
    """One control plane replica: its agent API URL and, when known, its xDS ``host:port``."""

    url: str
    xds_address: str = ""
    source: str = "config"  # "config" (--control-plane) or "consul"

    @property
    def host(self) -> str:
        return urlsplit(self.url).hostname or ""


def rendezvous_order(node: str, replicas: Iterable[Replica]) -> list[Replica]:
    """``replicas`` ordered by rendezvous hashing on ``node``: stable per node, spread over nodes."""
    def weight(replica: Replica) -> bytes:
        return hashlib.sha256(f"{node}\0{replica.url}".encode()).digest()

    return sorted(replicas, key=weight, reverse=True)


def parse_urls(value: str | Sequence[str]) -> tuple[str, ...]:
    """``"https://a:1, https://b:1"`` or a list of URLs -> the URLs, stripped, deduplicated, in order."""
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for item in items:
        url = item.strip().rstrip("/")
        if url and url not in out:
            out.append(url)
    return tuple(out)


def replicas_from_health(entries: Sequence[Mapping[str, Any]], service: str) -> list[Replica]:
    """Replicas from ``/v1/health/service/<service>?passing`` entries; instances without an agent API
    port in their meta are skipped (logged), as they cannot be reached."""
    out: list[Replica] = []
    for entry in entries:
        svc = entry.get("Service") or {}
        node = entry.get("Node") or {}
        meta = svc.get("Meta") or {}
        host = svc.get("Address") or node.get("Address") or ""
        url_host = f"[{host}]" if ":" in host else host
        api_port = str(meta.get(AGENT_API_PORT_KEY) or "")
        url = str(meta.get(API_ADDRESS_KEY) or "").rstrip("/")
        if not url and host and api_port.isdigit():
            url = f"https://{url_host}:{int(api_port)}"
        if not url.startswith("https://"):
            log.warning("consul service %s instance %s has neither %s (https URL) nor an address and %s meta; "
                        "skipped", service, svc.get("ID", "?"), API_ADDRESS_KEY, AGENT_API_PORT_KEY)
            continue
        xds = str(meta.get(XDS_ADDRESS_KEY) or "")
        xds_port = str(meta.get(XDS_PORT_KEY) or "")
        if not xds and host and xds_port.isdigit():
            xds = f"{url_host}:{xds_port}"
        out.append(Replica(url=url, xds_address=xds, source="consul"))
    return out


ConsulLookup = Callable[[str, str], tuple[list[Replica], str]]
"""``lookup(service, index)``: the passing replicas and Consul's index; with an index, a blocking query."""


def consul_lookup(env: Mapping[str, str] | None = None) -> ConsulLookup:
    """The real lookup: the local Consul agent reached as Consul's CLI does (``CONSUL_HTTP_ADDR`` ...)."""
    from meshcore.catalog._consul_calls import check, consul_errors, raw
    from meshcore.catalog._consul_settings import ConsulSettings

    settings = ConsulSettings.from_env(env)
    client = settings.client()

    def lookup(service: str, index: str) -> tuple[list[Replica], str]:
        params: list[tuple[str, Any]] = [("passing", "1")]
        if index:
            params += [("index", index), ("wait", CONSUL_WAIT)]
        doing = f"listing the passing instances of service {service}"
        with consul_errors(settings, doing):
            response = check(raw(client, "GET", f"/v1/health/service/{service}", params=params), settings, doing)
        try:
            entries = json.loads(response.body or "[]")
        except ValueError as exc:
            raise ConsulError(f"Consul at {settings.address} answered {doing} with no JSON: {exc}") from exc
        headers = {k.lower(): v for k, v in (response.headers or {}).items()}
        return replicas_from_health(entries, service), str(headers.get("x-consul-index", ""))

    return lookup


@dataclass
class _Health:
    failures: int = 0
    down_until: float = 0.0
    last_error: str = ""
    xds_address: str = ""  # learned from the replica's own answers (join, services)


@dataclass
class ReplicaSet:
    """The replicas this agent knows and their health; thread-safe (the loop and the watcher use it)."""

    node: str
    urls: tuple[str, ...] = ()
    consul_service: str = ""
    lookup_factory: Callable[[], ConsulLookup] = consul_lookup
    clock: Callable[[], float] = time.monotonic
    max_down: float = MAX_DOWN
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _from_consul: list[Replica] = field(default_factory=list)
    _last_from_consul: list[Replica] = field(default_factory=list)  # the last non-empty answer
    _consul_loaded: bool = False
    _consul_error: str = ""
    _health: dict[str, _Health] = field(default_factory=dict)
    _current: str = ""
    _watcher: threading.Thread | None = None
    _stopping: threading.Event = field(default_factory=threading.Event)
    _lookup: ConsulLookup | None = None

    def __post_init__(self) -> None:
        if not self.urls and not self.consul_service:
            raise ConfigError("no control plane replica: give --control-plane URL[,URL...] or "
                              "--control-plane-from-consul SERVICE")
        self._wait = tenacity.wait_exponential_jitter(initial=1, max=self.max_down, jitter=1)

    # ---------------------------------------------------------------- what is known

    def replicas(self) -> list[Replica]:
        """Every known replica (configured ones first, then Consul's), xDS addresses filled in."""
        with self._lock:
            return self._replicas_locked()

    def _replicas_locked(self) -> list[Replica]:
        seen: dict[str, Replica] = {}
        for url in self.urls:
            seen[url] = Replica(url=url)
        # Consul listing none passing (every check failing at once, a Consul restored empty) is more likely
        # Consul's trouble than every replica's: the last replicas it listed are tried until it lists some.
        for replica in self._from_consul or self._last_from_consul:
            seen[replica.url] = replica if replica.url not in seen or replica.xds_address else seen[replica.url]
        # A replica without an xDS address from Consul: the one it gave itself, else its host with the
        # xDS port the others use (replicas of one mesh are installed alike).
        ports = [r.xds_address.rpartition(":")[2] for r in seen.values() if r.xds_address]
        ports += [h.xds_address.rpartition(":")[2] for h in self._health.values() if h.xds_address]
        port = ports[0] if ports else ""
        out = []
        for replica in seen.values():
            xds = replica.xds_address or self._health.get(replica.url, _Health()).xds_address
            if not xds and port:
                host = replica.host
                xds = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            out.append(Replica(url=replica.url, xds_address=xds, source=replica.source))
        return out

    def order(self, refresh: bool = True) -> list[Replica]:
        """The replicas to try, in order: those up by rendezvous rank, then those down, soonest back first.
        ``refresh``: read Consul first if it was never read (a call; the loop's other users pass False)."""
        if refresh:
            self.refresh()
        now = self.clock()
        with self._lock:
            ranked = rendezvous_order(self.node, self._replicas_locked())
            up = [r for r in ranked if self._health.get(r.url, _Health()).down_until <= now]
            down = sorted((r for r in ranked if r not in up), key=lambda r: self._health[r.url].down_until)
            return up + down

    @property
    def current(self) -> str:
        """The replica the last successful call went to (else the first one to try)."""
        if self._current:
            return self._current
        order = self.order(refresh=False)
        return order[0].url if order else ""

    def xds_addresses(self) -> list[str]:
        """The xDS ``host:port`` of every known replica (for Envoy's ADS cluster), in rendezvous order."""
        return [r.xds_address for r in self.order(refresh=False) if r.xds_address]

    # ---------------------------------------------------------------- outcomes of calls

    def succeeded(self, replica: Replica) -> None:
        with self._lock:
            health = self._health.setdefault(replica.url, _Health())
            if health.failures:
                log.info("control plane replica %s answers again after %d failures", replica.url, health.failures)
            health.failures, health.down_until, health.last_error = 0, 0.0, ""
            if self._current != replica.url:
                log.info("using control plane replica %s", replica.url, extra={"node": self.node})
                self._current = replica.url

    def failed(self, replica: Replica, error: str) -> float:
        """Mark ``replica`` down; returns for how long (jittered exponential in its consecutive failures)."""
        with self._lock:
            health = self._health.setdefault(replica.url, _Health())
            health.failures += 1
            state = tenacity.RetryCallState(None, None, (), {})  # type: ignore[arg-type]  # only the wait
            state.attempt_number = health.failures
            delay = float(self._wait(state))
            health.down_until = self.clock() + delay
            health.last_error = error
            if self._current == replica.url:
                self._current = ""
        log.warning("control plane replica %s failed (%d in a row), trying another; skipped for %.1fs: %s",
                    replica.url, health.failures, delay, error, extra={"node": self.node})
        return delay

    def learned_xds(self, replica: Replica, xds_address: str) -> None:
        """The replica named its own xDS address in an answer."""
        if xds_address:
            with self._lock:
                self._health.setdefault(replica.url, _Health()).xds_address = xds_address

    # ---------------------------------------------------------------- Consul

    def refresh(self) -> None:
        """Read Consul once if it was never read (later changes come from the watcher thread)."""
        if not self.consul_service or self._consul_loaded:
            return
        try:
            index = self._apply(*self._consul()(self.consul_service, ""))
        except MeshError as exc:
            with self._lock:
                self._consul_error = str(exc)
            log.warning("cannot list control plane replicas in Consul service=%s: %s", self.consul_service, exc)
            return
        self._start_watch(index)

    def _consul(self) -> ConsulLookup:
        if self._lookup is None:
            self._lookup = self.lookup_factory()
        return self._lookup

    def _apply(self, replicas: list[Replica], index: str) -> str:
        with self._lock:
            before = {r.url for r in self._from_consul}
            self._from_consul = replicas
            if replicas:
                self._last_from_consul = replicas
            self._consul_loaded = True
            self._consul_error = ""
        after = {r.url for r in replicas}
        if after != before:
            log.info("control plane replicas from consul service=%s replicas=%s", self.consul_service,
                     ",".join(sorted(after)) or "none passing (trying the last ones listed)")
        return index

    def _start_watch(self, index: str) -> None:
        if self._watcher is None or not self._watcher.is_alive():
            self._watcher = threading.Thread(target=self._watch, args=(index,), name="control-plane-replicas",
                                             daemon=True)
            self._watcher.start()

    def _watch(self, index: str) -> None:
        """The watcher thread: one blocking query on the health endpoint at a time."""
        from meshcore.agent.reconcilers.identity import RetryBackoff

        backoff = RetryBackoff()
        while not self._stopping.is_set():
            try:
                replicas, new_index = self._consul()(self.consul_service, index or "1")
            except MeshError as exc:
                with self._lock:
                    self._consul_error = str(exc)
                delay = backoff.failed()
                log.debug("consul watch of %s failed, again in %.1fs: %s", self.consul_service, delay, exc)
                self._stopping.wait(delay)
                continue
            backoff.succeeded()
            if new_index and new_index == index:
                continue  # the blocking query timed out: nothing changed
            if not new_index.isdigit() or (index.isdigit() and int(new_index) < int(index)):
                new_index = ""  # no index, or it went backwards (Consul restored): start over, as Consul advises
            index = self._apply(replicas, new_index)
            if not new_index:
                self._stopping.wait(1.0)  # no blocking query possible: poll

    def stop(self) -> None:
        self._stopping.set()

    def reconfigure(self, urls: tuple[str, ...], consul_service: str) -> None:
        """New settings (SIGHUP): the configured URLs, and the Consul service (read again at the next call)."""
        with self._lock:
            self.urls = urls
            if consul_service != self.consul_service:
                self.consul_service = consul_service
                self._from_consul, self._last_from_consul = [], []
                self._consul_loaded = False

    def status(self) -> list[dict[str, Any]]:
        """Every known replica with its health, for ``status.json``."""
        now = self.clock()
        with self._lock:
            replicas = rendezvous_order(self.node, self._replicas_locked())
            out = []
            for rank, replica in enumerate(replicas):
                health = self._health.get(replica.url, _Health())
                out.append({"url": replica.url, "xds_address": replica.xds_address, "source": replica.source,
                            "rank": rank, "current": replica.url == self._current,
                            "up": health.down_until <= now, "failures": health.failures,
                            "last_error": health.last_error or None})
            return out

    @property
    def consul_replicas(self) -> list[Replica]:
        """What Consul listed last (passing instances), before any fallback."""
        with self._lock:
            return list(self._from_consul)

    @property
    def consul_error(self) -> str:
        return self._consul_error
