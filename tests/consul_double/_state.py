"""The double's in-memory state store: catalog, health checks, the local agent and KV.

It mirrors how Consul's state store indexes data, because that is what blocking queries and
clients depend on:

* one raft-like index, incremented once per write (one ``catalog/register`` with a node, a
  service and checks is one write, as in Consul);
* per-table indexes (``nodes``, ``services``, ``checks``, ``kvs``) and finer ones (per service
  name, per connect destination, per node), each set to the raft index of the write that last
  touched it; endpoints report the index of exactly what they read;
* writes that change nothing (an identical re-registration) do not bump any index;
* KV deletes leave tombstones so a prefix's index never goes backwards on delete (see ``_kv``);
* :meth:`ConsulState.reset_index` lowers every index, like a snapshot restore, and wakes blocked
  queries (Consul closes the state store's abandon channel).

Every public method takes ``self.cond`` (a Condition); writers ``notify_all`` so blocked
readers re-check their index. Errors are raised as :class:`DoubleError` carrying the HTTP status
and Consul's text.
"""

from __future__ import annotations

import copy
import re
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable

from ._durations import format_duration, parse_duration
from ._errors import DoubleError
from ._config_entries import ConfigEntriesMixin
from ._kv import KVMixin
from ._normalize import normalize
from ._sessions import SessionsMixin

PASSING, WARNING, CRITICAL = "passing", "warning", "critical"
CHECK_STATES = (PASSING, WARNING, CRITICAL)
SIDECAR_SUFFIX = "-sidecar-proxy"
SIDECAR_PORT_RANGE = (21000, 21255)
_META_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
# Active check fields -> Consul's check "Type"; the double records them but never runs them.
_ACTIVE_CHECK_FIELDS = {"HTTP": "http", "TCP": "tcp", "UDP": "udp", "GRPC": "grpc", "H2PING": "h2ping",
                        "Args": "script", "ScriptArgs": "script", "DockerContainerID": "docker", "OSService": "os_service"}


@dataclass
class _AgentCheck:
    """Agent-local facts about a check that the catalog does not hold."""

    ttl: float | None = None
    deadline: float | None = None
    alias_service: str | None = None


@dataclass
class _AgentService:
    sidecar_of: str | None = None


def _node_id(name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"consul-double-node:{name}"))


def _strip_indexes(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("CreateIndex", "ModifyIndex")}


class ConsulState(KVMixin, SessionsMixin, ConfigEntriesMixin):
    """All data of one single-server, single-datacenter Consul with one local agent."""

    def __init__(self, node: str, datacenter: str, node_address: str, clock: Callable[[], float] = time.monotonic):
        self.node = node
        self.datacenter = datacenter
        self.node_address = node_address
        self.clock = clock
        self.cond = threading.Condition()
        self.index = 0
        self.generation = 0  # bumped by reset_index(); blocked queries bail out when it changes
        self.closed = False
        self._last_write = 0
        self.tables: dict[str, int] = {"nodes": 0, "services": 0, "checks": 0, "kvs": 0}
        self.service_idx: dict[str, int] = {}
        self.connect_idx: dict[str, int] = {}
        self.node_idx: dict[str, int] = {}
        self.nodes: dict[str, dict] = {}
        self.services: dict[tuple[str, str], dict] = {}
        self.checks: dict[tuple[str, str], dict] = {}
        self.kv: dict[str, dict] = {}
        self.tombstones: dict[str, int] = {}
        self.agent_services: dict[str, _AgentService] = {}
        self.agent_checks: dict[str, _AgentCheck] = {}
        self._init_config_entries()  # /v1/config (_config_entries.py)
        self._init_sessions()  # /v1/session and KV locks (_sessions.py)
        self._bootstrap()

    # ------------------------------------------------------------------ indexing helpers
    def _begin(self) -> int:
        """The index the current write will get if it changes anything (see :meth:`_commit`)."""
        self._last_write = 0
        return self.index + 1

    def _commit(self, idx: int) -> None:
        """Make a write visible: consume ``idx`` only if something changed, then wake blocked readers."""
        if self._last_write == idx:
            self.index = idx
            self.notify()

    def _touch_service_scope(self, idx: int, svc: dict) -> None:
        self._last_write = idx
        self.service_idx[svc["Service"]] = idx
        dest = (svc.get("Proxy") or {}).get("DestinationServiceName")
        if svc.get("Kind") == "connect-proxy" and dest:
            self.connect_idx[dest] = idx
        if (svc.get("Connect") or {}).get("Native"):
            self.connect_idx[svc["Service"]] = idx

    def _touch_service(self, idx: int, node: str, svc: dict) -> None:
        self.tables["services"] = idx
        self.node_idx[node] = idx
        self._touch_service_scope(idx, svc)

    def _touch_check(self, idx: int, chk: dict) -> None:
        self._last_write = idx
        self.tables["checks"] = idx
        node = chk["Node"]
        self.node_idx[node] = idx
        if chk.get("ServiceID"):
            svc = self.services.get((node, chk["ServiceID"]))
            if svc:
                self._touch_service_scope(idx, svc)
        else:
            for svc in self._services_on(node):
                self._touch_service_scope(idx, svc)

    def _touch_node(self, idx: int, node: str) -> None:
        self._last_write = idx
        self.tables["nodes"] = idx
        self.node_idx[node] = idx
        for svc in self._services_on(node):
            self._touch_service_scope(idx, svc)

    def _services_on(self, node: str) -> list[dict]:
        return [s for (n, _), s in self.services.items() if n == node]

    def _checks_of(self, node: str, service_id: str | None) -> list[dict]:
        """Checks of a node (``service_id=None``: node-level only, ``""`` too) or of one service on it."""
        want = service_id or ""
        return [c for (n, _), c in sorted(self.checks.items()) if n == node and (c.get("ServiceID") or "") == want]

    # ------------------------------------------------------------------ low-level upserts
    def _upsert_node(self, idx: int, name: str, address: str, *, tagged=None, meta=None, node_id=None) -> None:
        old = self.nodes.get(name)
        rec = {
            "ID": node_id or (old or {}).get("ID") or _node_id(name),
            "Node": name,
            "Address": address,
            "Datacenter": self.datacenter,
            "TaggedAddresses": dict(tagged) if tagged is not None else {"lan": address, "wan": address},
            "Meta": dict(meta or {}),
        }
        if old and _strip_indexes(old) == rec:
            return
        rec["CreateIndex"] = old["CreateIndex"] if old else idx
        rec["ModifyIndex"] = idx
        self.nodes[name] = rec
        self._touch_node(idx, name)

    def _upsert_service(self, idx: int, node: str, svc: dict) -> None:
        key = (node, svc["ID"])
        old = self.services.get(key)
        if old and _strip_indexes(old) == svc:
            return
        if old and old["Service"] != svc["Service"]:
            self._touch_service_scope(idx, old)  # watchers of the old name see it go
        rec = dict(svc)
        rec["CreateIndex"] = old["CreateIndex"] if old else idx
        rec["ModifyIndex"] = idx
        self.services[key] = rec
        self._touch_service(idx, node, rec)
        for chk in self._checks_of(node, svc["ID"]):  # checks carry the service name and tags
            self._upsert_check(idx, dict(_strip_indexes(chk), ServiceName=rec["Service"], ServiceTags=list(rec["Tags"])))

    def _upsert_check(self, idx: int, chk: dict) -> None:
        key = (chk["Node"], chk["CheckID"])
        old = self.checks.get(key)
        if old and _strip_indexes(old) == chk:
            return
        rec = dict(chk)
        rec["CreateIndex"] = old["CreateIndex"] if old else idx
        rec["ModifyIndex"] = idx
        self.checks[key] = rec
        self._touch_check(idx, rec)
        self._sessions_on_check(idx, rec["Node"], rec["CheckID"], rec["Status"])  # critical: invalidates sessions

    def _delete_check(self, idx: int, node: str, check_id: str) -> bool:
        chk = self.checks.pop((node, check_id), None)
        if chk is None:
            return False
        self._touch_check(idx, chk)
        self._sessions_on_check(idx, node, check_id, None)  # a deleted check invalidates its sessions
        if node == self.node:
            self.agent_checks.pop(check_id, None)
        return True

    def _delete_service(self, idx: int, node: str, service_id: str) -> bool:
        svc = self.services.get((node, service_id))
        if svc is None:
            return False
        for chk in self._checks_of(node, service_id):
            self._delete_check(idx, node, chk["CheckID"])
        del self.services[(node, service_id)]
        self._touch_service(idx, node, svc)
        if node == self.node:
            self.agent_services.pop(service_id, None)
        return True

    def _delete_node(self, idx: int, node: str) -> bool:
        if node not in self.nodes:
            return False
        for svc in self._services_on(node):
            self._delete_service(idx, node, svc["ID"])
        for chk in self._checks_of(node, None):
            self._delete_check(idx, node, chk["CheckID"])
        del self.nodes[node]
        self._sessions_on_node_delete(idx, node)
        self._last_write = idx
        self.tables["nodes"] = idx
        self.node_idx[node] = idx
        return True

    def _bootstrap(self) -> None:
        """The server's own node: ``serfHealth`` passing and the ``consul`` service, as a real server has."""
        with self.cond:
            self._bootstrap_locked()

    def _bootstrap_locked(self) -> None:
        idx = self._begin()
        self._upsert_node(idx, self.node, self.node_address)
        self._upsert_check(idx, {
            "Node": self.node, "CheckID": "serfHealth", "Name": "Serf Health Status", "Status": PASSING,
            "Notes": "", "Output": "Agent alive and reachable", "ServiceID": "", "ServiceName": "",
            "ServiceTags": [], "Type": "", "Interval": "", "Timeout": "", "ExposedPort": 0, "Definition": {},
        })
        self._upsert_service(idx, self.node, {
            "Kind": "", "ID": "consul", "Service": "consul", "Tags": [], "Address": "", "Meta": {},
            "Port": 8300, "Weights": {"Passing": 1, "Warning": 1}, "EnableTagOverride": False,
            "Proxy": {"Mode": "", "MeshGateway": {}, "Expose": {}}, "Connect": {},
        })
        self._commit(idx)

    def notify(self) -> None:
        self.cond.notify_all()

    # ------------------------------------------------------------------ definitions (pure-ish)
    @staticmethod
    def _validate_meta(meta: Any, what: str) -> dict[str, str]:
        if meta is None:
            return {}
        if not isinstance(meta, dict):
            raise DoubleError(400, f"Invalid {what} Meta: must be an object of strings")
        if len(meta) > 64:
            raise DoubleError(400, f"Invalid {what} Meta: Node metadata cannot contain more than 64 key/value pairs")
        for key, value in meta.items():
            if not _META_KEY.match(key) or len(key) > 128:
                raise DoubleError(400, f"Invalid {what} Meta: Key contains invalid characters: {key!r}")
            if key.startswith("consul-"):
                raise DoubleError(400, f"Invalid {what} Meta: Key prefix 'consul-' is reserved for internal use")
            if not isinstance(value, str) or len(value) > 512:
                raise DoubleError(400, f"Invalid {what} Meta: Value for key {key!r} must be a string of at most 512 characters")
        return dict(meta)

    @staticmethod
    def _upstream(raw: dict) -> dict:
        if not raw.get("DestinationName"):
            raise DoubleError(400, "Invalid Proxy configuration: upstream destination name is required")
        port = int(raw.get("LocalBindPort") or 0)
        if port < 1 and not raw.get("LocalBindSocketPath"):
            raise DoubleError(400, f"Invalid Proxy configuration: upstream {raw['DestinationName']!r} needs LocalBindPort")
        out: dict[str, Any] = {"DestinationType": raw.get("DestinationType") or "service",
                               "DestinationName": raw["DestinationName"]}
        for key in ("Datacenter", "LocalBindAddress", "LocalBindSocketPath", "DestinationPeer"):
            if raw.get(key):
                out[key] = raw[key]
        out["LocalBindPort"] = port
        out["Config"] = dict(raw.get("Config") or {})
        out["MeshGateway"] = dict(raw.get("MeshGateway") or {})
        return out

    @classmethod
    def _proxy(cls, raw: dict | None) -> dict:
        raw = raw or {}
        out: dict[str, Any] = {}
        for key in ("DestinationServiceName", "DestinationServiceID", "LocalServiceAddress"):
            if raw.get(key):
                out[key] = raw[key]
        if raw.get("LocalServicePort"):
            out["LocalServicePort"] = int(raw["LocalServicePort"])
        out["Mode"] = raw.get("Mode") or ""
        if raw.get("Config"):
            out["Config"] = dict(raw["Config"])
        upstreams = [cls._upstream(u) for u in (raw.get("Upstreams") or [])]
        if upstreams:
            out["Upstreams"] = upstreams
        out["MeshGateway"] = dict(raw.get("MeshGateway") or {})
        out["Expose"] = dict(raw.get("Expose") or {})
        return out

    def _node_service(self, d: dict, *, name_key: str, require_proxy_port: bool = True) -> dict:
        name = d.get(name_key) or d.get("Service" if name_key == "Name" else "Name") or ""
        if not isinstance(name, str) or not name:
            raise DoubleError(400, "Missing service name")
        kind = d.get("Kind") or ""
        port = int(d.get("Port") or 0)
        connect = {k: v for k, v in (d.get("Connect") or {}).items() if k != "SidecarService"}
        svc = {
            "Kind": kind,
            "ID": d.get("ID") or name,
            "Service": name,
            "Tags": list(d.get("Tags") or []),
            "Address": d.get("Address") or "",
            "Meta": self._validate_meta(d.get("Meta"), "Service"),
            "Port": port,
            "Weights": dict(d.get("Weights") or {"Passing": 1, "Warning": 1}),
            "EnableTagOverride": bool(d.get("EnableTagOverride")),
            "Proxy": self._proxy(d.get("Proxy")),
            "Connect": connect,
        }
        if d.get("TaggedAddresses"):
            svc["TaggedAddresses"] = d["TaggedAddresses"]
        if kind == "connect-proxy":
            if not svc["Proxy"].get("DestinationServiceName"):
                raise DoubleError(400, "Invalid Proxy configuration: Proxy.DestinationServiceName must be set")
            if port < 1 and require_proxy_port:
                raise DoubleError(400, "Invalid Proxy configuration: Port must be set for a Connect proxy")
        return svc

    @staticmethod
    def _check_types(d: dict) -> list[dict]:
        raw = []
        if d.get("Check"):
            raw.append(d["Check"])
        raw.extend(d.get("Checks") or [])
        out = []
        for c in raw:
            c = dict(c)
            status = c.get("Status") or ""
            if status and status not in CHECK_STATES:
                raise DoubleError(400, f"Invalid check status: {status!r}")
            if c.get("TTL"):
                try:
                    ttl = parse_duration(str(c["TTL"]))
                except ValueError as exc:
                    raise DoubleError(400, f"Invalid check: {exc}") from exc
                if ttl <= 0:
                    raise DoubleError(400, "Invalid check: TTL must be > 0 for TTL checks")
                c["_type"], c["_ttl"] = "ttl", ttl
            elif c.get("AliasService") or c.get("AliasNode"):
                c["_type"] = "alias"
            elif any(c.get(k) for k in _ACTIVE_CHECK_FIELDS):
                c["_type"] = _ACTIVE_CHECK_FIELDS[next(k for k in _ACTIVE_CHECK_FIELDS if c.get(k))]
            else:
                raise DoubleError(400, "Check is not valid since it lacks a script, HTTP, TCP, UDP, H2PING, OSService, TTL, gRPC, or alias target")
            out.append(c)
        return out

    def _agent_check_record(self, svc: dict | None, ctype: dict, i: int, n: int) -> tuple[dict, _AgentCheck]:
        sid = svc["ID"] if svc else ""
        cid = ctype.get("CheckID") or (f"service:{sid}" + (f":{i + 1}" if n > 1 else ""))
        if not ctype.get("CheckID") and not svc:
            raise DoubleError(400, "Missing check ID")
        name = ctype.get("Name") or (f"Service '{svc['Service']}' check" if svc else cid)
        kind = ctype["_type"]
        definition = {k: ctype[k] for k in ("HTTP", "TCP", "UDP", "GRPC", "H2PING", "Args", "ScriptArgs",
                                            "AliasService", "AliasNode", "Method", "Header", "TLSSkipVerify") if ctype.get(k)}
        try:
            interval = format_duration(parse_duration(str(ctype["Interval"]))) if ctype.get("Interval") else ""
            timeout = format_duration(parse_duration(str(ctype["Timeout"]))) if ctype.get("Timeout") else ""
        except ValueError as exc:
            raise DoubleError(400, f"Invalid check {cid!r}: {exc}") from exc
        agent = _AgentCheck()
        output = ""
        if kind == "ttl":
            status = ctype.get("Status") or CRITICAL
            agent.ttl = ctype["_ttl"]
            agent.deadline = self.clock() + agent.ttl
        elif kind == "alias":
            status = CRITICAL
            agent.alias_service = ctype.get("AliasService")
        else:
            # The double never dials anything: an active check keeps its declared status.
            status = ctype.get("Status") or PASSING
            output = "consul test double: active checks are not executed; declared status kept"
        rec = {
            "Node": self.node, "CheckID": cid, "Name": name, "Status": status, "Notes": ctype.get("Notes") or "",
            "Output": output, "ServiceID": sid, "ServiceName": svc["Service"] if svc else "",
            "ServiceTags": list(svc["Tags"]) if svc else [], "Type": kind, "Interval": interval,
            "Timeout": timeout, "ExposedPort": 0, "Definition": definition,
        }
        return rec, agent

    def _sidecar_from(self, parent: dict, raw: dict) -> tuple[dict, list[dict]]:
        """Expand ``Connect.SidecarService`` the way Consul's agent does (sidecar_service.go)."""
        d = normalize(raw)
        if d.get("Kind") not in (None, "", "connect-proxy"):
            raise DoubleError(400, "Invalid SidecarService: Kind must be connect-proxy")
        d = dict(d)
        d["Name"] = d.get("Name") or parent["Service"] + SIDECAR_SUFFIX
        d["ID"] = parent["ID"] + SIDECAR_SUFFIX
        d["Kind"] = "connect-proxy"
        if not d.get("Meta") and parent["Meta"]:
            d["Meta"] = dict(parent["Meta"])
        if not d.get("Tags") and parent["Tags"]:
            d["Tags"] = list(parent["Tags"])
        if not d.get("Address"):
            d["Address"] = parent["Address"]
        proxy = dict(d.get("Proxy") or {})
        proxy.setdefault("DestinationServiceName", parent["Service"])
        proxy["DestinationServiceName"] = proxy["DestinationServiceName"] or parent["Service"]
        proxy["DestinationServiceID"] = proxy.get("DestinationServiceID") or parent["ID"]
        if not proxy.get("LocalServiceSocketPath") and (not proxy.get("LocalServiceAddress") or not proxy.get("LocalServicePort")):
            proxy["LocalServiceAddress"] = proxy.get("LocalServiceAddress") or "127.0.0.1"
            proxy["LocalServicePort"] = proxy.get("LocalServicePort") or parent["Port"]
        d["Proxy"] = proxy
        sidecar = self._node_service(d, name_key="Name", require_proxy_port=False)  # port 0: picked under the lock
        checks = self._check_types(d)
        if not checks:
            address = sidecar["Address"] or proxy["LocalServiceAddress"] or "127.0.0.1"
            checks = [
                {"Name": "Connect Sidecar Listening", "TCP": f"{address}:{{port}}", "Interval": "10s", "_type": "tcp"},
                {"Name": f"Connect Sidecar Aliasing {parent['ID']}", "AliasService": parent["ID"], "_type": "alias"},
            ]
        return sidecar, checks

    def _sidecar_port(self, sidecar_id: str) -> int:
        lo, hi = SIDECAR_PORT_RANGE
        used = set()
        for sid in self.agent_services:
            svc = self.services.get((self.node, sid))
            if svc and lo <= svc["Port"] <= hi:
                if sid == sidecar_id:
                    return svc["Port"]
                used.add(svc["Port"])
        for port in range(lo, hi + 1):
            if port not in used:
                return port
        raise DoubleError(500, f"no port provided for sidecar_service and none left in the configured range [{lo}, {hi}]")

    # ------------------------------------------------------------------ agent endpoints
    def agent_register(self, body: Any, replace_existing_checks: bool = False) -> None:
        if not isinstance(body, dict):
            raise DoubleError(400, "Request decode failed: service definition must be a JSON object")
        d = normalize(body)
        svc = self._node_service(d, name_key="Name")
        ctypes = self._check_types(d)
        sidecar_raw = (d.get("Connect") or {}).get("SidecarService")
        if sidecar_raw is not None and svc["Kind"]:
            raise DoubleError(400, f"Invalid SidecarService: a {svc['Kind']} service cannot have a sidecar")
        sidecar, sidecar_ctypes = self._sidecar_from(svc, sidecar_raw) if sidecar_raw is not None else (None, [])
        with self.cond:
            idx = self._begin()
            if self.node not in self.nodes:
                self._upsert_node(idx, self.node, self.node_address)
            self._apply_agent_service(idx, svc, ctypes, replace_existing_checks, sidecar_of=None)
            sidecar_id = svc["ID"] + SIDECAR_SUFFIX
            if sidecar is not None:
                sidecar["Port"] = sidecar["Port"] or self._sidecar_port(sidecar_id)
                for c in sidecar_ctypes:
                    if c.get("TCP") and "{port}" in c["TCP"]:
                        c["TCP"] = c["TCP"].replace("{port}", str(sidecar["Port"]))
                self._apply_agent_service(idx, sidecar, sidecar_ctypes, True, sidecar_of=svc["ID"])
            elif (prev := self.agent_services.get(sidecar_id)) and prev.sidecar_of == svc["ID"]:
                self._delete_service(idx, self.node, sidecar_id)
            self._recompute_aliases(idx)
            self._commit(idx)

    def _apply_agent_service(self, idx: int, svc: dict, ctypes: list[dict], replace: bool, sidecar_of: str | None) -> None:
        self._upsert_service(idx, self.node, svc)
        self.agent_services[svc["ID"]] = _AgentService(sidecar_of=sidecar_of)
        wanted = set()
        for i, ctype in enumerate(ctypes):
            rec, agent = self._agent_check_record(svc, ctype, i, len(ctypes))
            wanted.add(rec["CheckID"])
            old = self.checks.get((self.node, rec["CheckID"]))
            if old and not ctype.get("Status") and rec["Type"] == old.get("Type"):
                rec["Status"], rec["Output"] = old["Status"], old["Output"]  # re-registration keeps state
            self._upsert_check(idx, rec)
            self.agent_checks[rec["CheckID"]] = agent
        if replace:
            for chk in self._checks_of(self.node, svc["ID"]):
                if chk["CheckID"] not in wanted:
                    self._delete_check(idx, self.node, chk["CheckID"])

    def agent_deregister(self, service_id: str) -> None:
        with self.cond:
            if service_id not in self.agent_services or (self.node, service_id) not in self.services:
                raise DoubleError(404, f'Unknown service ID "{service_id}". Ensure that the service ID is passed, not the service name.')
            idx = self._begin()
            self._delete_service(idx, self.node, service_id)
            for sid, meta in list(self.agent_services.items()):
                if meta.sidecar_of == service_id:
                    self._delete_service(idx, self.node, sid)
            self._recompute_aliases(idx)
            self._commit(idx)

    def agent_check_update(self, check_id: str, status: str, output: str, *, ttl_only: bool = True) -> None:
        if status not in CHECK_STATES:
            raise DoubleError(400, f"Invalid check status: {status!r}")
        with self.cond:
            chk = self.checks.get((self.node, check_id))
            agent = self.agent_checks.get(check_id)
            if chk is None or agent is None:
                raise DoubleError(404, f'Unknown check ID "{check_id}". Ensure that the check ID is passed, not the check name.')
            if ttl_only and agent.ttl is None:
                raise DoubleError(500, f'CheckID "{check_id}" does not have associated TTL')
            if agent.ttl is not None:
                agent.deadline = self.clock() + agent.ttl
            idx = self._begin()
            self._upsert_check(idx, dict(_strip_indexes(chk), Status=status, Output=output))
            self._recompute_aliases(idx)
            self._commit(idx)

    def set_check_status(self, check_id: str, status: str, output: str = "", node: str | None = None) -> None:
        """Test hook: set any check's status (active checks are never run by the double)."""
        node = node or self.node
        if node == self.node and check_id in self.agent_checks:
            self.agent_check_update(check_id, status, output, ttl_only=False)
            return
        with self.cond:
            chk = self.checks.get((node, check_id))
            if chk is None:
                raise KeyError(f"no check {check_id!r} on node {node!r}")
            idx = self._begin()
            self._upsert_check(idx, dict(_strip_indexes(chk), Status=status, Output=output))
            self._recompute_aliases(idx)
            self._commit(idx)

    def _alias_status(self, service_id: str) -> tuple[str, str]:
        if (self.node, service_id) not in self.services:
            return CRITICAL, f"Service {service_id} could not be found on node {self.node}"
        statuses = [c["Status"] for c in self._checks_of(self.node, service_id) if c["Type"] != "alias"]
        statuses += [c["Status"] for c in self._checks_of(self.node, None)]
        if CRITICAL in statuses:
            return CRITICAL, "Aliased service has a critical check"
        if WARNING in statuses:
            return WARNING, "Aliased service has a warning check"
        return PASSING, "All checks passing."

    def _recompute_aliases(self, idx: int) -> None:
        for cid, agent in self.agent_checks.items():
            if not agent.alias_service:
                continue
            chk = self.checks.get((self.node, cid))
            if chk is None:
                continue
            status, output = self._alias_status(agent.alias_service)
            self._upsert_check(idx, dict(_strip_indexes(chk), Status=status, Output=output))

    def expire_ttls(self) -> None:
        """Turn TTL checks whose TTL passed without an update critical ("TTL expired")."""
        with self.cond:
            now = self.clock()
            expired = [cid for cid, a in self.agent_checks.items() if a.ttl is not None and a.deadline is not None and a.deadline <= now]
            if not expired:
                return
            idx = self._begin()
            for cid in expired:
                self.agent_checks[cid].deadline = None  # fires once until the next update, as Consul's timer does
                chk = self.checks.get((self.node, cid))
                if chk is not None:
                    self._upsert_check(idx, dict(_strip_indexes(chk), Status=CRITICAL, Output="TTL expired"))
            self._recompute_aliases(idx)
            self._commit(idx)

    # ------------------------------------------------------------------ catalog writes
    def catalog_register(self, body: Any) -> None:
        if not isinstance(body, dict):
            raise DoubleError(400, "Request decode failed: body must be a JSON object")
        d = normalize(body)
        node = d.get("Node") or ""
        if not node:
            raise DoubleError(400, "Must provide node")
        if d.get("Datacenter") and d["Datacenter"] != self.datacenter:
            raise DoubleError(500, "No path to datacenter")
        skip = bool(d.get("SkipNodeUpdate"))
        address = d.get("Address") or ""
        if not address and not (skip and node in self.nodes):
            raise DoubleError(400, "Must provide address")
        svc = self._node_service(d["Service"], name_key="Service") if d.get("Service") else None
        raw_checks = ([d["Check"]] if d.get("Check") else []) + list(d.get("Checks") or [])
        node_meta = self._validate_meta(d.get("NodeMeta"), "Node")
        with self.cond:
            idx = self._begin()
            if not (skip and node in self.nodes):
                self._upsert_node(idx, node, address, tagged=d.get("TaggedAddresses"), meta=node_meta, node_id=d.get("ID"))
            if svc is not None:
                self._upsert_service(idx, node, svc)
            for raw in raw_checks:
                self._upsert_check(idx, self._catalog_check(node, raw))
            self._recompute_aliases(idx)
            self._commit(idx)

    def _catalog_check(self, node: str, raw: dict) -> dict:
        cid = raw.get("CheckID") or raw.get("Name") or ""
        if not cid:
            raise DoubleError(400, "Missing check ID")
        status = raw.get("Status") or CRITICAL
        if status not in CHECK_STATES:
            raise DoubleError(400, f"Invalid check status: {status!r}")
        sid = raw.get("ServiceID") or ""
        svc = self.services.get((raw.get("Node") or node, sid)) if sid else None
        if sid and svc is None:
            raise DoubleError(500, f'Unknown service ID "{sid}" for check ID "{cid}"')
        return {
            "Node": raw.get("Node") or node, "CheckID": cid, "Name": raw.get("Name") or cid, "Status": status,
            "Notes": raw.get("Notes") or "", "Output": raw.get("Output") or "", "ServiceID": sid,
            "ServiceName": svc["Service"] if svc else "", "ServiceTags": list(svc["Tags"]) if svc else [],
            "Type": raw.get("Type") or "", "Interval": "", "Timeout": "", "ExposedPort": 0,
            "Definition": dict(raw.get("Definition") or {}),
        }

    def catalog_deregister(self, body: Any) -> None:
        d = normalize(body) if isinstance(body, dict) else {}
        node = d.get("Node") or ""
        if not node:
            raise DoubleError(400, "Must provide node")
        with self.cond:
            idx = self._begin()
            if d.get("ServiceID"):
                self._delete_service(idx, node, d["ServiceID"])
            elif d.get("CheckID"):
                self._delete_check(idx, node, d["CheckID"])
            else:
                self._delete_node(idx, node)
            self._recompute_aliases(idx)
            self._commit(idx)

    # ------------------------------------------------------------------ renderings
    def node_json(self, name: str) -> dict:
        return copy.deepcopy(self.nodes[name])

    def service_json(self, node: str, svc: dict) -> dict:
        out = copy.deepcopy(svc)
        if not out.get("Kind"):
            out.pop("Kind", None)
        out["Datacenter"] = self.datacenter
        return out

    def catalog_service_json(self, node: str, svc: dict) -> dict:
        n = self.nodes[node]
        out = {
            "ID": n["ID"], "Node": node, "Address": n["Address"], "Datacenter": self.datacenter,
            "TaggedAddresses": dict(n["TaggedAddresses"]), "NodeMeta": dict(n["Meta"]),
            "ServiceKind": svc["Kind"], "ServiceID": svc["ID"], "ServiceName": svc["Service"],
            "ServiceTags": list(svc["Tags"]), "ServiceAddress": svc["Address"],
            "ServiceTaggedAddresses": copy.deepcopy(svc.get("TaggedAddresses") or {}),
            "ServiceWeights": dict(svc["Weights"]), "ServiceMeta": dict(svc["Meta"]), "ServicePort": svc["Port"],
            "ServiceEnableTagOverride": svc["EnableTagOverride"], "ServiceProxy": copy.deepcopy(svc["Proxy"]),
            "ServiceConnect": copy.deepcopy(svc["Connect"]), "CreateIndex": svc["CreateIndex"],
            "ModifyIndex": svc["ModifyIndex"],
        }
        return out

    def health_entry(self, node: str, svc: dict) -> dict:
        checks = self._checks_of(node, None) + self._checks_of(node, svc["ID"])
        return {"Node": self.node_json(node), "Service": self.service_json(node, svc), "Checks": copy.deepcopy(checks)}

    def instances(self, name: str, *, connect: bool = False) -> list[tuple[str, dict]]:
        """(node, service) pairs of service ``name``; with ``connect``, the proxies for it (and native instances)."""
        out = []
        for (node, _), svc in sorted(self.services.items()):
            if node not in self.nodes:
                continue
            if connect:
                is_proxy = svc["Kind"] == "connect-proxy" and svc["Proxy"].get("DestinationServiceName") == name
                native = svc["Service"] == name and (svc.get("Connect") or {}).get("Native")
                if not (is_proxy or native):
                    continue
            elif svc["Service"] != name:
                continue
            out.append((node, svc))
        return out

    def all_checks(self) -> list[dict]:
        return [copy.deepcopy(c) for _, c in sorted(self.checks.items())]

    # ------------------------------------------------------------------ index functions
    def idx_service(self, name: str) -> int:
        return self.service_idx.get(name) or self.tables["services"]

    def idx_connect(self, name: str) -> int:
        return self.connect_idx.get(name) or self.tables["services"]

    def idx_node(self, node: str) -> int:
        return self.node_idx.get(node) or self.tables["nodes"]

    def idx_kv(self, key: str, prefix: bool) -> int:
        if not prefix:
            entry = self.kv.get(key)
            if entry is not None:
                return entry["ModifyIndex"]
            return max(self.tables["kvs"], self.tombstones.get(key, 0))
        indexes = [e["ModifyIndex"] for k, e in self.kv.items() if k.startswith(key)]
        indexes += [i for k, i in self.tombstones.items() if k.startswith(key)]
        return max(indexes) if indexes else self.tables["kvs"]

    # ------------------------------------------------------------------ snapshot restore
    def reset_index(self, to: int = 1) -> int:
        """Make every index go back to at most ``to``, as after restoring an older snapshot."""
        with self.cond:
            to = max(1, int(to))
            if to >= self.index:
                raise ValueError(f"reset_index({to}) must go backwards: the current index is {self.index}")
            for records in (self.nodes.values(), self.services.values(), self.checks.values(), self.kv.values()):
                for rec in records:
                    rec["CreateIndex"] = min(rec["CreateIndex"], to)
                    rec["ModifyIndex"] = min(rec["ModifyIndex"], to)
            for table in (self.tables, self.service_idx, self.connect_idx, self.node_idx):
                for k in table:
                    table[k] = min(table[k], to)
            self._reset_config_entries(to)
            self._reset_sessions(to)
            self.tombstones.clear()
            self.index = to
            self.generation += 1
            self.notify()
            return to

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.notify()
