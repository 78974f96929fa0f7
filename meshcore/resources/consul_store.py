"""Mesh resources in Consul KV: replicated, watchable, written all-or-nothing, losses held.

Layout under the prefix ``P`` (default ``meshcore/resources/``)::

    P<Kind>/<namespace>/<name>        canonical JSON of one resource (Resource.canonical_json())
    P.meshcore/generation             {"generation": N}: bumped (CAS) by every apply/delete/restore
    P.meshcore/journal                {"id", "parts", "generation"}: only while a large change rolls forward
    P.meshcore/journal/<id>/<i>       part i of that change: {"set": {key: document}, "delete": [key]}

**All or nothing.** A change that fits one ``/v1/txn`` (64 operations: Consul documents 128, older releases
allowed 64, meshcore stays within both; and 512 KB of body by default, ``limits.txn_max_req_len``) is one transaction: the resource keys, the generation CAS
and a ``check-not-exists`` on the journal. A larger one is a redo journal: its parts are written
first (invisible to readers), then one transaction *commits* it (CAS on the generation, the journal
key, a ``get`` of every part so a part removed meanwhile rolls the commit back), then the resource
keys are rewritten in batches and the journal removed in the last one. Every reader reads the whole
prefix in one consistent blocking query and, while a committed journal is there, lays it over the
resource keys: it sees the old set before the commit and the new set from the commit on, never a
mix, whatever point a writer died at. The next writer (or the control plane's first read) finishes a
committed journal and removes the parts of uncommitted ones.

**Lost data.** With a :class:`~meshcore.resources._last_applied.LastApplied` copy (the control plane
keeps one, sealed with the KEK, in its state directory), every read is compared with it: when the
generation in KV is lower than the copy's (Consul restarted empty, a snapshot restore, the prefix
deleted) and resources differ, the store is *suspect*: it keeps returning the held generation, logs an
ERROR, reports it in :meth:`ConsulKVStore.health`, refuses writes, and :meth:`ConsulKVStore.restore`
(``meshctl store restore``) writes the held generation back.

Stored documents are parsed back into :class:`Resource` as they are; validating them is the
job of the resources validation layer, not of the store. A value that is no resource document at all
(unparsable JSON, no kind or name, at another key than its own) is left out of the read on its own and
reported (:meth:`ConsulKVStore.unreadable`, ``health().unreadable``, the control plane's status); the rest
is served, and ``meshctl delete`` removes it by its key.
"""

from __future__ import annotations

import base64
import builtins
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import consul

from ..catalog._consul_calls import check, consul_errors, raw
from ..catalog._consul_settings import ConsulSettings
from ..errors import ConflictError, StoreAuthError, StoreError
from ._last_applied import Generation, LastApplied
from .model import Resource, ResourceKey
from .store import StoreHealth, UnreadableDocuments

log = logging.getLogger("meshcore.resources.consul")

DEFAULT_PREFIX = "meshcore/resources/"
MAX_TXN_OPS = 64  # operations per /v1/txn: within Consul's limit (128 now, 64 in older releases)
MAX_TXN_BYTES = 400 * 1024  # of base64 values in one transaction: under Consul's default 512 KB txn_max_req_len
MAX_PART_BYTES = 256 * 1024  # of one journal part (its base64 is ~341 KB: under the 512 KB value limit)
META = ".meshcore/"
WRITE_ATTEMPTS = 5  # a change that lost a CAS race with another writer is re-read and retried this often
ProgressFn = Callable[[str], None]


def parse_document(key: str, value: bytes | str | None) -> Resource:
    """Stored JSON -> Resource; a StoreError names the key when the document is unusable."""
    try:
        doc = json.loads(value or b"")
        meta = doc.get("metadata") or {}
        labels = meta.get("labels") or {}
        return Resource(
            api_version=doc["apiVersion"],
            kind=doc["kind"],
            name=meta["name"],
            namespace=meta.get("namespace") or "default",
            spec=doc.get("spec"),
            labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
            annotations=tuple(sorted((str(k), str(v)) for k, v in (meta.get("annotations") or {}).items())),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise StoreError(f"Consul KV key {key!r} does not hold a meshcore resource document ({exc!r}); "
                         f"fix or remove it (consul kv delete {key!r})") from exc


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode("ascii")


@dataclass
class _Snapshot:
    """One consistent read of the prefix: the resource keys as readers see them, and the store's metadata."""

    index: int
    docs: dict[str, str]  # full KV key -> document, with a committed journal laid over
    flat: set[str]  # resource keys present in KV itself
    generation: int
    generation_modify: int  # ModifyIndex of the generation key (0: absent)
    journal: dict[str, Any] | None  # the committed journal, with "parts" loaded under "changes"
    orphans: set[str] = field(default_factory=set)  # ids of journal parts no commit names


class ConsulKVStore:
    """A :class:`~meshcore.resources.store.ResourceStore` on Consul KV (see the module docstring)."""

    def __init__(self, settings: ConsulSettings, prefix: str = DEFAULT_PREFIX, *,
                 last_applied: LastApplied | None = None):
        if not prefix or prefix.startswith("/"):
            raise StoreError(f"Consul KV prefix {prefix!r} must be non-empty and must not start with '/'")
        self.settings = settings
        self.prefix = prefix if prefix.endswith("/") else prefix + "/"
        self._consul: consul.Consul | None = None
        self._last_applied = last_applied
        self._held: Generation | None = None
        self._held_loaded = False
        self._lock = threading.RLock()
        self._suspect_since: float | None = None
        self._suspect_message = ""
        self._seen = (0, 0)  # (generation, resources) in KV at the last read
        self._unreadable = UnreadableDocuments(log, "document")  # of the last read (see unreadable())
        self._recovered = False
        self._reread = False  # the last watch failed: read at once, not block at an index Consul may be below

    @property
    def _client(self) -> consul.Consul:
        if self._consul is None:
            self._consul = self.settings.client()
        return self._consul

    def _errors(self, doing: str):
        return consul_errors(self.settings, doing, error=StoreError, auth_error=StoreAuthError)

    def key_for(self, key: ResourceKey) -> str:
        return self.prefix + key.path

    @property
    def _meta(self) -> str:
        return self.prefix + META

    @property
    def location(self) -> str:
        return f"Consul KV {self.prefix!r} at {self.settings.address}"

    # ------------------------------------------------------------------ reads
    def _read(self, index: int | None = None, wait: float = 0) -> _Snapshot:
        kwargs = {}
        if index and index > 0:
            kwargs = {"index": index, "wait": f"{max(1, int(wait * 1000))}ms"}
        with self._errors(f"reading resources under {self.prefix!r}"):
            new_index, entries = self._client.kv.get(self.prefix, recurse=True, **kwargs)
        return self._snapshot(max(1, int(new_index)), entries or [])

    def _snapshot(self, index: int, entries: list[dict]) -> _Snapshot:
        docs: dict[str, str] = {}
        meta: dict[str, dict] = {}
        for e in entries:
            key = e["Key"]
            if key.startswith(self._meta):
                meta[key[len(self._meta):]] = e
            elif not (key.endswith("/") and not e.get("Value")):  # skip "folder" keys made by the UI or CLI
                docs[key] = (e.get("Value") or b"").decode("utf-8", "replace")
        flat = set(docs)
        generation, generation_modify = 0, 0
        if "generation" in meta:
            generation_modify = int(meta["generation"]["ModifyIndex"])
            try:
                generation = int(json.loads(meta["generation"].get("Value") or b"{}")["generation"])
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"Consul KV key {self._meta + 'generation'!r} is damaged ({exc}); "
                                 "put {\"generation\": N} back with N at least the last one") from exc
        journal = None
        part_ids = {k.split("/")[1] for k in meta if k.startswith("journal/") and k.count("/") >= 2}
        if "journal" in meta:
            try:
                journal = json.loads(meta["journal"].get("Value") or b"")
                parts = [json.loads(meta[f"journal/{journal['id']}/{i}"].get("Value") or b"")
                         for i in range(int(journal["parts"]))]
            except (ValueError, KeyError, TypeError) as exc:
                raise StoreError(f"the committed change in Consul KV {self._meta + 'journal'!r} is damaged ({exc!r}); "
                                 "it was written in one transaction, so something else changed it: inspect "
                                 f"`consul kv get -recurse {self._meta}`, then delete the journal") from exc
            for part in parts:
                docs.update(part.get("set") or {})
                for key in part.get("delete") or []:
                    docs.pop(key, None)
            journal["changes"] = parts
            generation = max(generation, int(journal.get("generation") or 0))
            part_ids.discard(str(journal["id"]))
        return _Snapshot(index=index, docs=docs, flat=flat, generation=generation,
                         generation_modify=generation_modify, journal=journal, orphans=part_ids)

    def _where(self, key: str) -> str:
        """``Kind/namespace/name (KV key)``, as the control plane names stored documents."""
        path = key[len(self.prefix):] if key.startswith(self.prefix) else key
        return f"{path} ({key})" if path.count("/") == 2 else key

    def _decode(self, docs: dict[str, str]) -> builtins.list[Resource]:
        """The documents as resources; one that is no resource document (unparsable, at the wrong key) is left
        out on its own, logged once and kept in :meth:`unreadable`: it never fails the read."""
        out = []
        unreadable: dict[str, str] = {}
        for key in sorted(docs):
            try:
                resource = parse_document(key, docs[key])
                if self.key_for(resource.key) != key:
                    raise StoreError(f"Consul KV key {key!r} holds {resource.key} (expected at "
                                     f"{self.key_for(resource.key)!r}); move or remove it")
            except StoreError as exc:
                unreadable[self._where(key)] = str(exc)
                continue
            out.append(resource)
        self._unreadable.note(unreadable)
        return sorted(out, key=lambda r: r.key.path)

    def unreadable(self) -> dict[str, str]:
        """Documents of the last read that are no resource document (where -> why); they are left out."""
        return self._unreadable.get()

    def list(self) -> builtins.list[Resource]:
        return self.watch(None, 0)[0]

    def watch(self, index: int | None, wait: float) -> tuple[builtins.list[Resource], int]:
        """Blocking recursive read of the prefix; ``index=None`` (or 0) returns at once.

        With a last-applied copy, what it returns is checked against it first (see the module
        docstring): a suspect store returns the held generation."""
        if not self._recovered:
            self._recover_quietly()
        # After a failed read (Consul unreachable, restarted?) read at once: a Consul restarted empty holds a
        # blocking query at our old index for the whole wait, and the lost resources would go unnoticed so long.
        reread, self._reread = self._reread, False
        try:
            snap = self._read(None if reread else index, wait)
        except BaseException:
            self._reread = True
            raise
        resources = self._decode(snap.docs)
        return self._checked(snap, resources), snap.index

    # ------------------------------------------------------------------ lost data
    def _held_generation(self) -> Generation | None:
        if not self._held_loaded and self._last_applied is not None:
            try:
                self._held = self._last_applied.load()
            except StoreError as exc:  # serve what KV holds rather than nothing; the next change rewrites the copy
                log.error("cannot use the control plane's copy of the resources (%s); losses in Consul KV cannot "
                          "be detected until it is rewritten on the next change", exc)
                self._held = None
            self._held_loaded = True
        return self._held

    def _save(self, generation: int, resources: builtins.list[Resource]) -> None:
        assert self._last_applied is not None
        try:
            self._held = self._last_applied.save(generation, resources, self.location)
        except StoreError as exc:  # e.g. a full disk: keep serving; the copy catches up on the next change
            log.error("could not update the control plane's copy of the resources (%s); a loss in Consul KV "
                      "after this is compared with the older copy", exc)
        self._held_loaded = True

    def _checked(self, snap: _Snapshot, resources: builtins.list[Resource]) -> builtins.list[Resource]:
        with self._lock:
            self._seen = (snap.generation, len(resources))
            if self._last_applied is None:
                return resources
            held = self._held_generation()
            if held is not None and held.resources and snap.generation < held.generation \
                    and list(held.resources) != resources:
                if self._suspect_since is None:
                    self._suspect_since = time.time()
                    missing = len({r.key for r in held.resources} - {r.key for r in resources})
                    self._suspect_message = (
                        f"{self.location} lost resources this control plane applied: it holds {len(resources)} "
                        f"resource(s) at generation {snap.generation}, the last good generation was "
                        f"{held.generation} with {len(held.resources)} ({missing} missing). Consul lost its data "
                        "(restarted empty, restored from an old snapshot, or the prefix was deleted). The control "
                        "plane keeps serving the last good generation and refuses writes; run "
                        "`meshctl store restore` to write it back to Consul")
                    log.error("resource store suspect: %s", self._suspect_message)
                return list(held.resources)
            if self._suspect_since is not None:
                log.warning("resource store no longer suspect: %s is at generation %d (held %d)",
                            self.location, snap.generation, held.generation if held else 0)
                self._suspect_since, self._suspect_message = None, ""
            if held is None or held.generation != snap.generation or list(held.resources) != resources:
                self._save(snap.generation, resources)
            return resources

    def health(self) -> StoreHealth:
        """``ok``, or ``suspect`` with what happened and what to do (see the module docstring)."""
        with self._lock:
            held = self._held if self._held_loaded else None
            generation, count = self._seen
            return StoreHealth(backend="consul", location=self.location,
                               state="suspect" if self._suspect_since is not None else "ok",
                               message=self._suspect_message, generation=generation, resources=count,
                               held_generation=held.generation if held else 0,
                               held_resources=len(held.resources) if held else 0,
                               suspect_since=self._suspect_since,
                               unreadable=tuple(sorted(self._unreadable.get().items())))

    def restore(self, progress: ProgressFn | None = None) -> StoreHealth:
        """Write the held generation back to Consul KV (replacing what is there); the health afterwards."""
        with self._lock:
            held = self._held_generation()
            if held is None:
                raise StoreError("this control plane keeps no copy of the resources to restore (it runs "
                                 "without a state directory copy, or never read the store)")
            snap = self._read()
            wanted = {self.key_for(r.key): r.canonical_json() for r in held.resources}
            drop = [k for k in snap.docs if k not in wanted]
            self._write(wanted, drop, f"restoring {len(wanted)} resource(s) under {self.prefix!r}",
                        snap=snap, min_generation=held.generation, progress=progress)
            after = self._read()
            self._checked(after, self._decode(after.docs))
            log.warning("resource store restored: wrote generation %d back to %s (%d resources, %d removed)",
                        held.generation + 1, self.location, len(wanted), len(drop))
            return self.health()

    def _refuse_if_suspect(self, doing: str) -> None:
        if self._suspect_since is not None:
            raise StoreError(f"{doing}: refused, the resource store is suspect: {self._suspect_message}")

    # ------------------------------------------------------------------ writes
    def _txn(self, ops: builtins.list[dict], doing: str) -> builtins.list[dict]:
        if len(ops) > MAX_TXN_OPS:  # the batching below never builds one; a guard, not a user-facing limit
            raise StoreError(f"{doing}: {len(ops)} Consul operations exceed the {MAX_TXN_OPS} meshcore puts in one "
                             "transaction; nothing was written")
        with self._errors(doing):
            response = raw(self._client, "PUT", "/v1/txn", body=ops)
        if response.code == 409:
            errors = json.loads(response.body or "{}").get("Errors") or []
            what = "; ".join(f"operation {e.get('OpIndex')}: {e.get('What')}" for e in errors)
            raise ConflictError(f"{doing}: Consul rolled the transaction back, nothing was written ({what}); "
                                "re-read and retry")
        check(response, self.settings, doing, error=StoreError, auth_error=StoreAuthError)
        return (json.loads(response.body or "{}").get("Results")) or []

    def _generation_ops(self, snap: _Snapshot, generation: int) -> builtins.list[dict]:
        return [{"KV": {"Verb": "cas", "Key": self._meta + "generation", "Index": snap.generation_modify,
                        "Value": _b64(json.dumps({"generation": generation}))}},
                {"KV": {"Verb": "check-not-exists", "Key": self._meta + "journal"}}]

    def _write(self, sets: dict[str, str], deletes: builtins.list[str], doing: str, *, snap: _Snapshot,
               min_generation: int = 0, progress: ProgressFn | None = None) -> int:
        """Make ``sets``/``deletes`` happen as one unit on top of ``snap``; the new generation."""
        generation = max(snap.generation, min_generation) + 1
        ops = self._generation_ops(snap, generation)
        ops += [{"KV": {"Verb": "set", "Key": k, "Value": _b64(v)}} for k, v in sets.items()]
        ops += [{"KV": {"Verb": "delete", "Key": k}} for k in deletes]
        if len(ops) <= MAX_TXN_OPS and sum(len(op["KV"].get("Value") or "") for op in ops) <= MAX_TXN_BYTES:
            self._txn(ops, doing)
            return generation
        # too large for one transaction: a redo journal (module docstring)
        journal_id = uuid.uuid4().hex[:12]
        parts = self._parts(sets, deletes)
        part_key = f"{self._meta}journal/{journal_id}/"
        try:
            for i, part in enumerate(parts):
                self._txn([{"KV": {"Verb": "set", "Key": f"{part_key}{i}", "Value": _b64(json.dumps(part))}}],
                          f"{doing} (staging part {i + 1} of {len(parts)})")
                if progress:
                    progress(f"staged part {i + 1}/{len(parts)}")
            commit = self._generation_ops(snap, generation)
            commit.append({"KV": {"Verb": "set", "Key": self._meta + "journal", "Value": _b64(json.dumps(
                {"id": journal_id, "parts": len(parts), "generation": generation}))}})
            commit += [{"KV": {"Verb": "get", "Key": f"{part_key}{i}"}} for i in range(len(parts))]
            if len(commit) > MAX_TXN_OPS:
                raise StoreError(f"{doing}: the change needs {len(parts)} journal parts, more than one transaction "
                                 "can check; nothing was written. Apply fewer or smaller resources at a time")
            self._txn(commit, f"{doing} (commit)")
        except BaseException:
            self._drop_parts(journal_id)
            raise
        if progress:
            progress("committed")
        self._roll_forward(journal_id, parts, doing, progress)
        return generation

    @staticmethod
    def _parts(sets: dict[str, str], deletes: builtins.list[str]) -> builtins.list[dict]:
        parts: builtins.list[dict] = []
        current: dict = {"set": {}, "delete": []}
        size = 0
        for key, value in sets.items():
            item = len(key) + len(value) + 8
            if size and size + item > MAX_PART_BYTES:
                parts.append(current)
                current, size = {"set": {}, "delete": []}, 0
            current["set"][key] = value
            size += item
        for key in deletes:
            if size and size + len(key) + 4 > MAX_PART_BYTES:
                parts.append(current)
                current, size = {"set": {}, "delete": []}, 0
            current["delete"].append(key)
            size += len(key) + 4
        parts.append(current)
        return parts

    def _roll_forward(self, journal_id: str, parts: builtins.list[dict], doing: str,
                      progress: ProgressFn | None = None) -> None:
        """Rewrite the resource keys a committed journal names, then remove it (idempotent)."""
        ops: builtins.list[dict] = []
        for part in parts:
            ops += [{"KV": {"Verb": "set", "Key": k, "Value": _b64(v)}} for k, v in (part.get("set") or {}).items()]
            ops += [{"KV": {"Verb": "delete", "Key": k}} for k in part.get("delete") or []]
        done_ops = [{"KV": {"Verb": "delete", "Key": self._meta + "journal"}},
                    {"KV": {"Verb": "delete-tree", "Key": f"{self._meta}journal/{journal_id}/"}}]
        batches: builtins.list[builtins.list[dict]] = [[]]
        size = 0
        for op in ops:
            item = len(op["KV"].get("Value") or "") + len(op["KV"]["Key"])
            if batches[-1] and (len(batches[-1]) >= MAX_TXN_OPS - len(done_ops) or size + item > MAX_TXN_BYTES):
                batches.append([])
                size = 0
            batches[-1].append(op)
            size += item
        batches[-1] += done_ops
        for i, batch in enumerate(batches):
            self._txn(batch, f"{doing} (writing batch {i + 1} of {len(batches)})")
            if progress and len(batches) > 1:
                progress(f"wrote batch {i + 1}/{len(batches)}")

    def _drop_parts(self, journal_id: str) -> None:
        try:
            self._txn([{"KV": {"Verb": "delete-tree", "Key": f"{self._meta}journal/{journal_id}/"}}],
                      f"removing the uncommitted change {journal_id}")
        except StoreError as exc:  # left for the next recovery
            log.warning("could not remove an uncommitted change's parts prefix=%s id=%s error=%s",
                        self.prefix, journal_id, exc)

    def recover(self) -> None:
        """Finish a committed change a dead writer left, remove uncommitted ones' parts (at start; idempotent)."""
        snap = self._read()
        if snap.journal is not None:
            log.warning("finishing an interrupted resource store change prefix=%s id=%s generation=%s "
                        "(the writer died after committing it)", self.prefix, snap.journal["id"],
                        snap.journal.get("generation"))
            self._roll_forward(str(snap.journal["id"]), snap.journal["changes"], "finishing an interrupted change")
        for journal_id in sorted(snap.orphans):
            log.warning("removing an interrupted resource store change that never committed prefix=%s id=%s "
                        "(nothing of it was applied)", self.prefix, journal_id)
            self._drop_parts(journal_id)
        self._recovered = True

    def _recover_quietly(self) -> None:
        try:
            self.recover()
        except StoreError as exc:  # e.g. a read-only token: readers still see the committed state
            log.warning("could not finish or clean an interrupted resource store change prefix=%s error=%s",
                        self.prefix, exc)
            self._recovered = True

    def _change(self, doing: str, plan: Callable[[_Snapshot], tuple[dict[str, str], builtins.list[str]]],
                progress: ProgressFn | None = None) -> tuple[_Snapshot, dict[str, str], builtins.list[str], int]:
        """Read, plan, write; retried when another writer got in between (a lost CAS)."""
        self._refuse_if_suspect(doing)
        for attempt in range(WRITE_ATTEMPTS):
            snap = self._read()
            if snap.journal is not None or snap.orphans and not self._recovered:
                self.recover()
                snap = self._read()
            self._checked(snap, self._decode(snap.docs))
            self._refuse_if_suspect(doing)
            sets, deletes = plan(snap)
            if not sets and not deletes:
                return snap, sets, deletes, snap.generation
            try:
                generation = self._write(sets, deletes, doing, snap=snap, progress=progress)
            except ConflictError:
                if attempt == WRITE_ATTEMPTS - 1:
                    raise
                time.sleep(0.05 * (attempt + 1))
                continue
            return snap, sets, deletes, generation
        raise AssertionError("unreachable")

    def _remember(self, snap: _Snapshot, sets: dict[str, str], deletes: builtins.list[str], generation: int) -> None:
        if self._last_applied is None:
            return
        docs = dict(snap.docs)
        docs.update(sets)
        for k in deletes:
            docs.pop(k, None)
        with self._lock:
            self._seen = (generation, len(docs))
            self._save(generation, self._decode(docs))

    def apply(self, resources: Sequence[Resource], progress: ProgressFn | None = None) -> None:
        """Write every resource, or none (see the module docstring)."""
        if not resources:
            return
        seen: dict[str, Resource] = {}
        for r in resources:
            if r.key.path in seen:
                raise StoreError(f"apply got {r.key} twice; nothing was written")
            seen[r.key.path] = r
        wanted = {self.key_for(r.key): r.canonical_json() for r in resources}
        doing = f"applying {len(resources)} resource(s) under {self.prefix!r}"
        with self._lock:
            snap, sets, deletes, generation = self._change(
                doing, lambda s: ({k: v for k, v in wanted.items() if s.docs.get(k) != v}, []), progress)
            if sets:
                self._remember(snap, sets, deletes, generation)
        log.info("applied resources count=%d changed=%d prefix=%s generation=%d",
                 len(resources), len(sets), self.prefix, generation)

    def delete(self, keys: Sequence[ResourceKey]) -> builtins.list[ResourceKey]:
        """Remove ``keys`` all-or-nothing; return those that existed."""
        unique = list(dict.fromkeys(keys))
        if not unique:
            return []
        doing = f"deleting {len(unique)} resource(s) under {self.prefix!r}"
        with self._lock:
            snap, _, deletes, generation = self._change(
                doing, lambda s: ({}, [self.key_for(k) for k in unique if self.key_for(k) in s.docs]))
            if deletes:
                self._remember(snap, {}, deletes, generation)
        gone = set(deletes)
        removed = [k for k in unique if self.key_for(k) in gone]
        log.info("deleted resources count=%d prefix=%s generation=%d", len(removed), self.prefix, generation)
        return removed

    def close(self) -> None:
        self._consul = None
