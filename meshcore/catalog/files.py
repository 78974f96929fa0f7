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
* Changes are found by re-scanning every ~200 ms: a cheap mtime+size fingerprint each time, and a
  content hash when the fingerprint moved (or at least once a second, to catch same-size edits
  within one timestamp tick). The index is a counter bumped only when the parsed catalog differs.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from pathlib import Path
from typing import Iterable

from meshcore.errors import CatalogError, FieldError, ValidationError

from .definitions import (
    DefinitionFile,
    NodeDefinition,
    build_node,
    definition_files,
    parse_definition,
)
from .model import Catalog, CatalogUpdate

log = logging.getLogger(__name__)

POLL_INTERVAL = 0.2
FULL_HASH_EVERY = 1.0  # seconds


class FileCatalogSource:
    """A :class:`~meshcore.catalog.source.CatalogSource` reading ``root/<node-dir>/*.json|*.hcl``."""

    def __init__(self, root: Path | str, poll_interval: float = POLL_INTERVAL):
        self.root = Path(root)
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        self._closed = False
        self._catalog: Catalog | None = None
        self._definitions: tuple[NodeDefinition, ...] = ()
        self._index = 0
        self._errors: tuple[FieldError, ...] = ()
        self._fingerprint: tuple | None = None
        self._content_hash: str | None = None
        self._last_full = 0.0
        self._parsed: dict[tuple[str, str], DefinitionFile | list[FieldError]] = {}

    # --- state ---------------------------------------------------------------------------

    @property
    def errors(self) -> tuple[FieldError, ...]:
        """Problems in the files as they are now (empty when the current files are all valid)."""
        return self._errors

    @property
    def definitions(self) -> tuple[NodeDefinition, ...]:
        """The node definitions behind the last good catalog (the agent's registration payloads come from these)."""
        return self._definitions

    @property
    def index(self) -> int:
        return self._index

    # --- scanning ------------------------------------------------------------------------

    def _files(self) -> list[tuple[str, Path, list[Path]]]:
        """``(dir name, dir, files)`` for every node directory, sorted."""
        out = []
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            files = definition_files(d)
            if files:
                out.append((d.name, d, files))
        return out

    def _scan(self) -> None:
        """Look at the files once; update catalog/index/errors if what they say changed."""
        if not self.root.is_dir():
            self._fingerprint = self._content_hash = None
            self._set_errors([FieldError(str(self.root), None, "", "catalog directory does not exist; create it with one sub-directory per node")])
            return
        try:
            layout = self._files()
            fingerprint = tuple(
                (name, f.name, st.st_mtime_ns, st.st_size)
                for name, _, files in layout
                for f in files
                for st in [f.stat()]
            )
        except OSError as exc:  # a file vanished mid-scan: look again next time
            log.debug("catalog scan raced with a change root=%s error=%s", self.root, exc)
            return
        now = time.monotonic()
        if fingerprint == self._fingerprint and now - self._last_full < FULL_HASH_EVERY:
            return
        self._fingerprint = fingerprint
        self._last_full = now

        texts: list[tuple[str, list[tuple[str, str]]]] = []
        h = hashlib.sha256()
        errors: list[FieldError] = []
        for name, _, files in layout:
            node_texts = []
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
                node_texts.append((source, text))
            texts.append((name, node_texts))
        digest = h.hexdigest()
        if digest == self._content_hash and not errors:
            return
        self._content_hash = digest
        self._rebuild(texts, errors)

    def _parse_cached(self, source: str, text: str) -> DefinitionFile | list[FieldError]:
        key = (source, hashlib.sha256(text.encode()).hexdigest())
        if key not in self._parsed:
            try:
                self._parsed[key] = parse_definition(text, source)
            except ValidationError as exc:
                self._parsed[key] = list(exc.errors)
        return self._parsed[key]

    def _rebuild(self, texts: list[tuple[str, list[tuple[str, str]]]], errors: list[FieldError]) -> None:
        live: set[tuple[str, str]] = set()
        nodes: list[NodeDefinition] = []
        owner: dict[str, str] = {}
        for dir_name, node_texts in texts:
            parsed: list[DefinitionFile] = []
            bad = False
            for source, text in node_texts:
                live.add((source, hashlib.sha256(text.encode()).hexdigest()))
                result = self._parse_cached(source, text)
                if isinstance(result, list):
                    errors.extend(result)
                    bad = True
                else:
                    parsed.append(result)
            if bad:
                continue
            try:
                node = build_node(parsed, dir_name, source=dir_name)
            except ValidationError as exc:
                errors.extend(exc.errors)
                continue
            if node.name in owner:
                errors.append(
                    FieldError(dir_name, None, "node_name", f"node name {node.name!r} is also used by directory {owner[node.name]!r}; node names must be unique")
                )
                continue
            owner[node.name] = dir_name
            nodes.append(node)
        self._parsed = {k: v for k, v in self._parsed.items() if k in live}

        if errors:
            self._set_errors(errors)
            return
        catalog = Catalog.of(
            (n.to_node() for n in nodes),
            (i for n in nodes for i in n.instances()),
        )
        self._set_errors([])
        self._definitions = tuple(sorted(nodes, key=lambda n: n.name))
        if catalog != self._catalog:
            self._catalog = catalog
            self._index += 1
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

    # --- CatalogSource -------------------------------------------------------------------

    def _update(self) -> CatalogUpdate:
        if self._catalog is None:
            raise ValidationError(self._errors or [FieldError(str(self.root), None, "", "no catalog yet")],
                                  summary=f"no valid catalog in {self.root} yet")
        return CatalogUpdate(catalog=self._catalog, index=self._index, extra={"errors": self._errors})

    def refresh(self) -> CatalogUpdate:
        """Scan now and return the current catalog (raises ValidationError while none is valid)."""
        with self._lock:
            self._scan()
            return self._update()

    def poll(self, index: int | None, wait: float) -> CatalogUpdate:
        """Return at once for ``index=None`` (or a stale index); else re-scan until the catalog changes or ``wait`` passes."""
        if self._closed:
            raise CatalogError(f"file catalog source for {self.root} is closed")
        deadline = time.monotonic() + max(wait, 0.0)
        with self._lock:
            self._scan()
            update = self._update()
        while index is not None and update.index == index and not self._closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(self.poll_interval, remaining))
            with self._lock:
                self._scan()
                update = self._update()
        return update

    def close(self) -> None:
        self._closed = True


__all__ = ["FileCatalogSource"]
