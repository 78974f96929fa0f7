"""What each connected proxy runs, from its ADS node (``meshctl version``): Envoy's build version, which Envoy
sends in every xDS ``Node`` (``user_agent_build_version``), and the meshcore agent's version, which the agent
writes into its Envoy's bootstrap node metadata (``agent_version``). Kept per node from the stream's first
request; a node that reconnects after an upgrade reports its new versions."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

AGENT_VERSION_KEY = "agent_version"  # node metadata key (meshcore/agent/bootstrap.py writes it)
MAX_VERSION_LEN = 64  # a proxy's own words: bounded before they reach a status page or a log


@dataclass(frozen=True)
class ProxyVersions:
    envoy: str = ""  # "1.40.0" (Envoy's semantic version), "" when the node did not say
    agent: str = ""  # the meshcore agent's version, "" for an Envoy not started by a meshcore agent


def _clean(text: str) -> str:
    return "".join(c for c in text if c.isprintable())[:MAX_VERSION_LEN]


def versions_of(node: Any) -> ProxyVersions:
    """The versions an ``envoy.config.core.v3.Node`` reports."""
    envoy = ""
    if node.HasField("user_agent_build_version"):
        v = node.user_agent_build_version.version
        envoy = f"{v.major_number}.{v.minor_number}.{v.patch}"
    elif node.user_agent_version:
        envoy = node.user_agent_version
    md = node.metadata.fields
    agent = md[AGENT_VERSION_KEY].string_value if AGENT_VERSION_KEY in md else ""
    return ProxyVersions(envoy=_clean(envoy), agent=_clean(agent))


class ProxyVersionBook:
    """node -> :class:`ProxyVersions` of its latest stream (thread-safe; written by the ADS server's threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_node: dict[str, ProxyVersions] = {}

    def record(self, node: Any) -> None:
        versions = versions_of(node)
        with self._lock:
            self._by_node[node.id] = versions

    def get(self, node: str) -> ProxyVersions:
        with self._lock:
            return self._by_node.get(node, ProxyVersions())


__all__ = ["AGENT_VERSION_KEY", "ProxyVersionBook", "ProxyVersions", "versions_of"]
