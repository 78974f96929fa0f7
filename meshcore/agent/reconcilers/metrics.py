"""The metrics reconciler: the VM's one Prometheus endpoint (agent + Envoy, see
:mod:`meshcore.agent.metrics`), the agent's own Consul registration of it, and the SVID counter.

Nothing runs on a timer here: the endpoint computes everything when it is scraped, from
:class:`~meshcore.agent.metrics.AgentFacts` read through the ``facts`` callable (values, not the daemon).
A busy port is logged, not fatal: the data plane matters more than its metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from meshcore.agent._net import split_host_port
from meshcore.agent.consul_registration import agent_service_payload
from meshcore.agent.metrics import AgentFacts, AgentMetrics, MetricsServer
from meshcore.errors import MeshError

log = logging.getLogger("meshcore.agent")


class MetricsReconciler:
    def __init__(self, node: str, bind: Callable[[], str], admin: Callable[[], str],
                 facts: Callable[[], AgentFacts]):
        self._node = node
        self._bind = bind
        self._admin = admin
        self.metrics = AgentMetrics(facts)
        self.server: MetricsServer | None = None

    def start(self) -> bool:
        """Serve ``/metrics`` when a bind address is configured; True when serving."""
        if not self._bind():
            return False
        try:
            self.server = MetricsServer(self._bind(), self.metrics, self._admin).start()
        except MeshError as exc:
            log.error("%s", exc)
            return False
        log.info("serving metrics on http://%s/metrics", self.server.address)
        return True

    def svid_issued(self, service: str, reason: str) -> None:
        self.metrics.svid_issued.labels(service, reason).inc()

    def address(self) -> str:
        """The advertised metrics host:port (a wildcard bind is advertised with the admin host)."""
        if self.server is None:
            return ""
        host, port = split_host_port(self.server.address)
        if host in ("0.0.0.0", "::", ""):
            host = split_host_port(self._admin())[0]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def own_registrations(self) -> list[dict[str, Any]]:
        """The agent's own Consul service (its metrics endpoint), beside the VM's services."""
        bound = self.server.bound() if self.server else None
        return [agent_service_payload(self._node, *bound)] if bound else []

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None
