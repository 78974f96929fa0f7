"""Each control plane replica registers itself in Consul as service ``meshcore-control-plane``.

One registration per replica on its local Consul agent: ID = the replica id, Address/Port = its operator
API (``/metrics`` is there, so Prometheus' ``consul_sd_configs`` for ``meshcore-control-plane`` finds every
replica), meta with the xDS, agent API and operator API ports (``meshcore-<name>-port``), what an agent dials
(``meshcore-xds-address`` host:port, ``meshcore-api-address`` the agent API's URL) and meshcore's version
(``meshcore-version``), and a TTL check the
replica itself keeps current from a GET of its own ``/healthz`` every third of the check TTL. A replica that
dies stops updating it: the check turns critical within the TTL, which also invalidates the replica's
leader-election session (it names this check). A clean stop deregisters it.

:meth:`ReplicaRegistry.replicas` lists every replica with its health, for ``meshctl status``.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable

import consul

from .. import __version__
from ..api.operator import ReplicaStatus
from ..catalog._consul_calls import consul_errors
from ..catalog._consul_settings import ConsulSettings
from ..errors import ConsulError

log = logging.getLogger("meshcore.controlplane.replicas")

SERVICE = "meshcore-control-plane"
DEFAULT_CHECK_TTL_S = 5.0
LIST_CACHE_S = 1.0


def healthz_probe(url: Callable[[], str], timeout: float = 2.0) -> Callable[[], tuple[bool, str]]:
    """(passing, output) of a GET of ``url()`` (the replica's own ``/healthz``)."""

    def probe() -> tuple[bool, str]:
        target = url()
        if not target:
            return False, "the operator API is not serving yet"
        try:
            with urllib.request.urlopen(target, timeout=timeout) as resp:  # noqa: S310 - our own loopback URL
                return resp.status == 200, f"GET {target}: HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            return False, f"GET {target} failed: {getattr(exc, 'reason', exc)}"

    return probe


class ReplicaRegistry:
    """Registers this replica, keeps its TTL check current, deregisters it on ``stop()``; lists all replicas."""

    def __init__(self, settings: ConsulSettings, replica_id: str, *, address: str, ports: dict[str, int],
                 health: Callable[[], tuple[bool, str]], check_ttl: float = DEFAULT_CHECK_TTL_S,
                 leader: Callable[[], str] = lambda: "", endpoints: dict[str, str] | None = None):
        self.settings = settings
        self.replica_id = replica_id
        self.address = address
        self.ports = dict(ports)
        self.endpoints = dict(endpoints or {})  # name -> what a client dials: xds host:port, api URL
        self.check_ttl = check_ttl
        self._health = health
        self._leader = leader
        self._client = settings.client()
        self._stopped = threading.Event()
        self._registered = False
        self._thread: threading.Thread | None = None
        self.last_error = ""
        self._listed: tuple[float, tuple[ReplicaStatus, ...]] | None = None  # (monotonic time, result)

    @property
    def check_id(self) -> str:
        """The check Consul names after the service (``service:<id>``); leader sessions are bound to it."""
        return f"service:{self.replica_id}"

    def registered_check(self) -> str | None:
        return self.check_id if self._registered else None

    def _register(self) -> None:
        meta = {"meshcore-version": __version__, "meshcore-replica": self.replica_id,
                **{f"meshcore-{name}-port": str(port) for name, port in sorted(self.ports.items())},
                **{f"meshcore-{name}-address": value for name, value in sorted(self.endpoints.items())}}
        passing, output = self._health()
        check = consul.Check.ttl(f"{self.check_ttl:g}s")
        check["Status"] = "passing" if passing else "critical"
        check["Notes"] = "kept current by the replica from its own /healthz"
        with consul_errors(self.settings, f"registering control plane replica {self.replica_id!r}"):
            self._client.agent.service.register(SERVICE, service_id=self.replica_id, address=self.address,
                                                port=self.ports.get("http", 0), meta=meta, check=check,
                                                tags=["meshcore"])
        self._registered = True
        log.info("registered in Consul service=%s id=%s address=%s ports=%s", SERVICE, self.replica_id,
                 self.address, self.ports)

    def start(self) -> ReplicaRegistry:
        try:
            self._register()  # at once: the leader session is bound to this check
        except ConsulError as exc:
            self.last_error = str(exc)
            log.warning("registering this replica in Consul failed, retrying: %s", exc)
        self._thread = threading.Thread(target=self._run, name="replica-registration", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stopped.wait(max(0.2, self.check_ttl / 3)):
            try:
                if not self._registered:
                    self._register()
                passing, output = self._health()
                with consul_errors(self.settings, f"updating control plane replica {self.replica_id!r}'s check"):
                    update = self._client.agent.check.ttl_pass if passing else self._client.agent.check.ttl_fail
                    known = update(self.check_id, output)  # py-consul: False when the agent does not know it
                if not known:
                    log.warning("the Consul agent no longer knows check %s (restarted without its data?); "
                                "registering this replica again", self.check_id)
                    self._registered = False
                    continue
                self.last_error = ""
            except ConsulError as exc:
                if self.last_error != str(exc):
                    log.warning("keeping this replica's Consul registration current failed: %s", exc)
                self.last_error = str(exc)

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if not self._registered:
            return
        try:
            with consul_errors(self.settings, f"deregistering control plane replica {self.replica_id!r}"):
                self._client.agent.service.deregister(self.replica_id)
            log.info("deregistered from Consul service=%s id=%s", SERVICE, self.replica_id)
        except ConsulError as exc:
            log.warning("deregistering this replica failed (its check turns critical within %gs): %s",
                        self.check_ttl, exc)
        self._registered = False

    def replicas(self, max_age: float = LIST_CACHE_S) -> tuple[ReplicaStatus, ...]:
        """Every registered replica, its health and whether it is the leader (raises ConsulError). A listing
        younger than ``max_age`` seconds is reused: status pages and the dashboard ask often."""
        listed = self._listed
        if listed is not None and time.monotonic() - listed[0] < max_age:
            return listed[1]
        result = self._list()
        self._listed = (time.monotonic(), result)
        return result

    def _list(self) -> tuple[ReplicaStatus, ...]:
        with consul_errors(self.settings, f"listing the {SERVICE} replicas"):
            _index, entries = self._client.health.service(SERVICE)
        leader = self._leader()
        out = []
        for e in entries or ():
            svc, node = e.get("Service") or {}, e.get("Node") or {}
            meta = svc.get("Meta") or {}
            checks = e.get("Checks") or []
            healthy = all(c.get("Status") == "passing" for c in checks)
            output = next((c.get("Output") or "" for c in checks if c.get("Status") != "passing"), "")
            rid = meta.get("meshcore-replica") or svc.get("ID", "")
            out.append(ReplicaStatus(
                id=rid, node=node.get("Node", ""), address=svc.get("Address") or node.get("Address", ""),
                http_port=int(meta.get("meshcore-http-port") or svc.get("Port") or 0),
                xds_port=int(meta.get("meshcore-xds-port") or 0), api_port=int(meta.get("meshcore-api-port") or 0),
                version=meta.get("meshcore-version", ""), healthy=healthy, output=output, leader=rid == leader))
        return tuple(sorted(out, key=lambda r: r.id))


__all__ = ["DEFAULT_CHECK_TTL_S", "ReplicaRegistry", "SERVICE", "healthz_probe"]
