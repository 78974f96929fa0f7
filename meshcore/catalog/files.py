"""FileCatalogSource: the catalog from Consul service-definition files, for running without Consul.

Layout: one sub-directory of ``root`` per node, holding that node's ``/etc/consul.d`` files::

    root/vm1/agent.hcl          node_name = "vm1"  advertise_addr = "10.0.0.11"
    root/vm1/productpage.hcl    service { name = "productpage" ... connect { sidecar_service {} } }
    root/vm2/reviews.json       {"service": {...}}

The node name is ``node_name`` from its files (default: the directory name), its address
``advertise_addr`` (else ``bind_addr``). Directories without any ``*.json``/``*.hcl`` file and
hidden entries are skipped. See :mod:`meshcore.catalog.definitions` for what the files may hold.

Behaviour worth knowing:

* Files carry no live health, so every instance is reported healthy.
* The catalog is replaced whole or not at all: if any file is invalid, the last good catalog stays
  in effect, the problems are logged once (file and field path) and exposed as :attr:`errors`;
  the control plane keeps running. Until a first good catalog exists, :meth:`poll` raises
  :class:`~meshcore.errors.ValidationError`.
* Changes are noticed with inotify: a watch on ``root`` (node directories appearing, going) and one
  on each node directory. An event marks only its directory; that directory alone is read and
  parsed again (:data:`SETTLE` after its first event, so one editor save is one re-read), every
  other node's parsed definition is kept. A waiting :meth:`poll` sleeps on the inotify descriptor:
  an idle source costs no CPU. The index is a counter bumped only when the parsed catalog differs.
  Publishing is in proportion to the directories read too: their entries move in the sorted catalog and
  nothing else is looked at, while every file is valid and node names stay unique (otherwise every
  directory is checked, to report each problem and hold the last good catalog).
* Safety net and fallback: every :data:`RESCAN_INTERVAL` seconds (``poll_interval`` when inotify
  is not available: another OS, a full ``max_user_watches``, an exhausted instance limit) every
  file is ``stat``-ed and directories whose files' (inode, mtime, size) moved are re-read. On a
  filesystem whose remote changes inotify does not see (NFS), changes arrive at that pace.
* Waiting starts on the first :meth:`poll` with an index: one-shot readers (``poll(None, 0)``) never
  open an inotify instance.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from meshcore.errors import CatalogError, FieldError, ValidationError

from .definitions import DefinitionFile, NodeDefinition, build_node, definition_files, parse_definition
from .model import Catalog, CatalogUpdate, Node, ServiceInstance
from .source import SourceHealth

log = logging.getLogger(__name__)

POLL_INTERVAL = 2.0  # seconds between full rescans when inotify is not available
RESCAN_INTERVAL = 30.0  # seconds between full (stat-only) rescans while inotify works: the safety net
SETTLE = 0.01  # seconds to let a burst of events on one save arrive before reading the directory
CHANGES_KEPT = 64  # catalog versions whose changed services are remembered (for CatalogUpdate.changed_services)

try:  # Linux; elsewhere the source polls
    import inotify_simple
except ImportError:  # pragma: no cover - non-Linux platforms
    inotify_simple = None  # type: ignore[assignment]

if inotify_simple is not None:
    _F = inotify_simple.flags
    _ROOT_MASK = _F.CREATE | _F.DELETE | _F.MOVED_FROM | _F.MOVED_TO | _F.DELETE_SELF | _F.MOVE_SELF | _F.ONLYDIR
    _DIR_MASK = (_F.CREATE | _F.DELETE | _F.MODIFY | _F.CLOSE_WRITE | _F.MOVED_FROM | _F.MOVED_TO | _F.ATTRIB
                 | _F.DELETE_SELF | _F.MOVE_SELF | _F.ONLYDIR)


@dataclass
class _NodeDir:
    """What one node directory said when it was last read."""

    fingerprint: tuple = ()  # (file name, inode, mtime_ns, size) of each definition file
    content: str = ""  # hash over (source, text) of its files
    node: NodeDefinition | None = None
    errors: list[FieldError] = field(default_factory=list)
    parsed: dict[tuple[str, str], DefinitionFile | list[FieldError]] = field(default_factory=dict)  # (source, sha)
    entry: tuple[Node, tuple[ServiceInstance, ...]] | None = None  # what it adds to the catalog


class _Watcher:
    """inotify watches on the root and each node directory; ``drain()`` says which directories moved."""

    def __init__(self, root: Path):
        assert inotify_simple is not None
        self.root = root
        self.inotify = inotify_simple.INotify(nonblocking=True)
        self._wake_r, self._wake_w = os.pipe()
        self._dirs: dict[int, str] = {}  # watch descriptor -> directory name ("" is the root)
        self._wd_of: dict[str, int] = {}
        self.watch("")

    def watch(self, name: str) -> None:
        """Watch ``root/name`` (the root itself for ``""``); an existing watch is kept."""
        if name in self._wd_of:
            return
        path = self.root / name if name else self.root
        try:
            wd = self.inotify.add_watch(path, _ROOT_MASK if not name else _DIR_MASK)
        except FileNotFoundError:
            return  # gone already: its removal event comes, or the next rescan sees it
        self._dirs[wd] = name
        self._wd_of[name] = wd

    def unwatch(self, name: str) -> None:
        wd = self._wd_of.pop(name, None)
        if wd is not None:
            self._dirs.pop(wd, None)
            try:
                self.inotify.rm_watch(wd)
            except OSError:
                pass  # the kernel dropped it already (directory deleted)

    def drain(self) -> tuple[set[str], bool]:
        """(directories with events, whether everything must be rescanned), without blocking."""
        dirty: set[str] = set()
        full = False
        for event in self.inotify.read(timeout=0):
            if event.mask & _F.Q_OVERFLOW:
                full = True
                continue
            name = self._dirs.get(event.wd)
            if name is None:
                continue
            if event.mask & _F.IGNORED:  # the watched directory is gone
                self._dirs.pop(event.wd, None)
                if self._wd_of.get(name) == event.wd:
                    del self._wd_of[name]
                full = full or name == ""
                dirty.add(name)
                continue
            if name == "":
                if event.mask & (_F.DELETE_SELF | _F.MOVE_SELF):
                    full = True
                elif event.name:
                    dirty.add(event.name)  # a node directory appeared, went or was renamed
            else:
                dirty.add(name)
        return dirty, full

    def wait(self, timeout: float) -> None:
        """Sleep until an event arrives, :meth:`wake` is called, or ``timeout`` seconds pass."""
        ready, _, _ = select.select([self.inotify.fileno(), self._wake_r], [], [], max(timeout, 0.0))
        if self._wake_r in ready:
            os.read(self._wake_r, 64)
        elif ready and SETTLE:
            time.sleep(SETTLE)

    def wake(self) -> None:
        os.write(self._wake_w, b"x")

    def close(self) -> None:
        self.inotify.close()
        os.close(self._wake_r)
        os.close(self._wake_w)


class FileCatalogSource:
    """A :class:`~meshcore.catalog.source.CatalogSource` reading ``root/<node-dir>/*.json|*.hcl``."""

    def __init__(self, root: Path | str, poll_interval: float = POLL_INTERVAL,
                 rescan_interval: float = RESCAN_INTERVAL, use_inotify: bool = True):
        self.root = Path(root)
        self.poll_interval = poll_interval
        self.rescan_interval = rescan_interval
        self._use_inotify = use_inotify and inotify_simple is not None
        self._lock = threading.Lock()
        self._closed = False
        self._catalog: Catalog | None = None
        self._definitions: tuple[NodeDefinition, ...] | None = ()  # None: to sort again from _published_defs
        self._index = 0
        self._errors: tuple[FieldError, ...] = ()
        self._dirs: dict[str, _NodeDir] = {}
        # the published catalog, kept sorted and updated per directory instead of rebuilt and re-sorted
        self._published: dict[str, tuple[Node, tuple[ServiceInstance, ...]]] = {}
        self._published_defs: dict[str, NodeDefinition] = {}  # directory -> its definition in that catalog
        self._owner: dict[str, str] = {}  # node name -> the directory that defines it, in that catalog
        self._touched: set[str] | None = set()  # directories read or gone since the last publish; None: all
        self._nodes_sorted: list[Node] = []
        self._instances_sorted: list[ServiceInstance] = []
        self._watcher: _Watcher | None = None
        self._scanned = False  # a first full scan happened
        self._next_rescan = 0.0
        self._changed: set[str] = set()  # services of the directories read since the last published catalog
        self._changes: dict[int, frozenset[str]] = {}  # index -> services that may differ from index - 1
        self.reads = 0  # node directories read (and parsed when their content moved): for tests and benchmarks

    # --- state ---------------------------------------------------------------------------

    @property
    def errors(self) -> tuple[FieldError, ...]:
        """Problems in the files as they are now (empty when the current files are all valid)."""
        return self._errors

    @property
    def definitions(self) -> tuple[NodeDefinition, ...]:
        """The node definitions behind the last good catalog (the agent's registration payloads come from these)."""
        with self._lock:
            if self._definitions is None:
                self._definitions = tuple(sorted(self._published_defs.values(), key=lambda n: n.name))
            return self._definitions

    @property
    def index(self) -> int:
        return self._index

    @property
    def watching(self) -> bool:
        """True when changes arrive through inotify (False: the periodic rescan finds them)."""
        return self._watcher is not None

    # --- watching ------------------------------------------------------------------------

    def _start_watching(self) -> None:
        """Open inotify (once), watch root and every node directory, then rescan (catches what changed before)."""
        if self._watcher is not None or not self._use_inotify or not self.root.is_dir():
            return
        try:
            watcher = _Watcher(self.root)
            for d in self.root.iterdir():
                if not d.name.startswith(".") and d.is_dir():
                    watcher.watch(d.name)
        except OSError as exc:
            self._use_inotify = False
            log.warning("cannot watch the catalog directory with inotify (%s); rescanning every %.1f s instead "
                        "root=%s", exc, self.poll_interval, self.root)
            return
        self._watcher = watcher
        self._full_scan()

    # --- scanning ------------------------------------------------------------------------

    def _scan(self) -> None:
        """Bring the catalog up to date: the directories inotify named, or everything when due."""
        if not self.root.is_dir():
            self._dirs.clear()
            self._touched = None
            self._set_errors([FieldError(str(self.root), None, "",
                                         "catalog directory does not exist; create it with one sub-directory per node")])
            if self._watcher is not None:  # the root went: watch it again once it is back
                self._watcher.close()
                self._watcher = None
            return
        now = time.monotonic()
        if not self._scanned or now >= self._next_rescan:
            self._full_scan()
            return
        if self._watcher is None:
            return
        dirty, full = self._watcher.drain()
        if full:
            self._full_scan()
        elif dirty:
            for name in sorted(dirty):
                self._read_dir(name, force=True)
            self._publish()

    def _full_scan(self) -> None:
        """stat every definition file; re-read the directories whose files moved (and new/gone ones)."""
        self._scanned = True
        self._next_rescan = time.monotonic() + (self.rescan_interval if self._watcher else self.poll_interval)
        if self._watcher is not None:
            self._watcher.drain()  # everything is looked at now
        try:
            names = {d.name for d in self.root.iterdir() if not d.name.startswith(".") and d.is_dir()}
        except OSError as exc:
            log.debug("catalog scan raced with a change root=%s error=%s", self.root, exc)
            return
        for name in sorted(names | set(self._dirs)):
            self._read_dir(name, force=False)
        self._publish()

    def _read_dir(self, name: str, *, force: bool) -> None:
        """Re-read ``root/name``; parse again only when its content differs (``force``: skip the stat shortcut)."""
        path = self.root / name
        try:
            files = definition_files(path) if not name.startswith(".") and path.is_dir() else []
            fingerprint = tuple((f.name, st.st_ino, st.st_mtime_ns, st.st_size) for f in files for st in [f.stat()])
        except OSError:  # vanished mid-scan: its removal is seen next
            files, fingerprint = [], ()
        if self._watcher is not None:
            if files or path.is_dir():
                self._watcher.watch(name)
            else:
                self._watcher.unwatch(name)
        old = self._dirs.get(name)
        if not files:
            if old is not None:
                self._dirs.pop(name)
                self._touch(name)
                self._note_changed(old.node, None)
            return
        if old is not None and not force and old.fingerprint == fingerprint:
            return
        self.reads += 1
        texts: list[tuple[str, str]] = []
        errors: list[FieldError] = []
        h = hashlib.sha256()
        for f in files:
            source = f"{name}/{f.name}"
            try:
                text = f.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(FieldError(source, None, "", f"cannot read: {exc}"))
                continue
            h.update(source.encode() + b"\0" + hashlib.sha256(text.encode()).digest())
            texts.append((source, text))
        content = h.hexdigest()
        if old is not None and old.content == content and not errors and not old.errors:
            old.fingerprint = fingerprint
            return
        state = _NodeDir(fingerprint=fingerprint, content=content, errors=errors)
        parsed: list[DefinitionFile] = []
        for source, text in texts:
            key = (source, hashlib.sha256(text.encode()).hexdigest())
            result = old.parsed.get(key) if old is not None else None  # unchanged files are not parsed again
            if result is None:
                try:
                    result = parse_definition(text, source)
                except ValidationError as exc:
                    result = list(exc.errors)
            state.parsed[key] = result
            if isinstance(result, list):
                state.errors.extend(result)
            else:
                parsed.append(result)
        if not state.errors:
            try:
                state.node = build_node(parsed, name, source=name)
                state.entry = (state.node.to_node(), state.node.instances())
            except ValidationError as exc:
                state.errors.extend(exc.errors)
        self._dirs[name] = state
        self._touch(name)
        self._note_changed(old.node if old else None, state.node)

    def _touch(self, name: str) -> None:
        if self._touched is not None:
            self._touched.add(name)

    def _note_changed(self, old: NodeDefinition | None, new: NodeDefinition | None) -> None:
        for node in (old, new):
            if node is not None:
                self._changed.update(s.name for s in node.services)

    def _publish(self) -> None:
        """Publish what the directories read since the last publish changed: in proportion to those
        directories while every file is valid and node names stay unique; else :meth:`_publish_all`."""
        touched, self._touched = self._touched, set()
        if touched is None or self._errors or self._catalog is None:
            self._publish_all()
            return
        moved = []
        for name in touched:
            state = self._dirs.get(name)
            if state is not None and (state.errors or state.node is None):
                self._publish_all()  # it says why, and holds the last good catalog
                return
            if state is not None and state.node is not None and self._owner.get(state.node.name, name) != name:
                self._publish_all()  # a node name now defined twice
                return
            entry = state.entry if state is not None else None
            if entry != self._published.get(name):
                moved.append(name)
        changed, self._changed = frozenset(self._changed), set()
        if moved:
            self._apply_moved(moved, {name: self._dirs[name] for name in moved if name in self._dirs}, changed)

    def _publish_all(self) -> None:
        """Assemble the catalog from every directory's definition; whole or not at all."""
        self._touched = set()
        errors: list[FieldError] = []
        nodes: list[NodeDefinition] = []
        owner: dict[str, str] = {}
        for dir_name in sorted(self._dirs):
            state = self._dirs[dir_name]
            if state.errors:
                errors.extend(state.errors)
                continue
            node = state.node
            assert node is not None
            if node.name in owner:
                errors.append(
                    FieldError(dir_name, None, "node_name", f"node name {node.name!r} is also used by directory {owner[node.name]!r}; node names must be unique")
                )
                continue
            owner[node.name] = dir_name
            nodes.append(node)
        if errors:
            self._set_errors(errors)
            return
        self._set_errors([])
        current = {name: state for name, state in self._dirs.items() if state.entry is not None}
        moved = [name for name in current.keys() | self._published.keys()
                 if (current[name].entry if name in current else None) != self._published.get(name)]
        changed, self._changed = frozenset(self._changed), set()
        if not moved and self._catalog is not None:
            return
        self._apply_moved(moved, current, changed)

    def _apply_moved(self, moved: list[str], current: dict[str, _NodeDir], changed: frozenset[str]) -> None:
        """Move the ``moved`` directories' entries in the published catalog to what ``current`` holds (a
        directory not in it is gone), then publish the catalog if it differs."""
        for name in moved:
            old, state = self._published.pop(name, None), current.get(name)
            new = state.entry if state is not None else None
            if old is not None:
                _remove_sorted(self._nodes_sorted, old[0])
                for inst in old[1]:
                    _remove_sorted(self._instances_sorted, inst)
                if self._owner.get(old[0].name) == name:
                    del self._owner[old[0].name]
                self._published_defs.pop(name, None)
            if state is not None and new is not None:
                assert state.node is not None
                bisect.insort(self._nodes_sorted, new[0])
                for inst in new[1]:
                    bisect.insort(self._instances_sorted, inst)
                self._published[name] = new
                self._published_defs[name] = state.node
                self._owner[new[0].name] = name
        self._definitions = None
        # Catalog.of would sort again what is sorted already
        catalog = Catalog(nodes=tuple(self._nodes_sorted), instances=tuple(self._instances_sorted))
        if catalog != self._catalog:
            self._catalog = catalog
            self._index += 1
            self._changes[self._index] = changed
            self._changes.pop(self._index - CHANGES_KEPT, None)
            log.info(
                "file catalog changed root=%s index=%d nodes=%d instances=%d",
                self.root,
                self._index,
                len(catalog.nodes),
                len(catalog.instances),
            )

    def _set_errors(self, errors: Iterable[FieldError]) -> None:
        errors = tuple(errors)
        if errors == self._errors:
            return
        self._errors = errors
        if errors:
            kept = f"keeping the catalog at index {self._index}" if self._catalog is not None else "no valid catalog yet"
            for e in errors:
                log.error("catalog definition invalid source=%s path=%s error=%s (%s)", e.source, e.path or "-", e.message, kept)
        else:
            log.info("catalog definitions valid again root=%s", self.root)

    def health(self) -> SourceHealth:
        """``holding`` while a definition file is invalid (the last valid catalog is kept), each such file in
        ``rejected`` (``meshctl status`` shows them); else ``ok`` (``starting`` before the first valid read)."""
        errors = self._errors
        state = "holding" if errors and self._catalog is not None else (
            "ok" if self._catalog is not None else "starting")
        detail = f"{len(errors)} invalid definition file(s), keeping the last valid catalog" if errors else ""
        return SourceHealth(name="catalog", kind=f"files {self.root}", state=state, detail=detail,
                            index=self._index,
                            rejected=tuple((e.source + (f" {e.path}" if e.path else ""), e.message) for e in errors))

    # --- CatalogSource -------------------------------------------------------------------

    def _update(self, since: int | None = None) -> CatalogUpdate:
        if self._catalog is None:
            raise ValidationError(self._errors or [FieldError(str(self.root), None, "", "no catalog yet")],
                                  summary=f"no valid catalog in {self.root} yet")
        extra = {"errors": self._errors}
        # The engine's hint: which services may differ from the catalog at the index the caller holds.
        return CatalogUpdate(catalog=self._catalog, index=self._index, extra=extra,
                             changed_services=self.changed_services(since))

    def changed_services(self, since: int | None) -> frozenset[str] | None:
        """Services whose instances may differ between the catalog at index ``since`` and now
        (None: not known, e.g. ``since`` is None or too old)."""
        if since is None or since > self._index:
            return None
        out: set[str] = set()
        for i in range(since + 1, self._index + 1):
            if i not in self._changes:
                return None
            out |= self._changes[i]
        return frozenset(out)

    def refresh(self) -> CatalogUpdate:
        """Scan everything now and return the current catalog (raises ValidationError while none is valid)."""
        with self._lock:
            self._full_scan() if self.root.is_dir() else self._scan()
            return self._update()

    def poll(self, index: int | None, wait: float) -> CatalogUpdate:
        """Return at once for ``index=None`` (or a stale index); else wait for inotify events (or the
        next rescan) until the catalog changes or ``wait`` passes."""
        if self._closed:
            raise CatalogError(f"file catalog source for {self.root} is closed")
        deadline = time.monotonic() + max(wait, 0.0)
        with self._lock:
            if index is not None:
                self._start_watching()
            self._scan()
            update = self._update(index)
        while index is not None and update.index == index and not self._closed:
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                break
            watcher = self._watcher
            until_rescan = max(self._next_rescan - now, 0.0)
            if watcher is not None:
                try:
                    watcher.wait(min(remaining, until_rescan))
                except (OSError, ValueError):  # closed under us by close()
                    if self._closed:
                        break
                    raise
            else:
                time.sleep(min(remaining, until_rescan, self.poll_interval))
            if self._closed:
                break
            with self._lock:
                self._start_watching()
                self._scan()
                update = self._update(index)
        return update

    def close(self) -> None:
        self._closed = True
        with self._lock:
            if self._watcher is not None:
                self._watcher.wake()
                self._watcher.close()
                self._watcher = None


def _remove_sorted(items: list, item: object) -> None:
    i = bisect.bisect_left(items, item)
    if i < len(items) and items[i] == item:
        del items[i]
    else:  # not where the order says (equal-comparing neighbours): fall back to a scan
        items.remove(item)


__all__ = ["FileCatalogSource"]
