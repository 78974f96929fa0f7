"""``<state>/status.json``: what the agent holds and how it is doing, for ``meshctl`` and fleet tooling.

:func:`build_status` is pure; the daemon writes its result atomically through :class:`StatusWriter`
(only when it changed, so an idle agent does not rewrite the file every few seconds).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from meshcore._files import os_errors_as, read_text, write_if_changed
from meshcore.agent.identity import CertSummary, rfc3339
from meshcore.errors import AgentError

STATUS_FILE = "status.json"


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    ids: tuple[str, ...]
    spiffe_id: str
    cert: CertSummary | None = None
    renew_at: datetime | None = None
    error: str | None = None


@dataclass(frozen=True)
class EnvoyStatus:
    pid: int | None = None
    starts: int = 0
    restarts: int = 0
    last_exit_code: int | None = None
    ready: bool = False
    admin: str = ""
    xds_upstream: tuple[str, ...] = ()  # the replicas (xDS host:port) Envoy's ADS connection is open to


@dataclass(frozen=True)
class ControlPlaneStatus:
    address: str
    last_contact: datetime | None = None
    last_error: str | None = None
    consecutive_failures: int = 0
    xds_address: str = ""
    replicas: tuple[dict[str, Any], ...] = ()  # every known replica and its health (meshcore.agent.replicas)


@dataclass(frozen=True)
class AgentStatus:
    node: str
    trust_domain: str
    state: str
    node_cert: CertSummary | None
    node_renew_at: datetime | None
    services: tuple[ServiceStatus, ...]
    envoy: EnvoyStatus
    control_plane: ControlPlaneStatus
    pid: int
    consul: dict[str, Any] = field(default_factory=dict)
    certificate_alarms: tuple[str, ...] = ()  # served certificates expired or close to it (identity reconciler)


def build_status(status: AgentStatus) -> dict[str, Any]:
    """The JSON document for ``status.json`` (stable key order, RFC 3339 times)."""
    return {
        "node": status.node,
        "trust_domain": status.trust_domain,
        "state": status.state,
        "agent_pid": status.pid,
        "node_certificate": _cert(status.node_cert, status.node_renew_at),
        "certificate_alarms": list(status.certificate_alarms),
        "services": [
            {
                "name": s.name,
                "ids": list(s.ids),
                "spiffe_id": s.spiffe_id,
                **(_cert(s.cert, s.renew_at) or {"serial": None, "not_after": None}),
                "error": s.error,
            }
            for s in sorted(status.services, key=lambda s: s.name)
        ],
        "envoy": {
            "pid": status.envoy.pid,
            "running": status.envoy.pid is not None,
            "ready": status.envoy.ready,
            "starts": status.envoy.starts,
            "restarts": status.envoy.restarts,
            "last_exit_code": status.envoy.last_exit_code,
            "admin": status.envoy.admin,
            "xds_upstream": list(status.envoy.xds_upstream),
        },
        "control_plane": {
            "address": status.control_plane.address,
            "xds_address": status.control_plane.xds_address,
            "last_contact": _time(status.control_plane.last_contact),
            "last_error": status.control_plane.last_error,
            "consecutive_failures": status.control_plane.consecutive_failures,
            "replicas": list(status.control_plane.replicas),
        },
        "consul": status.consul,
    }


def write_status(state_dir: Path, document: dict[str, Any]) -> bool:
    path = state_dir / STATUS_FILE
    with os_errors_as(AgentError, f"cannot write {path}"):
        return write_if_changed(path, json.dumps(document, indent=2, sort_keys=True) + "\n", 0o644)


CONTACT_EVERY = 60.0


class StatusWriter:
    """Writes ``status.json`` when what it says changed.

    A poll of the control plane moves ``control_plane.last_contact`` every refresh interval; that
    alone is written at most every ``contact_every`` seconds (each write is a write, a rename and two
    fsyncs: an idle agent spent more CPU on this file than on anything else in its loop). Everything
    else, and the first contact, is written at once.
    """

    def __init__(self, state_dir: Path, contact_every: float = CONTACT_EVERY,
                 clock: Callable[[], float] = time.monotonic):
        self.state_dir = state_dir
        self.contact_every = contact_every
        self._clock = clock
        self._last: dict[str, Any] | None = None  # the last document written, without last_contact
        self._written_at = 0.0

    def write(self, document: dict[str, Any], *, force: bool = False) -> bool:
        plane = dict(document.get("control_plane") or {})
        contact = plane.pop("last_contact", None)
        key = {**document, "control_plane": {**plane, "contacted": contact is not None}}
        now = self._clock()
        if not force and key == self._last and now - self._written_at < self.contact_every:
            return False
        self._last, self._written_at = key, now
        return write_status(self.state_dir, document)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    """The last status the agent wrote (for ``meshctl``), or None."""
    path = state_dir / STATUS_FILE
    with os_errors_as(AgentError, f"cannot read {path}"):
        text = read_text(path)
    return json.loads(text) if text else None


def _cert(cert: CertSummary | None, renew_at: datetime | None) -> dict[str, Any] | None:
    if cert is None:
        return None
    return {**cert.to_json(), "renew_at": _time(renew_at)}


def _time(value: datetime | None) -> str | None:
    return rfc3339(value) if value is not None else None
