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

What the Consul UI shows (:func:`sidecar_fidelity`, applied to every registration with a sidecar): the
sidecar is registered with the address its Envoy really listens on (meshcore's Envoy binds its mesh
listener on the sidecar's address, else the node's: the address the local Consul agent advertises), so
the UI shows it and the sidecar's checks dial it, not ``127.0.0.1`` (Consul's default check falls back
to ``LocalServiceAddress``, where the app, not Envoy, listens); with a known port, the checks are
explicit: a TCP check on that address and port (passing exactly while Envoy serves the mesh listener)
and Consul's alias of the service's own checks. Upstreams stay in ``Proxy.Upstreams`` with
``DestinationType: service`` (what the UI's topology view reads), and the sidecar's meta adds
``meshcore-version`` and ``meshcore-config-version`` (the config version the node's Envoy ACKed,
:class:`meshcore.agent.config_version.AckedConfigVersion`; left out while unknown) to the service's own meta, which Consul's sidecar
would otherwise inherit. A registration is sent again only when it changed, that version included.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable
from urllib.parse import quote

import consul

from ..catalog._consul_calls import check, consul_errors, raw
from ..catalog._consul_settings import ConsulSettings
from ..errors import ConfigError, MeshError

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
VERSION_KEY = "meshcore-version"
CONFIG_VERSION_KEY = "meshcore-config-version"
SIDECAR_CHECK_INTERVAL = "10s"  # Consul's own default for the sidecar listening check
SIDECAR_CHECK_NAME = "Envoy mesh listener"


def _meshcore_version() -> str:
    from .. import __version__

    return __version__


def sidecar_fidelity(payload: dict, node_address: str = "", *, version: str = "", config_version: str = "",
                     check_interval: str = SIDECAR_CHECK_INTERVAL) -> dict:
    """``payload`` (a copy) as the Consul UI should show it: see the module docstring. Payloads without a
    sidecar are returned unchanged."""
    sidecar = ((payload.get("Connect") or {}).get("SidecarService"))
    if not isinstance(sidecar, dict):
        return payload
    out = copy.deepcopy(payload)
    sc = out["Connect"]["SidecarService"]
    address = sc.get("Address") or node_address
    if address:
        sc["Address"] = address
    port = sc.get("Port")
    if port and address and not sc.get("Checks") and not sc.get("Check"):
        host = f"[{address}]" if ":" in address else address
        sid = service_id(out)
        sc["Checks"] = [
            {"Name": SIDECAR_CHECK_NAME, "TCP": f"{host}:{int(port)}", "Interval": check_interval, "Timeout": "2s",
             "Notes": "meshcore's Envoy accepts mesh (mTLS) connections here; critical while it does not serve"},
            {"Name": f"Connect Sidecar Aliasing {sid}", "AliasService": sid},
        ]
    proxy = sc.get("Proxy")
    if isinstance(proxy, dict):
        for upstream in proxy.get("Upstreams") or ():
            if isinstance(upstream, dict):
                upstream.setdefault("DestinationType", "service")
    meta = dict(out.get("Meta") or {})
    meta.update(sc.get("Meta") or {})
    if version:
        meta[VERSION_KEY] = version
    if config_version:
        meta[CONFIG_VERSION_KEY] = config_version
    sc["Meta"] = meta
    return out


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


def registrar_syncer(config_version: Callable[[str], str], env: Any = None) -> Callable[[list[dict]], "SyncResult"]:
    """The real Consul registrar (configured from ``CONSUL_*``) whose sidecars' meta carries ``config_version``
    (an :class:`~meshcore.agent.config_version.AckedConfigVersion`): a registration is sent again only when
    that version (or anything else of it) changed, as every sync compares content hashes."""
    return ConsulRegistrar(ConsulSettings.from_env(env), config_version=config_version).sync


class ConsulRegistrar:
    """Registers this VM's services with the local Consul agent (see the module docstring)."""

    def __init__(self, settings: ConsulSettings, *, config_version: Callable[[str], str] | None = None,
                 check_interval: str | None = None):
        self.settings = settings
        self._consul: consul.Consul | None = None
        self._node_address = ""
        # the config version a service's proxy runs (by service ID), for the sidecar's meta; "" when unknown
        self._config_version = config_version
        self.check_interval = check_interval or os.environ.get("MESHCORE_SIDECAR_CHECK_INTERVAL") or SIDECAR_CHECK_INTERVAL

    def node_address(self) -> str:
        """The address the local Consul agent advertises (where meshcore's Envoy binds); "" when unknown."""
        if not self._node_address:
            try:
                with consul_errors(self.settings, "reading the local Consul agent's address (/v1/agent/self)"):
                    info: Any = self._client.agent.self()
                self._node_address = str((info.get("Member") or {}).get("Addr") or "")
            except (MeshError, AttributeError) as exc:
                log.warning("cannot learn the Consul agent's address (%s); sidecars are registered without one", exc)
        return self._node_address

    def _for_ui(self, payload: dict) -> dict:
        if not (payload.get("Connect") or {}).get("SidecarService"):
            return payload
        config_version = self._config_version(service_id(payload)) if self._config_version else ""
        return sidecar_fidelity(payload, self.node_address(), version=_meshcore_version(),
                                config_version=config_version, check_interval=self.check_interval)

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
        for payload in map(self._for_ui, desired):
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
