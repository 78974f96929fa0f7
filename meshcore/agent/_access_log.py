"""Policy decisions per caller, counted from this VM's Envoy JSON access log.

Envoy's RBAC counters know the destination and the deciding policy but not the caller; the access
log lines (:data:`meshcore.observe.telemetry.JSON_KEYS`) know all three. This module:

* finds where Envoy writes its log by asking Envoy itself (:func:`envoy_access_log_path`, from the
  admin ``/config_dump`` of its listeners): the path Envoy really writes, ``{node}`` already
  substituted, following the control plane's ``--access-log`` as it changes, with no new flag or
  API field to keep in step;
* follows that file like ``tail -F`` (:class:`LogTail`): only lines written after the agent started
  following, whole lines only, surviving rotation (a new inode at the path) and truncation
  (``copytruncate``: the file shrank below the read offset);
* counts inbound lines (:func:`decisions`): ``rbac_result == "denied"`` and AUDIT matches by
  (source service, destination service, policy), in a thread (:class:`AccessLogFollower`) so the
  agent's main loop never waits on the disk.

The source service is the ``sa`` part of the caller's SPIFFE ID when the caller is of the local
trust domain, the whole principal (``other.example/ns/default/sa/client``, Istio's spelling) when it
is not, and ``unauthenticated`` when there was no client certificate (plaintext under PERMISSIVE).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore.agent._net import admin_get
from meshcore.agent._series import ALLOW_NO_MATCH

log = logging.getLogger("meshcore.agent.access_log")

__all__ = ["LogTail", "AccessLogFollower", "PolicyCounts", "decisions", "source_service", "policy_label",
           "envoy_access_log_path", "ALLOW_NO_MATCH", "UNAUTHENTICATED", "OTHER"]

UNAUTHENTICATED = "unauthenticated"  # no client certificate: plaintext under PERMISSIVE/DISABLE
OTHER = "other"  # sources beyond the series cap
FILE_LOGGER_TYPE = "envoy.extensions.access_loggers.file.v3.FileAccessLog"
READ_CHUNK = 1 << 20
READ_BUDGET = 16 << 20  # bytes per read_lines(): a large backlog is counted over several polls
MAX_LINE = 64 * 1024  # longer "lines" are not access log lines: skipped up to the next newline
MAX_SERIES = 1000  # distinct (source, destination, policy) per kind before sources fold into "other"

_SPIFFE = re.compile(r"^spiffe://(?P<td>[^/]+)/ns/(?P<ns>[^/]+)/sa/(?P<sa>[^/]+)$")
_RULE_INDEX = re.compile(r"\[\d+\]$")

Key = tuple[str, str, str]  # (source_service, destination_service, policy)


# --- what one line says --------------------------------------------------------------------------

def _trust_domain(spiffe_id: Any) -> str | None:
    m = _SPIFFE.match(spiffe_id) if isinstance(spiffe_id, str) else None
    return m.group("td") if m else None


def source_service(source_id: Any, destination_id: Any = None) -> str:
    """The caller as a ``source_service`` label value (see the module docstring)."""
    if not isinstance(source_id, str) or not source_id or source_id == "-":
        return UNAUTHENTICATED
    m = _SPIFFE.match(source_id)
    local_td = _trust_domain(destination_id)
    if m and (local_td is None or m.group("td") == local_td):
        return m.group("sa")
    return source_id.removeprefix("spiffe://")


def policy_label(rule: Any) -> str:
    """``default/deny-post[0]`` (Envoy's policy id: one rule) -> ``default/deny-post``; none -> ALLOW_NO_MATCH."""
    if not isinstance(rule, str) or not rule or rule == "-":
        return ALLOW_NO_MATCH
    return _RULE_INDEX.sub("", rule)


def decisions(entry: Mapping[str, Any]) -> list[tuple[str, Key]]:
    """``[("denied" | "audited", (source, destination, policy))]`` that one access log line records.

    Only inbound lines count: the destination's Envoy is where policy is enforced (an outbound line
    of the same call would count it twice)."""
    if entry.get("direction") != "inbound":
        return []
    dst = entry.get("service") or "unknown"
    src = source_service(entry.get("source_spiffe_id"), entry.get("destination_spiffe_id"))
    out: list[tuple[str, Key]] = []
    if entry.get("rbac_result") == "denied":
        out.append(("denied", (src, str(dst), policy_label(entry.get("rbac_policy")))))
    audit = entry.get("audit_policy")
    if isinstance(audit, str) and audit and audit != "-":
        out.append(("audited", (src, str(dst), policy_label(audit))))
    return out


def parse_line(line: str) -> dict[str, Any] | None:
    """One JSON access log line as a dict; None for anything else (text format, garbage)."""
    try:
        entry = json.loads(line)
    except ValueError:
        return None
    return entry if isinstance(entry, dict) else None


# --- following one file --------------------------------------------------------------------------

class LogTail:
    """Whole new lines of the file at ``path``, like ``tail -F``; not thread-safe (one reader).

    The first file seen at ``path`` is read from its end when it already exists at the first
    :meth:`read_lines` (its earlier lines were counted by a previous run, or never will be), from
    its start when it appears later. After a rotation (the path names another inode, or nothing)
    the old file is read to its end, then the new one from its start. A file that shrank below the
    read offset was truncated in place: reading restarts at 0. A last line without its newline
    waits for the rest.
    """

    def __init__(self, path: str, *, from_start: bool = False, budget: int = READ_BUDGET):
        self.path = path
        self.budget = budget
        self._from_start = from_start
        self._first = True
        self._fd: int | None = None
        self._ident: tuple[int, int] | None = None
        self._pos = 0
        self._buf = b""
        self._skipping = False  # inside an over-long line
        self.rotations = 0
        self.truncations = 0
        self.skipped = 0  # over-long lines dropped

    @property
    def following(self) -> bool:
        """True while a file is open."""
        return self._fd is not None

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._first = False  # it appears later: everything in it is new
            return False
        st = os.fstat(fd)
        self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        self._pos = st.st_size if (self._first and not self._from_start) else 0
        self._first = False
        self._buf, self._skipping = b"", False
        return True

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self._ident, self._buf, self._skipping = None, None, b"", False

    def close(self) -> None:
        self._close()

    def _drain(self) -> tuple[list[str], bool]:
        """Lines from the open file, at most ``self.budget`` bytes of it; and whether its end was reached."""
        assert self._fd is not None
        budget = self.budget
        size = os.fstat(self._fd).st_size
        if size < self._pos:  # truncated in place (copytruncate)
            self.truncations += 1
            log.info("access log truncated; reading it from the start path=%s", self.path)
            self._pos, self._buf, self._skipping = 0, b"", False
        lines: list[str] = []
        while budget > 0:
            chunk = os.pread(self._fd, min(READ_CHUNK, budget), self._pos)
            if not chunk:
                return lines, True
            self._pos += len(chunk)
            budget -= len(chunk)
            lines.extend(self._split(chunk))
        return lines, False

    def _split(self, chunk: bytes) -> list[str]:
        *whole, rest = (self._buf + chunk).split(b"\n")
        out = []
        for raw in whole:
            if self._skipping:  # the end of an over-long line
                self._skipping = False
            elif raw:
                out.append(raw.decode("utf-8", errors="replace"))
        if self._skipping or len(rest) > MAX_LINE:
            if not self._skipping:
                self.skipped += 1
            self._skipping, rest = True, b""
        self._buf = rest
        return out

    def _rotated(self) -> bool:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ident

    def read_lines(self) -> list[str]:
        """Whole lines written since the last call, at most ``budget`` bytes' worth (the rest comes
        next time); raises OSError when the file cannot be read."""
        if self._fd is None and not self._open():
            return []
        try:
            lines, at_end = self._drain()
        except OSError:
            if not self._rotated():
                raise
            self._close()  # replaced by something else: follow that instead
            return self.read_lines()
        if at_end and self._rotated():
            more, _ = self._drain()  # whatever reached the old file before the switch
            self.rotations += 1
            log.info("access log rotated; following the new file path=%s", self.path)
            self._close()
            self._first = False
            if self._open():
                more += self._drain()[0]
            lines += more
        return lines


# --- counting -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PolicyCounts:
    """Counts from one access log (a copy, safe to read while counting goes on)."""

    path: str
    denied: Mapping[Key, float] = field(default_factory=dict)
    audited: Mapping[Key, float] = field(default_factory=dict)
    lines: int = 0  # inbound and outbound lines read
    unparsable: int = 0  # lines that were not JSON objects


class _Counter:
    def __init__(self, max_series: int):
        self.max_series = max_series
        self.counts: dict[str, dict[Key, float]] = {"denied": defaultdict(float), "audited": defaultdict(float)}
        self.lines = 0
        self.unparsable = 0

    def add_lines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.lines += 1
            entry = parse_line(line)
            if entry is None:
                self.unparsable += 1
                continue
            for kind, key in decisions(entry):
                table = self.counts[kind]
                if key not in table and len(table) >= self.max_series:
                    key = (OTHER, key[1], key[2])
                table[key] += 1


# --- where Envoy writes ---------------------------------------------------------------------------

def _file_logs(node: Any, out: set[str]) -> None:
    if isinstance(node, dict):
        if str(node.get("@type", "")).endswith(FILE_LOGGER_TYPE) and isinstance(node.get("path"), str):
            if "json_format" in (node.get("log_format") or {}):
                out.add(node["path"])
            return
        for value in node.values():
            _file_logs(value, out)
    elif isinstance(node, list):
        for value in node:
            _file_logs(value, out)


def envoy_access_log_path(admin: str, timeout: float = 2.0) -> str | None:
    """The JSON-lines file Envoy's listeners log to: a path, ``""`` when Envoy has listeners but logs
    no JSON to a file (off, ``stdout``, text format), None when Envoy did not answer or has no listener
    yet (ask again later)."""
    paths: set[str] = set()
    listeners = False
    for resource in ("dynamic_listeners", "static_listeners"):
        answer = admin_get(admin, f"/config_dump?resource={resource}", timeout)
        if answer is None:
            return None
        status, body = answer
        if status != 200:
            continue  # Envoy answers 404 when it has no listener of that kind
        try:
            data = json.loads(body)
        except ValueError:
            return None
        _file_logs(data, paths)
        listeners = listeners or bool(isinstance(data, dict) and data.get("configs"))
    if not listeners:
        return None  # no listener yet (Envoy starting): not the same as "no access log"
    if len(paths) > 1:
        log.warning("envoy logs to several files; counting policy decisions from the first paths=%s",
                    ",".join(sorted(paths)))
    return sorted(paths)[0] if paths else ""


# --- the thread -----------------------------------------------------------------------------------

class AccessLogFollower:
    """Follows the access log ``locate()`` names and counts policy decisions in its own thread.

    ``locate`` returns the path (``""``: no JSON file log, None: unknown now, keep the last answer);
    it is asked every ``rediscover`` seconds once Envoy answered (a path or ``""``), every second while
    it has not (Envoy starting), and the file is read every ``interval`` seconds. Each question costs
    Envoy a ``/config_dump`` of its listeners, so an answer is trusted for a while: the path only
    changes with the control plane's ``--access-log``.
    :meth:`counts` is None while no log is followed (then the RBAC counters are the only source).
    """

    def __init__(self, locate: Callable[[], str | None], *, interval: float = 1.0, rediscover: float = 30.0,
                 max_series: int = MAX_SERIES, budget: int = READ_BUDGET, clock: Callable[[], float] | None = None):
        import time

        self.budget = budget
        self._locate = locate
        self.interval = interval
        self.rediscover = rediscover
        self.max_series = max_series
        self._clock = clock or time.monotonic
        self._next_locate = 0.0
        self._answered = False  # Envoy said where it logs (a path, or "": nowhere we can read)
        self._lock = threading.Lock()
        self._tail: LogTail | None = None
        self._counter: _Counter | None = None
        self._error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "AccessLogFollower":
        self._thread = threading.Thread(target=self._run, name="access-log", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            if self._tail is not None:
                self._tail.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll()
            except Exception:  # a bug here must not end counting silently, nor the agent
                log.exception("access log follower failed; retrying")
            self._stop.wait(self.interval)

    def _follow(self, path: str) -> None:
        if self._tail is not None and self._tail.path == path:
            return
        if self._tail is not None:
            self._tail.close()
        if path:
            log.info("counting policy decisions per caller from envoy's access log path=%s", path)
            self._tail, self._counter, self._error = LogTail(path, budget=self.budget), _Counter(self.max_series), None
            try:  # position at the end now: what is written from here on is counted
                self._counter.add_lines(self._tail.read_lines())
            except OSError:
                pass  # poll() reports it
        else:
            if self._tail is not None:
                log.info("envoy no longer logs JSON to a file; policy denials fall back to its RBAC counters")
            self._tail, self._counter, self._error = None, None, None

    def poll(self) -> None:
        """One round: maybe ask where the log is, then read and count its new lines."""
        now = self._clock()
        if now >= self._next_locate:
            path = self._locate()
            if path is not None:
                self._answered = True
                with self._lock:
                    self._follow(path)
            # ask often until Envoy answered (it is starting), so few early lines go unread
            self._next_locate = now + (self.rediscover if self._answered else min(1.0, self.rediscover))
        tail, counter = self._tail, self._counter
        if tail is None or counter is None:
            return
        try:
            lines = tail.read_lines()
        except OSError as exc:
            message = f"cannot read the access log {tail.path}: {exc}"
            if message != self._error:
                log.warning("%s; policy denials fall back to envoy's RBAC counters (source_service=unknown) "
                            "until it is readable", message)
            self._error = message
            return
        if self._error is not None:
            log.info("access log readable again path=%s", tail.path)
            self._error = None
        with self._lock:
            counter.add_lines(lines)

    def counts(self) -> PolicyCounts | None:
        """The counts so far, or None when no access log is being followed."""
        with self._lock:
            tail, counter = self._tail, self._counter
            if tail is None or counter is None or self._error is not None:
                return None
            return PolicyCounts(path=tail.path, denied=dict(counter.counts["denied"]),
                                audited=dict(counter.counts["audited"]), lines=counter.lines,
                                unparsable=counter.unparsable)
