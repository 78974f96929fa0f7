"""The VM agent's Consul registrations: keep the local Consul agent's services as desired.

Payloads are Consul API service definitions (``Name``, ``ID``, ``Port``, ``Meta``, ``Tags``,
``Connect.SidecarService``, ``Checks``) sent to ``PUT /v1/agent/service/register``. Every
service registered here is marked with meta ``managed-by: meshcore-agent`` and a content hash
(``meshcore-hash``), so :meth:`ConsulRegistrar.sync` can tell what it owns (operators' own
registrations are never touched) and whether a definition changed (Consul adds defaults on
read, so comparing what it returns to what was sent would always differ). Sidecar proxies are
owned by their parent registration: Consul creates and removes them with it.

Besides the VM's own services the agent registers itself (:func:`agent_service_payload`): one
service ``meshcore-agent`` per node whose port is the agent's merged metrics endpoint, so
Prometheus' ``consul_sd_configs`` (``services: [meshcore-agent]``) finds exactly one scrape target
per VM at the right address and port, with the path in meta ``meshcore-metrics-path``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field
from urllib.parse import quote

import consul

from ..catalog._consul_calls import check, consul_errors, raw
from ..catalog._consul_settings import ConsulSettings
from ..errors import ConfigError

log = logging.getLogger("meshcore.agent.consul")

MANAGED_BY_KEY = "managed-by"
MANAGED_BY = "meshcore-agent"
HASH_KEY = "meshcore-hash"
AGENT_SERVICE = "meshcore-agent"
NODE_KEY = "meshcore-node"
METRICS_PORT_KEY = "meshcore-metrics-port"
METRICS_PATH_KEY = "meshcore-metrics-path"
METRICS_PATH = "/metrics"
AGENT_CHECK_INTERVAL = "10s"
_WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def agent_service_payload(node: str, host: str, port: int, path: str = METRICS_PATH) -> dict:
    """The agent's own registration: service ``meshcore-agent`` (ID ``meshcore-agent-<node>``) on the
    metrics port, meta ``meshcore-node``, ``meshcore-metrics-port`` and ``meshcore-metrics-path``, and
    an HTTP check on ``/healthz``.

    A wildcard bind (``0.0.0.0``, ``::``) registers no ``Address``, so Consul (and Prometheus) use the
    node's address; a specific bind address is registered as the service address."""
    check_host = _WILDCARDS.get(host, host)
    url_host = f"[{check_host}]" if ":" in check_host else check_host
    payload = {
        "Name": AGENT_SERVICE,
        "ID": f"{AGENT_SERVICE}-{node}",
        "Port": int(port),
        "Tags": ["meshcore", "metrics"],
        "Meta": {NODE_KEY: node, METRICS_PORT_KEY: str(int(port)), METRICS_PATH_KEY: path},
        "Checks": [{"CheckID": f"{AGENT_SERVICE}-{node}-metrics", "Name": "meshcore agent metrics endpoint",
                    "HTTP": f"http://{url_host}:{int(port)}/healthz", "Interval": AGENT_CHECK_INTERVAL,
                    "Timeout": "2s"}],
    }
    if host not in _WILDCARDS:
        payload["Address"] = host
    return payload


def service_id(payload: dict) -> str:
    """The ID Consul will use for a definition: ``ID``, else ``Name``."""
    sid = payload.get("ID") or payload.get("Name")
    if not sid or not isinstance(sid, str):
        raise ConfigError(f"service registration needs a Name (got keys {sorted(payload)}); nothing was registered")
    return sid


def definition_hash(payload: dict) -> str:
    """A stable hash of a definition without meshcore's own meta keys."""
    clean = copy.deepcopy(payload)
    meta = {k: v for k, v in (clean.get("Meta") or {}).items() if k not in (MANAGED_BY_KEY, HASH_KEY)}
    clean["Meta"] = meta
    text = json.dumps(clean, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def marked(payload: dict) -> dict:
    """``payload`` with meshcore's ownership meta added (a copy; the input is not changed)."""
    out = copy.deepcopy(payload)
    meta = dict(out.get("Meta") or {})
    meta[MANAGED_BY_KEY] = MANAGED_BY
    meta[HASH_KEY] = definition_hash(payload)
    out["Meta"] = meta
    return out


@dataclass
class SyncResult:
    registered: list[str] = field(default_factory=list)
    deregistered: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)


class ConsulRegistrar:
    """Registers this VM's services with the local Consul agent (see the module docstring)."""

    def __init__(self, settings: ConsulSettings):
        self.settings = settings
        self._consul: consul.Consul | None = None

    @property
    def _client(self) -> consul.Consul:
        if self._consul is None:
            self._consul = self.settings.client()
        return self._consul

    def register(self, payload: dict) -> str:
        """Register (or update) one service with its sidecar and checks; returns its service ID."""
        sid = service_id(payload)
        doing = f"registering service {sid!r} with the local Consul agent"
        with consul_errors(self.settings, doing):
            response = raw(self._client, "PUT", "/v1/agent/service/register",
                           params=[("replace-existing-checks", "true")], body=marked(payload))
        check(response, self.settings, doing)
        log.info("registered service in Consul service=%s consul=%s", sid, self.settings.address)
        return sid

    def deregister(self, service_id: str) -> bool:
        """Remove a service (and the sidecar Consul made for it); False if the agent did not have it."""
        doing = f"deregistering service {service_id!r} from the local Consul agent"
        with consul_errors(self.settings, doing):
            response = raw(self._client, "PUT", f"/v1/agent/service/deregister/{quote(service_id, safe='')}")
        if response.code == 404:
            return False
        check(response, self.settings, doing)
        log.info("deregistered service from Consul service=%s consul=%s", service_id, self.settings.address)
        return True

    def registered(self) -> dict[str, dict]:
        """Services on the local agent registered by meshcore (ID -> Consul's AgentService), sidecars excluded."""
        with consul_errors(self.settings, "listing the local Consul agent's services"):
            services = self._client.agent.services() or {}
        owned = {sid: svc for sid, svc in services.items() if (svc.get("Meta") or {}).get(MANAGED_BY_KEY) == MANAGED_BY}
        return {sid: svc for sid, svc in owned.items()
                if not (svc.get("Kind") == "connect-proxy"
                        and (svc.get("Proxy") or {}).get("DestinationServiceID") in owned)}

    def sync(self, desired: list[dict]) -> SyncResult:
        """Make meshcore's registrations equal ``desired``: register new/changed, remove the rest."""
        wanted: dict[str, dict] = {}
        for payload in desired:
            sid = service_id(payload)
            if sid in wanted:
                raise ConfigError(f"two desired services share the ID {sid!r}; give each a unique ID")
            wanted[sid] = payload
        current = self.registered()
        result = SyncResult()
        for sid, payload in wanted.items():
            have = current.get(sid)
            if have is not None and (have.get("Meta") or {}).get(HASH_KEY) == definition_hash(payload):
                result.unchanged.append(sid)
                continue
            self.register(payload)
            result.registered.append(sid)
        for sid in sorted(set(current) - set(wanted)):
            if self.deregister(sid):
                result.deregistered.append(sid)
        return result

    def close(self) -> None:
        self._consul = None
