"""Sessions and KV locks for the double, as Consul's session and KV endpoints document them.

State (:class:`SessionsMixin`, mixed into :class:`~._state.ConsulState`):

* ``PUT /v1/session/create``: ``Name``, ``Node`` (default: the agent's node), ``LockDelay`` (a duration,
  default 15s, at most 60s; a bare number below 1000 counts as seconds, as Consul's ``FixupLockDelay``),
  ``Behavior`` (``release`` or ``delete``), ``TTL`` (``0s``/empty: none; else between ``session_ttl_min``,
  10s as in Consul, and 24h), ``NodeChecks`` (default ``["serfHealth"]``; the legacy ``Checks`` too) and
  ``ServiceChecks`` (``[{"ID": ...}]``). Creating one fails while a named check is missing or critical.
* invalidation (a check it names turns critical or goes away, its node goes, ``/destroy``, or its TTL passes
  unrenewed): every key it holds is released (``release``) or deleted (``delete``) and gets the session's
  lock-delay: ``?acquire`` on that key fails until the delay passed. A TTL session is invalidated
  ``2 x TTL`` after its last renewal: Consul documents that it may wait up to twice the TTL, so a client
  that relies on less is wrong against a real Consul too. ``?release`` sets no lock-delay.
* ``?acquire=<session>`` on a key: true when the key is free (``LockIndex`` + 1) or already held by that
  session (value updated, ``LockIndex`` kept); false when another session holds it or its lock-delay runs.
  ``?release=<session>``: true only for the holder. An unknown session is a 500 ``invalid session``.
  KV reads carry ``Session`` while a key is held. ``/v1/txn`` has the ``lock``, ``unlock`` and
  ``check-session`` verbs.

Routes (:class:`SessionRoutes`, mixed into the HTTP front): ``create``, ``destroy/:id``, ``renew/:id``,
``info/:id``, ``node/:node``, ``list``; the reads are blocking queries on the sessions table's index.
"""

from __future__ import annotations

import copy
import uuid
from typing import TYPE_CHECKING, Any, Callable

from ._durations import format_duration, parse_duration
from ._errors import DoubleError
from ._normalize import normalize

if TYPE_CHECKING:
    from ._http import Reply

DEFAULT_LOCK_DELAY = 15.0
MAX_LOCK_DELAY = 60.0
SESSION_TTL_MIN = 10.0  # Consul's session_ttl_min default
SESSION_TTL_MAX = 86400.0
TTL_MULTIPLIER = 2  # Consul's SessionTTLMultiplier: invalidated at most this many TTLs after the last renewal
SERF_CHECK = "serfHealth"
BEHAVIORS = ("release", "delete")
_FIELDS = {"name": "Name", "node": "Node", "lockdelay": "LockDelay", "behavior": "Behavior", "ttl": "TTL",
           "checks": "Checks", "nodechecks": "NodeChecks", "servicechecks": "ServiceChecks", "id": "ID",
           "namespace": "Namespace"}


def _canon(body: dict) -> dict:
    return {_FIELDS.get(k.replace("_", "").lower(), k): v for k, v in body.items()}


def _lock_delay(raw: Any) -> float:
    if raw is None or raw == "":
        return DEFAULT_LOCK_DELAY
    if isinstance(raw, (int, float)):
        seconds = float(raw) if raw < 1000 else raw / 1e9  # Consul's FixupLockDelay
    else:
        try:
            seconds = parse_duration(str(raw))
        except ValueError as exc:
            raise DoubleError(400, f"Request decode failed: invalid LockDelay {raw!r}: {exc}") from exc
    return min(max(seconds, 0.0), MAX_LOCK_DELAY)


class SessionsMixin:
    """Session records, lock-delays and invalidation. Needs the state's ``cond``, ``kv``, ``tombstones``,
    ``tables``, ``checks``, ``nodes``, ``node``, ``clock``, ``_begin``/``_commit`` and ``_last_write``."""

    cond: Any
    kv: dict[str, dict]
    tombstones: dict[str, int]
    tables: dict[str, int]
    checks: dict[tuple[str, str], dict]
    nodes: dict[str, dict]
    node: str
    clock: Callable[[], float]
    _last_write: int

    if TYPE_CHECKING:  # provided by ConsulState and KVMixin
        def _begin(self) -> int: ...
        def _commit(self, idx: int) -> None: ...
        def kv_json(self, entry: dict, with_value: bool = True) -> dict: ...

    def _init_sessions(self) -> None:
        self.sessions: dict[str, dict] = {}
        self.session_deadlines: dict[str, float] = {}  # TTL sessions: monotonic time they are invalidated at
        self.lock_delays: dict[str, float] = {}  # key -> monotonic time before which ?acquire fails
        self.session_ttl_min = SESSION_TTL_MIN
        self.tables["sessions"] = 0

    # ------------------------------------------------------------------ create / renew / destroy
    def session_create(self, body: Any) -> str:
        if body is not None and not isinstance(body, dict):
            raise DoubleError(400, "Request decode failed: session must be a JSON object")
        d = _canon(body or {})
        behavior = d.get("Behavior") or "release"
        if behavior not in BEHAVIORS:
            raise DoubleError(400, f"Invalid Behavior setting '{behavior}'")
        ttl_text = str(d.get("TTL") or "")
        ttl = 0.0
        if ttl_text:
            try:
                ttl = parse_duration(ttl_text)
            except ValueError as exc:
                raise DoubleError(400, f"Request decode failed: {exc}") from exc
            if ttl != 0 and not self.session_ttl_min <= ttl <= SESSION_TTL_MAX:
                raise DoubleError(400, f"TTL must be between [{format_duration(self.session_ttl_min)}] and "
                                       f"[{format_duration(SESSION_TTL_MAX)}]")
        node_checks = d.get("NodeChecks")
        if node_checks is None:
            node_checks = d.get("Checks") if d.get("Checks") is not None else [SERF_CHECK]
        service_checks = [normalize(c) for c in (d.get("ServiceChecks") or [])]
        node = d.get("Node") or self.node
        with self.cond:
            if node not in self.nodes:
                raise DoubleError(500, "Missing node registration")
            for cid in list(node_checks) + [c.get("ID") or "" for c in service_checks]:
                chk = self.checks.get((node, cid))
                if chk is None:
                    raise DoubleError(500, f"Missing check '{cid}' registration")
                if chk["Status"] == "critical":
                    raise DoubleError(500, f"Check '{cid}' is in critical state")
            idx = self._begin()
            sid = str(uuid.uuid4())
            self.sessions[sid] = {
                "ID": sid, "Name": d.get("Name") or "", "Node": node, "LockDelay": _lock_delay(d.get("LockDelay")),
                "Behavior": behavior, "TTL": ttl_text if ttl else "", "_ttl": ttl,
                "NodeChecks": [str(c) for c in node_checks],
                "ServiceChecks": [{"ID": c.get("ID") or "", "Namespace": c.get("Namespace") or ""}
                                  for c in service_checks] or None,
                "CreateIndex": idx, "ModifyIndex": idx,
            }
            if ttl:
                self.session_deadlines[sid] = self.clock() + TTL_MULTIPLIER * ttl
            self.tables["sessions"] = self._last_write = idx
            self._commit(idx)
            return sid

    def session_renew(self, sid: str) -> dict:
        with self.cond:
            session = self.sessions.get(sid)
            if session is None:
                raise DoubleError(404, f"Session id '{sid}' not found")
            if session["_ttl"]:
                self.session_deadlines[sid] = self.clock() + TTL_MULTIPLIER * session["_ttl"]
            return self.session_json(session)

    def session_destroy(self, sid: str) -> None:
        with self.cond:
            if sid not in self.sessions:
                return
            idx = self._begin()
            self._invalidate_session(idx, sid)
            self._commit(idx)

    def expire_sessions(self) -> None:
        """Invalidate every TTL session not renewed within ``2 x TTL`` (the double's ticker calls this)."""
        with self.cond:
            now = self.clock()
            expired = [sid for sid, deadline in self.session_deadlines.items() if deadline <= now]
            if not expired:
                return
            idx = self._begin()
            for sid in expired:
                self._invalidate_session(idx, sid)
            self._commit(idx)

    def _invalidate_session(self, idx: int, sid: str) -> None:
        """Delete the session inside the current write: release or delete its keys, start their lock-delay."""
        session = self.sessions.pop(sid, None)
        self.session_deadlines.pop(sid, None)
        if session is None:
            return
        now = self.clock()
        for key in [k for k, e in self.kv.items() if e.get("Session") == sid]:
            if session["LockDelay"] > 0:
                self.lock_delays[key] = now + session["LockDelay"]
            if session["Behavior"] == "delete":
                del self.kv[key]
                self.tombstones[key] = idx
            else:
                entry = self.kv[key]
                entry.pop("Session", None)
                entry["ModifyIndex"] = idx
            self.tables["kvs"] = idx
        self.tables["sessions"] = self._last_write = idx

    # ------------------------------------------------------------------ hooks from the catalog
    def _sessions_on_check(self, idx: int, node: str, check_id: str, status: str | None) -> None:
        """A check turned ``status`` (None: it was deleted): invalidate the sessions that name it."""
        if status not in (None, "critical"):
            return
        for sid, session in list(self.sessions.items()):
            if session["Node"] != node:
                continue
            named = set(session["NodeChecks"]) | {c["ID"] for c in session["ServiceChecks"] or ()}
            if check_id in named:
                self._invalidate_session(idx, sid)

    def _sessions_on_node_delete(self, idx: int, node: str) -> None:
        for sid in [sid for sid, s in self.sessions.items() if s["Node"] == node]:
            self._invalidate_session(idx, sid)

    def _reset_sessions(self, to: int) -> None:
        for session in self.sessions.values():
            session["CreateIndex"] = min(session["CreateIndex"], to)
            session["ModifyIndex"] = min(session["ModifyIndex"], to)

    # ------------------------------------------------------------------ KV locks
    def _require_session(self, sid: str) -> None:
        if sid not in self.sessions:
            raise DoubleError(500, f'invalid session "{sid}"')

    def _lock_entry(self, kv: dict, tomb: dict, key: str, value: bytes | None, flags: int, sid: str,
                    idx: int) -> bool:
        """``acquire`` against ``kv`` (the state's map or a transaction's copy); True when the session holds it."""
        self._require_session(sid)
        if self.lock_delays.get(key, 0.0) > self.clock():
            return False
        old = kv.get(key)
        if old is not None and old.get("Session") and old["Session"] != sid:
            return False
        lock_index = old["LockIndex"] if old is not None and old.get("Session") == sid else \
            (old["LockIndex"] if old is not None else 0) + 1
        kv[key] = {"Key": key, "Value": value, "Flags": int(flags or 0), "LockIndex": lock_index, "Session": sid,
                   "CreateIndex": old["CreateIndex"] if old is not None else idx, "ModifyIndex": idx}
        tomb.pop(key, None)
        return True

    def _unlock_entry(self, kv: dict, key: str, value: bytes | None, flags: int, sid: str, idx: int) -> bool:
        self._require_session(sid)
        old = kv.get(key)
        if old is None or old.get("Session") != sid:
            return False
        kv[key] = {"Key": key, "Value": value, "Flags": int(flags or 0), "LockIndex": old["LockIndex"],
                   "CreateIndex": old["CreateIndex"], "ModifyIndex": idx}
        return True

    def kv_lock(self, key: str, value: bytes, flags: int, cas: int | None, *, acquire: str | None,
                release: str | None) -> bool:
        """``PUT /v1/kv/<key>?acquire=`` or ``?release=`` (with an optional ``?cas``)."""
        if not key:
            raise DoubleError(400, "Missing key name")
        with self.cond:
            old = self.kv.get(key)
            if cas is not None and ((cas == 0 and old is not None) or (cas != 0 and (old is None or old["ModifyIndex"] != cas))):
                return False
            idx = self._begin()
            if acquire is not None:
                done = self._lock_entry(self.kv, self.tombstones, key, value, flags, acquire, idx)
            else:
                done = self._unlock_entry(self.kv, key, value, flags, release or "", idx)
            if done:
                self.tables["kvs"] = self._last_write = idx
                self._commit(idx)
            return done

    def _txn_session_verb(self, work: dict, tomb: dict, op: dict, idx: int) -> tuple[dict | None, bool]:
        """``lock``, ``unlock`` and ``check-session`` in ``/v1/txn`` (their errors are Consul's texts)."""
        verb, key, sid = op.get("Verb"), op.get("Key") or "", op.get("Session") or ""
        flags = int(op.get("Flags") or 0)
        if verb == "check-session":
            entry = work.get(key)
            if entry is None:
                raise DoubleError(404, f'key "{key}" doesn\'t exist')
            if entry.get("Session") != sid:
                raise DoubleError(409, f'key "{key}" is not locked by session "{sid}"')
            return self.kv_json(entry, with_value=False), False
        if verb == "lock":
            if not self._lock_entry(work, tomb, key, op.get("Value"), flags, sid, idx):
                raise DoubleError(409, f'failed to lock key "{key}", lock is already held')
        elif not self._unlock_entry(work, key, op.get("Value"), flags, sid, idx):
            raise DoubleError(409, f'failed to unlock key "{key}", lock isn\'t held, or is held by another session')
        return self.kv_json(work[key], with_value=False), True

    # ------------------------------------------------------------------ renderings
    @staticmethod
    def session_json(session: dict) -> dict:
        out = {k: copy.deepcopy(v) for k, v in session.items() if not k.startswith("_")}
        out["LockDelay"] = int(round(session["LockDelay"] * 1e9))  # nanoseconds, as Go's time.Duration
        out["Checks"] = list(session["NodeChecks"]) + [c["ID"] for c in session["ServiceChecks"] or ()]
        return out

    def sessions_json(self, node: str | None = None) -> list[dict]:
        return [self.session_json(s) for _, s in sorted(self.sessions.items(), key=lambda kv: kv[1]["CreateIndex"])
                if node is None or s["Node"] == node]


class SessionRoutes:
    """``/v1/session/*`` on the HTTP front (mixed into its ``_Api``; routes registered there)."""

    ROUTES = (
        ("PUT", r"/v1/session/create", "r_session_create"),
        ("PUT", r"/v1/session/destroy/([^/]+)", "r_session_destroy"),
        ("PUT", r"/v1/session/renew/([^/]+)", "r_session_renew"),
        ("GET", r"/v1/session/info/([^/]+)", "r_session_info"),
        ("GET", r"/v1/session/node/([^/]+)", "r_session_node"),
        ("GET", r"/v1/session/list", "r_session_list"),
    )

    state: Any
    req: Any

    if TYPE_CHECKING:  # provided by _Api
        def authorize(self, rule: str, access: str, name: str = "") -> None: ...
        def read(self, index_fn: Callable[[], int], render: Callable[[], Any], *,
                 not_found_if_none: bool = False) -> Reply: ...

    def _session_reply(self, status: int, body: Any) -> Reply:
        from ._http import Reply

        return Reply(status, body)

    def r_session_create(self) -> Reply:
        body = self.req.json()
        self.authorize("session", "write", self.state.node)
        return self._session_reply(200, {"ID": self.state.session_create(body)})

    def r_session_destroy(self, sid: str) -> Reply:
        self.authorize("session", "write", self.state.node)
        self.state.session_destroy(sid)
        return self._session_reply(200, True)

    def r_session_renew(self, sid: str) -> Reply:
        self.authorize("session", "write", self.state.node)
        return self._session_reply(200, [self.state.session_renew(sid)])

    def r_session_info(self, sid: str) -> Reply:
        self.authorize("session", "read")
        s = self.state
        return self.read(lambda: s.tables["sessions"],
                         lambda: [s.session_json(s.sessions[sid])] if sid in s.sessions else [])

    def r_session_node(self, node: str) -> Reply:
        self.authorize("session", "read", node)
        s = self.state
        return self.read(lambda: s.tables["sessions"], lambda: s.sessions_json(node))

    def r_session_list(self) -> Reply:
        self.authorize("session", "read")
        s = self.state
        return self.read(lambda: s.tables["sessions"], lambda: s.sessions_json())
