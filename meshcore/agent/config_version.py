"""The config version a node's Envoy runs, as it ACKed it to the control plane (read from its admin).

Envoy keeps the ``version_info`` it last accepted of each subscription as a text readout
(``listener_manager.lds.version_text``, ``cluster_manager.cds.version_text``, ...). The agent puts the
listeners' and clusters' versions in its Consul registrations' sidecar meta ``meshcore-config-version``
(:mod:`meshcore.agent.consul_registration`), so the Consul UI shows which configuration each proxy runs;
``meshctl proxy-status`` shows the control plane's side of the same versions.
"""

from __future__ import annotations

import logging
import time
from typing import Callable
from urllib.parse import quote

from ._net import admin_get

log = logging.getLogger("meshcore.agent.consul")

READ_EVERY_S = 5.0  # at most one admin read per this many seconds (an idle agent asks every second)

# Envoy's text readouts of the version_info it last accepted (ACKed) per subscription: listeners and clusters,
# the two top-level types every other one (routes, endpoints, secrets) hangs from.
VERSION_TEXTS = (("lds", "listener_manager.lds.version_text"), ("cds", "cluster_manager.cds.version_text"))
# Only those two (a regex, as Envoy's /stats filter takes it): a proxy with many clusters has a version text each.
STATS_PATH = "/stats?filter=" + quote(r"^(listener_manager\.lds|cluster_manager\.cds)\.version_text$", safe="")


def parse_version_texts(body: str) -> str:
    """``/stats?filter=version_text`` (Envoy's text format) -> the config version for the meta: the one version
    when listeners and clusters run the same, else ``lds:<v> cds:<v>``; "" while either is unknown."""
    found: dict[str, str] = {}
    for line in body.splitlines():
        name, _, value = line.partition(": ")
        found[name.strip()] = value.strip().strip('"')
    versions = [(short, found.get(stat, "")) for short, stat in VERSION_TEXTS]
    if not all(v for _, v in versions):
        return ""
    if len({v for _, v in versions}) == 1:
        return versions[0][1]
    return " ".join(f"{short}:{v}" for short, v in versions)


class AckedConfigVersion:
    """The config version the node's Envoy runs, read from its admin (the versions it ACKed to the control
    plane), for :class:`ConsulRegistrar`'s ``config_version``. One node runs one Envoy, so every service of
    the node gets the same answer; it is read at most once per ``ttl`` seconds (one sync asks once per
    service, and the registration worker asks every second whether it changed). "" while Envoy does not answer
    (the meta key is then left out)."""

    def __init__(self, admin: Callable[[], str], *, ttl: float = READ_EVERY_S,
                 fetch: Callable[[str, str], tuple[int, bytes] | None] | None = None,
                 clock: Callable[[], float] | None = None):
        self._admin = admin
        self._ttl = ttl
        self._fetch = fetch or admin_get
        self._clock = clock or time.monotonic
        self._memo: tuple[float, str] | None = None

    def __call__(self, service_id: str = "") -> str:
        now = self._clock()
        if self._memo is not None and now - self._memo[0] < self._ttl:
            return self._memo[1]
        answer = self._fetch(self._admin(), STATS_PATH) if self._admin() else None
        version = parse_version_texts(answer[1].decode(errors="replace")) if answer and answer[0] == 200 else ""
        if self._memo is not None and version != self._memo[1]:
            log.info("proxy config version for the Consul registrations: %s (was %s)", version or "unknown",
                     self._memo[1] or "unknown")
        self._memo = (now, version)
        return version


__all__ = ["AckedConfigVersion", "READ_EVERY_S", "STATS_PATH", "VERSION_TEXTS", "parse_version_texts"]
