"""Central configuration entries (``/v1/config``) for the double, as Consul documents them.

* ``PUT /v1/config`` writes one entry (body: the entry with ``Kind`` and ``Name``); ``?cas=N`` writes only
  when the entry's ``ModifyIndex`` is N (0: only when it does not exist yet); answers ``true``/``false``;
* ``GET /v1/config/:kind`` lists a kind (sorted by name), ``GET /v1/config/:kind/:name`` reads one
  (404 ``Config entry not found for "kind" / "name"``); both are blocking queries on the config entries
  table's index (Consul's ``tableConfigEntries``) and report it in ``X-Consul-Index``;
* ``DELETE /v1/config/:kind/:name`` removes one; with ``?cas=N`` only when its ``ModifyIndex`` is N and then
  answers ``true``/``false``; without, answers ``{}`` (what Consul sends);
* bodies are decoded as Consul decodes config entries: field names case-insensitive and snake_case
  accepted (``protocol``, ``connect_timeout``), user-owned maps (``Meta``, ``Config``) kept as sent, map
  keys of ``Subsets``/``Failover`` kept; each entry gets ``CreateIndex``/``ModifyIndex``;
* ``service-intentions`` sources get the ``Precedence`` Consul computes and ``Type: "consul"``; an
  identical rewrite changes no index.

Validation is the subset of Consul's that a client can trip over: unknown kinds, a missing name, the
``global`` name of ``proxy-defaults``, an intention source with both ``Action`` and ``Permissions`` (or
neither), an unknown ``Protocol``. Anything else is stored as sent, as Consul stores fields it knows.
"""

from __future__ import annotations

import copy
from typing import Any, Callable


from ._errors import DoubleError

KINDS = ("service-defaults", "proxy-defaults", "service-router", "service-splitter", "service-resolver",
         "service-intentions", "ingress-gateway", "terminating-gateway", "mesh", "exported-services",
         "api-gateway", "http-route", "tcp-route", "inline-certificate", "jwt-provider")
PROTOCOLS = ("tcp", "http", "http2", "grpc")
_WILD = "*"


def intention_precedence(source: dict, destination_name: str, destination_ns: str = "default") -> int:
    """Consul's documented precedence: 9 (exact -> exact) down to 1 (``*/*`` -> ``*/*``)."""
    src_name, src_ns = source.get("Name") or "", source.get("Namespace") or "default"
    dst = 0 if destination_ns == _WILD else (1 if destination_name == _WILD else 2)
    src = 0 if src_ns == _WILD else (1 if src_name == _WILD else 2)
    return 3 * dst + src + 1


class ConfigEntriesMixin:
    """Config entries in :class:`~tests.consul_double._state.ConsulState` (which provides ``cond``, ``tables``,
    ``_begin``, ``_commit``)."""

    config_entries: dict[tuple[str, str], dict]
    tables: dict[str, int]
    cond: Any
    _last_write: int
    _begin: Callable[[], int]
    _commit: Callable[[int], None]

    def _init_config_entries(self) -> None:
        self.config_entries = {}
        self.tables["config-entries"] = 0

    def idx_config(self) -> int:
        return self.tables["config-entries"]

    @staticmethod
    def _check_entry(body: Any) -> dict:
        if not isinstance(body, dict):
            raise DoubleError(400, "Request decode failed: config entry must be a JSON object")
        # Consul's decoding of config entry keys, imported here: the double also runs standalone on the lab's
        # hosts (stdlib only, tests/lab/consul_stand_in.py), where nothing writes config entries.
        from meshcore.consul_entries.files import normalize_entry

        entry = normalize_entry(body)
        kind = str(entry.get("Kind") or "").lower()
        if not kind:
            raise DoubleError(400, "Request decode failed: Payload does not contain a Kind key at the top level")
        if kind not in KINDS:
            raise DoubleError(400, f"Request decode failed: invalid config entry kind: {kind}")
        entry["Kind"] = kind
        name = entry.get("Name")
        if not isinstance(name, str) or not name:
            raise DoubleError(500, "Name is required")
        if kind == "proxy-defaults" and name != "global":
            raise DoubleError(500, 'invalid name ("' + name + '"), only "global" is supported')
        if kind == "mesh" and name != "mesh":
            raise DoubleError(500, 'invalid name ("' + name + '"), only "mesh" is supported')
        protocol = entry.get("Protocol")
        if protocol is not None:
            if not isinstance(protocol, str) or protocol.lower() not in PROTOCOLS:
                raise DoubleError(500, f"Protocol {protocol!r} is invalid; expected one of: {', '.join(PROTOCOLS)}")
            entry["Protocol"] = protocol.lower()
        if kind == "service-intentions":
            ConfigEntriesMixin._check_intentions(entry)
        entry.pop("CreateIndex", None)
        entry.pop("ModifyIndex", None)
        return entry

    @staticmethod
    def _check_intentions(entry: dict) -> None:
        sources = entry.get("Sources")
        if not isinstance(sources, list):
            raise DoubleError(500, "Sources must be a list")
        seen = set()
        for i, src in enumerate(sources):
            if not isinstance(src, dict) or not src.get("Name"):
                raise DoubleError(500, f"Sources[{i}].Name is required")
            key = (src.get("Namespace") or "default", src["Name"], src.get("Peer") or "")
            if key in seen:
                raise DoubleError(500, f"Sources[{i}] defines {src['Name']!r} more than once")
            seen.add(key)
            action, perms = src.get("Action"), src.get("Permissions")
            if perms and action:
                raise DoubleError(500, f"Sources[{i}].Action must be omitted if Permissions are specified")
            if not perms and str(action or "").lower() not in ("allow", "deny"):
                raise DoubleError(500, f'Sources[{i}].Action must be set to "allow" or "deny"')
            if action:
                src["Action"] = str(action).lower()
            for j, perm in enumerate(perms or []):
                if not isinstance(perm, dict) or str(perm.get("Action") or "").lower() not in ("allow", "deny"):
                    raise DoubleError(500, f'Sources[{i}].Permissions[{j}].Action must be set to "allow" or "deny"')
                perm["Action"] = perm["Action"].lower()
                if not perm.get("HTTP"):
                    raise DoubleError(500, f"Sources[{i}].Permissions[{j}].HTTP is required")
            src.setdefault("Type", "consul")
            src["Precedence"] = intention_precedence(src, entry["Name"], entry.get("Namespace") or "default")

    def config_put(self, body: Any, cas: int | None) -> bool:
        entry = self._check_entry(body)
        key = (entry["Kind"], entry["Name"])
        with self.cond:
            old = self.config_entries.get(key)
            if cas is not None and ((cas == 0 and old is not None) or (cas != 0 and (old is None or old["ModifyIndex"] != cas))):
                return False
            if old is not None and {k: v for k, v in old.items() if k not in ("CreateIndex", "ModifyIndex")} == entry:
                return True  # nothing changed: no index moves (as Consul's state store)
            idx = self._begin()
            entry["CreateIndex"] = old["CreateIndex"] if old else idx
            entry["ModifyIndex"] = idx
            self.config_entries[key] = entry
            self.tables["config-entries"] = self._last_write = idx
            self._commit(idx)
            return True

    def config_delete(self, kind: str, name: str, cas: int | None) -> bool:
        with self.cond:
            old = self.config_entries.get((kind, name))
            if cas is not None and (old is None or old["ModifyIndex"] != cas):
                return False
            if old is None:
                return True
            idx = self._begin()
            del self.config_entries[(kind, name)]
            self.tables["config-entries"] = self._last_write = idx
            self._commit(idx)
            return True

    def config_get(self, kind: str, name: str) -> dict | None:
        entry = self.config_entries.get((kind, name))
        return copy.deepcopy(entry) if entry is not None else None

    def config_list(self, kind: str) -> list[dict]:
        return [copy.deepcopy(e) for (k, _), e in sorted(self.config_entries.items()) if k == kind]

    def _reset_config_entries(self, to: int) -> None:
        for entry in self.config_entries.values():
            entry["CreateIndex"] = min(entry["CreateIndex"], to)
            entry["ModifyIndex"] = min(entry["ModifyIndex"], to)


def _cas(api: Any) -> int | None:
    raw = api.req.arg("cas")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise DoubleError(400, f"Invalid cas index: {exc}") from exc


def _acl_of(kind: str) -> str:
    return {"proxy-defaults": "operator", "mesh": "operator", "service-intentions": "intentions"}.get(kind, "service")


class ConfigEntryRoutes:
    """The ``/v1/config`` endpoints, mixed into the double's ``_Api`` (``ROUTES`` registers them)."""

    ROUTES = (("PUT", r"/v1/config", "r_config_put"),
              ("GET", r"/v1/config/([^/]+)", "r_config_list"),
              ("GET", r"/v1/config/([^/]+)/(.+)", "r_config_get"),
              ("DELETE", r"/v1/config/([^/]+)/(.+)", "r_config_delete"))

    state: Any
    req: Any
    authorize: Callable[..., None]
    read: Callable[..., Any]
    blocking: Callable[..., tuple[int, Any]]

    def _config_reply(self, status: int, body: Any, index: int | None = None, raw: bool = False) -> Any:
        from ._http import Reply

        return Reply(status, body, index=index, raw=raw)

    def r_config_put(self) -> Any:
        body = self.req.json()
        kind = str((body or {}).get("Kind") or (body or {}).get("kind") or "") if isinstance(body, dict) else ""
        self.authorize(_acl_of(kind.lower()), "write", str((body or {}).get("Name") or "") if isinstance(body, dict) else "")
        return self._config_reply(200, self.state.config_put(body, _cas(self)))

    def r_config_list(self, kind: str) -> Any:
        self.authorize(_acl_of(kind), "read")
        if kind not in KINDS:
            raise DoubleError(400, f"invalid config entry kind: {kind}")
        return self.read(self.state.idx_config, lambda: self.state.config_list(kind))

    def r_config_get(self, kind: str, name: str) -> Any:
        self.authorize(_acl_of(kind), "read", name)
        if kind not in KINDS:
            raise DoubleError(400, f"invalid config entry kind: {kind}")
        index, entry = self.blocking(self.state.idx_config, lambda: self.state.config_get(kind, name))
        if entry is None:
            return self._config_reply(404, f'Config entry not found for "{kind}" / "{name}"', index=index, raw=True)
        return self._config_reply(200, entry, index=index)

    def r_config_delete(self, kind: str, name: str) -> Any:
        self.authorize(_acl_of(kind), "write", name)
        cas = _cas(self)
        deleted = self.state.config_delete(kind, name, cas)
        return self._config_reply(200, deleted if cas is not None else {})
