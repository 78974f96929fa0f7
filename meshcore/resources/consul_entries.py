"""Consul config entries as a source of mesh resources, beside the resource store (issue 15).

:class:`ConfigEntryStore` wraps the control plane's resource store (directory or Consul KV): it lists
and watches meshcore's own resources *plus* the resources compiled from Consul's config entries
(:func:`meshcore.consul_entries.compile_entries`), so the engine builds Envoy config from both through
the same code paths. Compiled resources carry ``metadata.labels`` ``mesh.io/origin: consul`` and
``mesh.io/consul-entry: <kind>.<name>`` (``meshctl get -o yaml`` shows them); writes go to the wrapped
store, and a write or delete of a compiled resource is refused with the Consul command to use instead.

Where the entries come from (an :class:`EntryWatcher`):

* :class:`ConsulEntryWatcher`: ``/v1/config/<kind>`` for each supported kind, each in its own blocking
  query (Consul has no endpoint across kinds), with the py-consul client and error translation the
  catalog source uses; an index that goes backwards re-reads at once; a failing kind keeps its last
  good entries, logs once, and retries with backoff;
* :class:`FileEntryWatcher`: ``*.json`` / ``*.hcl`` files in the form ``consul config write`` takes (the
  embedded default, where no Consul runs), re-read when a file changes.

The compiled set depends on meshcore's own resources (its own resource wins: see
:mod:`meshcore.consul_entries.compile`), the entries and the catalog (a source service's service
account makes its SPIFFE identity), so it is recompiled when any of them changes. Every finding (an
unsupported field, an overridden entry) is logged once when it appears, and kept in
:attr:`ConfigEntryStore.findings`.
"""

from __future__ import annotations

import builtins
import json
import logging
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from ..consul_entries import (
    ENTRY_KINDS,
    CatalogFacts,
    CompileOptions,
    ConfigEntry,
    Finding,
    compile_entries,
    entry_of,
    is_compiled,
    load_entry_files,
)
from ..consul_entries.defaults import EntryDefaults, entry_defaults, with_defaults
from ..errors import CatalogError, ConfigError, MeshError, StoreError
from .model import Resource, ResourceKey

log = logging.getLogger("meshcore.resources.consul_entries")

POLL_WAIT_S = 300.0  # one blocking query per kind waits this long at most (Consul's default wait is 5m)
FILE_POLL_S = 1.0  # how often the file watcher looks at the files' mtimes
CATALOG_CHECK_S = 0.5  # how often a blocked watch looks whether the catalog's identities changed
BACKOFF_MAX_S = 5.0  # a failing kind (or store) is retried at most this far apart: Consul back is seen soon
INNER_BACKOFF_MAX_S = 1.0  # the wrapped store's watch: the engine backs off on the error it is handed
FIRST_READ_S = 10.0  # the first watch waits this long for every kind's first read (no config without its entries)


class EntryWatcher(Protocol):
    """Where config entries come from: ``snapshot()`` is (entries, version); ``wait(version, timeout)``
    blocks until the version moves; ``start()`` / ``close()``."""

    def start(self) -> None: ...

    def close(self) -> None: ...

    def snapshot(self) -> tuple[list[ConfigEntry], int]: ...

    def wait(self, version: int, timeout: float) -> bool: ...

    def wait_ready(self, timeout: float) -> bool: ...

    def describe(self) -> str: ...


class _Versioned:
    """Entries by kind behind a condition; the version moves only when they change."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.version = 0
        self.entries: dict[str, list[ConfigEntry]] = {}
        self.errors: dict[str, str] = {}
        self.stopped = threading.Event()

    def set(self, kind: str, entries: list[ConfigEntry]) -> None:
        with self.cond:
            if self.errors.pop(kind, None) is not None:
                log.info("config entries of kind %s read again", kind)
            if self.entries.get(kind) != entries:
                self.entries[kind] = entries
                self.version += 1
                self.cond.notify_all()

    def failed(self, kind: str, message: str) -> None:
        with self.cond:
            if self.errors.get(kind) != message:
                log.warning("cannot read config entries (%s): %s; the mesh keeps the last ones read", kind, message)
            self.errors[kind] = message
            self.cond.notify_all()

    expected: tuple[str, ...] = ()

    def wait_ready(self, timeout: float) -> bool:
        """Wait until every kind was read (or failed) once; False if ``timeout`` passed first."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not all(k in self.entries or k in self.errors for k in self.expected) and not self.stopped.is_set():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
            return True

    def snapshot(self) -> tuple[list[ConfigEntry], int]:
        with self.cond:
            return [e for kind in sorted(self.entries) for e in self.entries[kind]], self.version

    def wait(self, version: int, timeout: float) -> bool:
        with self.cond:
            if self.version == version and not self.stopped.is_set():
                self.cond.wait(timeout)
            return self.version != version

    def close(self) -> None:
        self.stopped.set()
        with self.cond:
            self.cond.notify_all()


class ConsulEntryWatcher(_Versioned):
    """Config entries from Consul, one blocking query per kind (see the module docstring)."""

    def __init__(self, settings: Any, kinds: Sequence[str] = ENTRY_KINDS, *, wait_s: float = POLL_WAIT_S):
        super().__init__()
        self.settings = settings
        self.kinds = self.expected = tuple(kinds)
        self.wait_s = wait_s
        self._threads: list[threading.Thread] = []

    def describe(self) -> str:
        return f"Consul config entries at {self.settings.address}"

    def datacenter(self) -> str:
        """The datacenter the entries live in (CONSUL_DATACENTER, else the agent's; ``dc1`` if unknown)."""
        if self.settings.datacenter:
            return str(self.settings.datacenter)
        try:
            from ..catalog._consul_calls import consul_errors

            with consul_errors(self.settings, "reading the agent's datacenter (/v1/agent/self)"):
                return str(self.settings.client().agent.self()["Config"]["Datacenter"])
        except (MeshError, KeyError, TypeError) as exc:
            log.warning("cannot learn Consul's datacenter (%s); resolver failover assumes dc1", exc)
            return "dc1"

    def read(self, client: Any, kind: str, index: int = 0, wait: float = 0.0) -> tuple[list[ConfigEntry], int]:
        """``GET /v1/config/<kind>`` (blocking past ``index`` for up to ``wait`` seconds): (entries, index)."""
        from ..catalog._consul_calls import check, consul_errors, raw

        params: list[tuple[str, Any]] = []
        if index > 0:
            params += [("index", index), ("wait", f"{max(1, int(wait * 1000))}ms")]
        doing = f"reading {kind} config entries (/v1/config/{kind})"
        with consul_errors(self.settings, doing):
            response = check(raw(client, "GET", f"/v1/config/{kind}", params=params), self.settings, doing)
        body = json.loads(response.body or "[]") or []
        new_index = max(1, int(response.headers.get("X-Consul-Index") or 1))
        return [entry_of(e, "consul") for e in body if isinstance(e, dict)], new_index

    def start(self) -> None:
        if self._threads:
            return
        for kind in self.kinds:
            t = threading.Thread(target=self._loop, args=(kind,), name=f"consul-config-{kind}", daemon=True)
            self._threads.append(t)
            t.start()

    def _loop(self, kind: str) -> None:
        client = self.settings.client()
        index, backoff = 0, 0.5
        while not self.stopped.is_set():
            try:
                entries, new_index = self.read(client, kind, index, self.wait_s)
            except (MeshError, ValueError) as exc:
                self.failed(kind, str(exc))
                index = 0  # read at once when Consul answers again (it may have restarted below our index)
                self.stopped.wait(backoff)
                backoff = min(BACKOFF_MAX_S, backoff * 2)
                client = self.settings.client()
                continue
            backoff = 0.5
            if new_index < index:
                log.warning("Consul's config entry index went backwards (%d -> %d): re-reading %s", index, new_index,
                            kind)
            index = new_index if new_index >= index else 0
            self.set(kind, entries)

    def close(self) -> None:
        super().close()
        self._threads = []


class FileEntryWatcher(_Versioned):
    """Config entries from files (``consul config write``'s JSON/HCL), re-read when one changes."""

    def __init__(self, paths: Sequence[str | Path], *, poll_s: float = FILE_POLL_S):
        super().__init__()
        self.paths = [Path(p) for p in paths]
        self.poll_s = poll_s
        self._thread: threading.Thread | None = None
        self._signature: tuple = ()
        self._load()

    def describe(self) -> str:
        return "config entry files " + ", ".join(map(str, self.paths))

    def _current_signature(self) -> tuple:
        sig = []
        for p in self.paths:
            files = sorted(p.glob("*")) if p.is_dir() else [p]
            for f in files:
                try:
                    st = f.stat()
                except OSError:
                    continue
                sig.append((str(f), st.st_mtime_ns, st.st_size))
        return tuple(sig)

    def _load(self) -> None:
        self._signature = self._current_signature()
        existing = [p for p in self.paths if p.exists()]
        try:
            entries = load_entry_files(existing)
        except MeshError as exc:
            self.failed("files", str(exc))
            return
        self.set("files", entries)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="config-entry-files", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self.stopped.wait(self.poll_s):
            if self._current_signature() != self._signature:
                self._load()


@dataclass(frozen=True)
class EntrySettings:
    """``--consul-config-entries`` and ``--consul-intentions-default``."""

    source: str = "auto"  # auto (consul when the catalog is Consul), consul, files:DIR[,DIR], off
    default_intention: str = "allow"


def add_arguments(parser: Any, env: Any) -> None:
    """The control plane's flags for config entries (the daemon calls this)."""
    parser.add_argument("--consul-config-entries", default=env.get("MESHCORE_CONSUL_CONFIG_ENTRIES", "auto"),
                        help="Consul config entries as mesh configuration: auto (read Consul's when --catalog is "
                             "consul), consul, files:DIR (JSON/HCL as `consul config write` takes), off "
                             "(default %(default)s; see docs/consul.md)")
    parser.add_argument("--consul-intentions-default", choices=("allow", "deny"),
                        default=env.get("MESHCORE_CONSUL_INTENTIONS_DEFAULT", "allow"),
                        help="what a request no intention decides gets, as Consul's ACL default policy "
                             "(default %(default)s, Consul's own with ACLs off)")


def entry_settings(args: Any) -> EntrySettings:
    return EntrySettings(source=getattr(args, "consul_config_entries", "auto") or "auto",
                         default_intention=getattr(args, "consul_intentions_default", "allow") or "allow")


def open_watcher(settings: EntrySettings, catalog_spec: str) -> EntryWatcher | None:
    """The watcher ``settings`` ask for (None: off)."""
    source = settings.source.strip()
    if source == "off" or (source == "auto" and not catalog_spec.startswith("consul")):
        return None
    if source in ("auto", "consul"):
        from ..catalog._consul_settings import ConsulSettings

        return ConsulEntryWatcher(ConsulSettings.from_env())
    if source.startswith("files:") and source[6:]:
        return FileEntryWatcher(source[6:].split(","))
    raise ConfigError(f"--consul-config-entries {source!r}: use auto, consul, files:DIR or off")


class ConfigEntryStore:
    """A resource store with the resources compiled from config entries laid over it (module docstring)."""

    def __init__(self, inner: Any, watcher: EntryWatcher, *, trust_domain: str = "cluster.local",
                 default_intention: str = "allow", datacenter: str = "dc1",
                 catalog: Callable[[], Any] = lambda: None):
        self.inner = inner
        self.watcher = watcher
        self._options = dict(trust_domain=trust_domain, default_intention=default_intention, datacenter=datacenter)
        self._catalog_fn = catalog
        self._lock = threading.Condition()
        self._inner_state: tuple[list[Resource], int] | None = None
        self._inner_error: BaseException | None = None
        self._inner_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._version = 0
        self._memo: tuple[Any, ...] = ()
        self._last: tuple[Any, int] = (None, 0)
        self._reread = False  # the last watch raised: the next one returns at once  # (what the merged set was made of, the version handed out)
        self._compiled: tuple[Resource, ...] = ()
        self.findings: tuple[Finding, ...] = ()
        self._catalog_obj: Any = None
        self._facts = CatalogFacts()
        self._facts_key = self._facts.fingerprint()  # computed once per catalog, not per look

    def __getattr__(self, name: str) -> Any:  # health(), restore(), recover(), path_of(), ... of the wrapped store
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    # ------------------------------------------------------------------ compile
    def _facts_now(self) -> CatalogFacts:
        catalog = self._catalog_fn()
        if catalog is not self._catalog_obj:
            self._catalog_obj = catalog
            self._facts = CatalogFacts.of(catalog)
            self._facts_key = self._facts.fingerprint()
        return self._facts

    def compiled(self, own: Sequence[Resource], own_version: int | None = None) -> tuple[Resource, ...]:
        """The resources compiled from the current entries over ``own`` (memoized on what they depend on;
        ``own_version`` stands for ``own`` when the caller knows it)."""
        entries, version = self.watcher.snapshot()
        facts = self._facts_now()
        own_id: Any = own_version if own_version is not None else tuple(r.canonical_json() for r in own)
        memo = (version, own_id, self._facts_key)
        if memo == self._memo:
            return self._compiled
        options = CompileOptions(catalog=facts, **self._options)  # type: ignore[arg-type]
        result = compile_entries(entries, options, own)
        new = [f for f in result.findings if f not in set(self.findings)]
        for f in new:
            (log.info if f.severity == "note" else log.warning)("consul config entry %s", f)
        self._memo, self._compiled, self.findings = memo, result.resources, result.findings
        log.info("compiled %d Consul config entries into %d resources (%d findings) source=%s", len(entries),
                 len(result.resources), len(result.findings), self.watcher.describe())
        return self._compiled

    def _merge(self, own: builtins.list[Resource], own_version: int | None = None) -> builtins.list[Resource]:
        own_keys = {r.key for r in own}
        compiled = self.compiled(own, own_version)
        return sorted(own + [r for r in compiled if r.key not in own_keys], key=lambda r: r.key.path)

    def health(self) -> Any:
        """The wrapped store's health (its counts are its own: what ``store restore`` would write back), its
        location naming where the entries come from too (``meshctl status`` and ``meshctl store status`` show
        it), with the kinds that cannot be read, the findings and the compiled resources counted."""
        import dataclasses

        from .store import store_health

        inner = store_health(self.inner)
        errors = getattr(self.watcher, "errors", {}) or {}
        extra = self.watcher.describe()
        if errors:
            extra += f" (unreadable: {', '.join(sorted(errors))}: {next(iter(errors.values()))[:160]})"
        if self.findings:
            extra += f" ({len(self.findings)} findings: meshctl consul check)"
        extra += f" ({len(self._compiled)} compiled resources)"
        return dataclasses.replace(inner, location=f"{inner.location} + {extra}".strip(" +"))

    # ------------------------------------------------------------------ ResourceStore
    def list(self) -> builtins.list[Resource]:
        return self._merge(self.inner.list())

    def _refuse_compiled(self, keys: Sequence[ResourceKey], doing: str) -> None:
        compiled = {r.key: r for r in self._compiled}
        own = {r.key for r in self.inner.list()}
        for key in keys:
            if key in compiled and key not in own:
                entry = dict(compiled[key].labels).get("mesh.io/consul-entry", "")
                raise StoreError(f"{key} is compiled from Consul config entry {entry or '(unknown)'}: {doing} it in "
                                 "Consul (`consul config write` / `consul config delete`), or take it over with "
                                 "`meshctl consul import` (docs/consul.md)")

    def apply(self, resources: Sequence[Resource], *args: Any, **kwargs: Any) -> None:
        self._refuse_compiled([r.key for r in resources if is_compiled(r)], "change")
        self.inner.apply([r for r in resources], *args, **kwargs)

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:
        self._refuse_compiled(keys, "delete")
        return self.inner.delete(keys)

    def _inner_loop(self) -> None:
        index: int | None = None
        backoff = 0.5
        while not self._stopped.is_set():
            try:
                resources, index = self.inner.watch(index, POLL_WAIT_S if index is not None else 0)
            except Exception as exc:  # noqa: BLE001 - handed to the engine's watch, which reports and retries
                with self._lock:
                    self._inner_error = exc
                    self._lock.notify_all()
                self._stopped.wait(backoff)
                backoff = min(INNER_BACKOFF_MAX_S, backoff * 2)
                index = None
                continue
            backoff = 0.5
            with self._lock:
                changed = self._inner_state is None or self._inner_state[0] != resources
                self._inner_state, self._inner_error = (resources, index), None
                if changed:
                    self._version += 1
                self._lock.notify_all()

    def _start(self) -> None:
        if self._inner_thread is None:
            self.watcher.start()
            self._inner_thread = threading.Thread(target=self._inner_loop, name="resource-store-watch", daemon=True)
            self._inner_thread.start()

    def watch(self, index: int | None, wait: float) -> tuple[builtins.list[Resource], int]:
        """Block until meshcore's own resources, the entries or the catalog's identities changed past ``index``."""
        if self._inner_thread is None:
            self._start()
            if not self.watcher.wait_ready(FIRST_READ_S):
                log.warning("config entries not read within %.0fs (%s); building without them for now", FIRST_READ_S,
                            self.watcher.describe())
        deadline = time.monotonic() + max(0.0, wait)
        # After an error the caller's next watch answers at once (as the stores' own watches do): its error
        # clears now, not after a whole wait at an index whose contents did not change.
        reread, self._reread = self._reread, False
        while True:
            with self._lock:
                while self._inner_state is None and self._inner_error is None:
                    self._lock.wait(CATALOG_CHECK_S)
                if self._inner_error is not None:
                    self._reread = True
                    raise self._inner_error  # the engine reports the store's error and retries, as without entries
                assert self._inner_state is not None
                own = list(self._inner_state[0])
                inner_version = self._version
            entries_version = self.watcher.snapshot()[1]
            merged = self._merge(own, inner_version)
            key = (inner_version, self._memo)
            if key != self._last[0]:
                self._last = (key, self._last[1] + 1)
            version = self._last[1]
            if index is None or reread or version != index or time.monotonic() >= deadline:
                return merged, version
            self.watcher.wait(entries_version, min(CATALOG_CHECK_S, max(0.0, deadline - time.monotonic())))

    def close_entries(self) -> None:
        """Stop watching entries and the wrapped store (the wrapped store itself stays open)."""
        self._stopped.set()
        self.watcher.close()


class ProtocolDefaultsSource:
    """A catalog source whose instances carry the protocol ``service-defaults`` / ``proxy-defaults`` set
    (:func:`meshcore.consul_entries.protocols.with_protocols`: an instance's own meta ``protocol`` wins), and
    whose upstreams carry the mesh gateway modes they set (:mod:`meshcore.consul_entries.gateway_modes`).

    The wrapped source's blocking poll runs in a thread of its own, so a poll also returns as soon as the
    entries change what any service's protocol is (the last catalog again, under the same index; the engine
    compares content). Without protocol entries the wrapped source's catalog passes through unchanged.
    """

    def __init__(self, inner: Any, watcher: EntryWatcher):
        self.inner = inner
        self.watcher = watcher
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._threads: builtins.list[threading.Thread] = []
        self._request: tuple[int | None, float] | None = None  # the poll the poller runs (or will)
        self._result: tuple[Any, BaseException | None] | None = None  # its outcome, until a poll takes it
        self._last: Any = None  # the wrapped source's last update
        self._protocols = entry_defaults(watcher.snapshot()[0])  # what the entries say now (protocols, gateways)
        self._applied = EntryDefaults()  # what the last catalog handed out was given

    def __getattr__(self, name: str) -> Any:  # health() and the rest of the wrapped source
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _stopped(self) -> bool:
        stopped = getattr(self.watcher, "stopped", None)
        return self._stop.is_set() or bool(stopped is not None and stopped.is_set())

    def _start(self) -> None:
        if not self._threads:
            for target, name in ((self._poll_loop, "catalog-poll"), (self._entries_loop, "catalog-protocols")):
                thread = threading.Thread(target=target, name=name, daemon=True)
                thread.start()
                self._threads.append(thread)

    def _poll_loop(self) -> None:
        while True:
            with self._cond:
                while (self._request is None or self._result is not None) and not self._stopped():
                    self._cond.wait(1.0)
                if self._stopped():
                    return
                assert self._request is not None
                request = self._request
            update, error = None, None
            try:
                update = self.inner.poll(*request)
            except Exception as exc:  # noqa: BLE001 - raised from poll() in the engine's thread
                error = exc
            with self._cond:
                self._result = (update, error)
                self._cond.notify_all()

    def _entries_loop(self) -> None:
        entries, version = self.watcher.snapshot()
        while not self._stopped():
            if not self.watcher.wait(version, 1.0):
                continue
            entries, version = self.watcher.snapshot()
            protocols = entry_defaults(entries)
            with self._cond:
                if protocols != self._protocols:
                    log.info("catalog defaults from config entries changed: %s", protocols.describe())
                    self._protocols = protocols
                    self._cond.notify_all()

    def _handed(self, update: Any) -> Any:
        protocols = self._protocols
        hint = update.changed_services if protocols == self._applied else None
        self._applied = protocols
        return replace(update, catalog=with_defaults(update.catalog, protocols), changed_services=hint)

    def poll(self, index: int | None, wait: float) -> Any:
        self._start()
        deadline = time.monotonic() + max(0.0, wait) * 1.1 + 1.0  # the wrapped poll's own deadline comes first
        with self._cond:
            if self._request is None or (self._result is not None and self._request[0] != index):
                self._request, self._result = (index, wait), None
                self._cond.notify_all()
            while True:
                if self._result is not None:
                    update, error = self._result
                    self._request = self._result = None
                    if error is not None:
                        raise error
                    self._last = update
                    return self._handed(update)
                if self._last is not None and index is not None and self._protocols != self._applied:
                    return self._handed(self._last)  # the pending poll stays: the next one takes it over
                left = deadline - time.monotonic()
                if self._stopped() or (left <= 0 and self._last is not None):
                    if self._last is None:
                        raise CatalogError("the catalog source was closed before its first read")
                    return self._handed(self._last)
                self._cond.wait(max(0.01, min(left, 1.0)))

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()


def with_protocol_defaults(source: Any, store: Any) -> Any:
    """``source`` taking service protocols from the config entries ``store`` reads (``source`` itself when the
    store reads no entries)."""
    if not isinstance(store, ConfigEntryStore):
        return source
    return ProtocolDefaultsSource(source, store.watcher)


def with_config_entries(store: Any, settings: EntrySettings, *, catalog_spec: str, trust_domain: str,
                        catalog: Callable[[], Any]) -> Any:
    """``store`` with Consul config entries laid over it, or ``store`` itself when they are off."""
    watcher = open_watcher(settings, catalog_spec)
    if watcher is None:
        return store
    datacenter = watcher.datacenter() if isinstance(watcher, ConsulEntryWatcher) else "dc1"
    log.info("mesh configuration also from %s (intentions default %s)", watcher.describe(), settings.default_intention)
    return ConfigEntryStore(store, watcher, trust_domain=trust_domain, default_intention=settings.default_intention,
                            datacenter=datacenter, catalog=catalog)


__all__ = ["ConfigEntryStore", "ConsulEntryWatcher", "EntrySettings", "EntryWatcher", "FileEntryWatcher",
           "ProtocolDefaultsSource", "add_arguments", "entry_settings", "open_watcher", "with_config_entries",
           "with_protocol_defaults"]
