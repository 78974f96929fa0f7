"""Copy a single control plane's state directory into a shared backend (Consul KV): ``meshctl state migrate``.

What is copied, each to its key of the layout in ``docs/ha.md``: the CA (root, intermediate, a prepared
next CA and the rotation phase, sealed with the KEK as they are), the issued-certificate record (newest per
identity), the revocations, the join tokens (hashed and sealed, used ones stay used), the operator tokens and
certificate roles, the imported trust bundles and the local bundle sequence, the canary runs.

Idempotent: every write is a compare-and-set on an absent key, or a merge that adds only what is missing, so a
second run writes nothing and says so. A key that holds something else (another CA) is a *conflict*: reported,
never overwritten. ``dry_run`` plans without writing. Run it with the control plane stopped (or before the first
replica starts with ``--store consul``): the directory must not change while it is read.

Not re-exported from :mod:`meshcore.state` (it imports the stores, which import the state package).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..ca import authority as _authority
from ..ca._issued import IssuedJournal
from ..ca._revocations import RevocationJournal
from ..ca._sealed import SealedEntries
from ..ca._shared import AUTHORITY_KEY, ISSUED_PREFIX, REVOKED_PREFIX, CARecord, issued_key, revoked_key
from ..ca._store import RotationState, pem_of, unseal_pair
from ..ca.tokens import JoinTokenStore, SharedJoinTokenStore
from ..errors import CAError
from ._backend import Put, StateBackend

log = logging.getLogger("meshcore.state.migrate")

WRITE, UNCHANGED, CONFLICT, MISSING = "write", "unchanged", "conflict", "missing"


@dataclass(frozen=True)
class Step:
    """One piece of state: what it is, where it goes, and what the migration does (or did) with it."""

    what: str
    key: str
    action: str  # write | unchanged | conflict | missing (nothing of it in the directory)
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Plan:
    steps: tuple[Step, ...]
    dry_run: bool
    source: str
    target: str

    @property
    def written(self) -> int:
        return sum(1 for s in self.steps if s.action == WRITE)

    @property
    def conflicts(self) -> tuple[Step, ...]:
        return tuple(s for s in self.steps if s.action == CONFLICT)

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "target": self.target, "dry_run": self.dry_run, "written": self.written,
                "unchanged": sum(1 for s in self.steps if s.action == UNCHANGED),
                "conflicts": len(self.conflicts), "steps": [s.to_json() for s in self.steps]}


class _Run:
    def __init__(self, state_dir: Path, backend: StateBackend, kek: bytes, dry_run: bool):
        self.state_dir, self.backend, self.kek, self.dry_run = state_dir, backend, kek, dry_run
        self.steps: list[Step] = []

    def add(self, what: str, key: str, action: str, detail: str = "") -> None:
        self.steps.append(Step(what, key, action, detail))

    def create(self, what: str, key: str, value: bytes, same: bool | None = None, detail: str = "") -> None:
        """Write ``value`` at an absent ``key``; ``same`` says whether a present value is this one."""
        stored = self.backend.get(key)
        if stored is not None:
            equal = stored.value == value if same is None else same
            self.add(what, key, UNCHANGED if equal else CONFLICT,
                     detail if equal else f"{key} holds something else; left as it is ({detail})")
            return
        if not self.dry_run and not self.backend.put(key, value, cas=0):
            self.add(what, key, CONFLICT, "written by someone else during the migration; run it again")
            return
        self.add(what, key, WRITE, detail)

    # ------------------------------------------------------------------ the CA
    def ca(self) -> None:
        ca_dir = self.state_dir / "ca"
        root_path = ca_dir / _authority.ROOT_FILE
        if not root_path.exists():
            self.add("CA", AUTHORITY_KEY, MISSING, f"no {root_path}")
            return
        root, trust_domain = unseal_pair(self.kek, _authority.ROOT_PURPOSE, root_path, need_key=False)
        inter, _ = unseal_pair(self.kek, _authority.INTERMEDIATE_PURPOSE, ca_dir / _authority.INTERMEDIATE_FILE)
        rotation = RotationState.read(ca_dir / _authority.ROTATION_FILE)
        next_ca = _authority._load_next(ca_dir, self.kek) if rotation.phase == "preparing" else None
        if rotation.phase == "rotating" and (ca_dir / _authority.NEXT_ROOT_FILE).exists():
            raise CAError(f"{ca_dir} holds a rotation interrupted mid-swap; start the control plane once on it "
                          "(it completes the swap), stop it, then migrate")
        trust_domain = trust_domain or _authority._ca_trust_domain(root.cert) or ""
        record = CARecord(root=root, intermediate=inter, next_ca=next_ca, rotation=rotation, trust_domain=trust_domain)
        stored = self.backend.get(AUTHORITY_KEY)
        same = None
        if stored is not None:
            held = CARecord.decode(self.kek, stored.value, f"{self.backend.location} key {AUTHORITY_KEY!r}")
            same = (pem_of(held.root.cert), pem_of(held.intermediate.cert)) == (root.pem, inter.pem)
        self.create("CA", AUTHORITY_KEY, record.encode(self.kek), same,
                    f"trust domain {trust_domain}, phase {rotation.phase}")

    def issued(self) -> None:
        ca_dir = self.state_dir / "ca"
        journal = IssuedJournal(ca_dir / _authority.ISSUED_FILE, retention=lambda c: _authority.DEFAULT_RECOVERY_GRACE)
        certs = journal.recent(datetime.now(timezone.utc))
        journal.close()
        self._records("issued certificates", ISSUED_PREFIX, [(issued_key(c.spiffe_id, c.node), c) for c in certs])

    def revocations(self) -> None:
        journal = RevocationJournal(self.state_dir / "ca" / _authority.REVOKED_FILE)
        journal.refresh()
        entries = journal.nodes() + journal.issuers()
        self._records("revocations", REVOKED_PREFIX, [(revoked_key(r), r) for r in entries])

    def _records(self, what: str, prefix: str, items: list[tuple[str, Any]]) -> None:
        """Many small keys (``to_dict()`` as JSON): one step for the lot (those written, those already there)."""
        if not items:
            self.add(what, prefix + "*", MISSING, "none in the state directory")
            return
        present = {e.key for e in self.backend.list(prefix)}
        todo = [Put(k, json.dumps(v.to_dict(), separators=(",", ":")).encode(), cas=0)
                for k, v in items if k not in present]
        if todo and not self.dry_run:
            for start in range(0, len(todo), 64):
                if not self.backend.put_all(todo[start:start + 64]):
                    raise CAError(f"{what}: a key appeared in {self.backend.location} during the migration; "
                                  "run it again (what is there stays)")
        kept = len(items) - len(todo)
        self.add(what, prefix + "*", WRITE if todo else UNCHANGED,
                 f"{len(todo)} to write, {kept} already there" if todo else f"all {kept} already there")

    # ------------------------------------------------------------------ tokens and documents
    def join_tokens(self) -> None:
        path = self.state_dir / "join-tokens.sealed"
        if not path.exists():
            self.add("join tokens", "tokens/join/*", MISSING, f"no {path}")
            return
        store = JoinTokenStore(path, self.kek)
        entries = store.entries()
        store.close()
        shared = SharedJoinTokenStore(self.backend, self.kek)
        present = {e.key.rsplit("/", 1)[1] for e in self.backend.list("tokens/join/")}
        todo = [e for e in entries if e["hash"] not in present]
        if not self.dry_run:
            todo = [e for e in todo if shared.import_entry(e)]
        self.add("join tokens", "tokens/join/*", WRITE if todo else UNCHANGED,
                 f"{len(todo)} to write (hashed, sealed), {len(entries) - len(todo)} already there")

    def sealed_list(self, what: str, file_name: str, key: str, purpose: str, identity) -> None:
        path = self.state_dir / file_name
        if not path.exists():
            self.add(what, key, MISSING, f"no {path}")
            return
        local = SealedEntries.at(None, path, key, self.kek, purpose, what).read()
        shared = SealedEntries(self.backend, key, self.kek, purpose, what)
        held = {identity(e) for e in shared.read()}
        missing = [e for e in local if identity(e) not in held]
        if missing and not self.dry_run:
            shared.update(lambda entries: [*entries, *(e for e in missing if identity(e) not in
                                                       {identity(x) for x in entries})])
        self.add(what, key, WRITE if missing else UNCHANGED,
                 f"{len(missing)} to add, {len(local) - len(missing)} already there")

    def federation(self) -> None:
        from ..federation.store import BUNDLES_FILE, LOCAL_FILE, SHARED_PREFIX

        directory = self.state_dir / "federation"
        for name in (BUNDLES_FILE, LOCAL_FILE):
            path = directory / name
            key = SHARED_PREFIX + name
            if not path.exists():
                self.add("trust bundles" if name == BUNDLES_FILE else "local bundle sequence", key, MISSING,
                         f"no {path}")
                continue
            data = json.loads(path.read_text())
            stored = self.backend.get(key)
            same = None if stored is None else json.loads(stored.value) == data
            self.create("trust bundles" if name == BUNDLES_FILE else "local bundle sequence", key,
                        json.dumps(data, indent=1, sort_keys=True).encode(), same,
                        f"{len(data.get('domains', {}))} domain(s)" if name == BUNDLES_FILE else "")

    def canaries(self) -> None:
        """The canary runs (``<state-dir>/canaries/<service>.json`` -> ``canaries/<service>.json``): one step for
        the lot; a run recorded differently in KV already is a conflict (the replicas' record wins)."""
        from ..controlplane.canary import STATE_PREFIX

        directory = self.state_dir / STATE_PREFIX.rstrip("/")
        files = sorted(directory.glob("*.json")) if directory.is_dir() else []
        if not files:
            self.add("canary runs", STATE_PREFIX + "*", MISSING, f"none in {directory}")
            return
        present = {e.key: e.value for e in self.backend.list(STATE_PREFIX)}
        todo, kept, differ = [], 0, []
        for f in files:
            key, value = STATE_PREFIX + f.name, f.read_bytes()
            if key not in present:
                todo.append(Put(key, value, cas=0))
            elif json.loads(present[key]) == json.loads(value):
                kept += 1
            else:
                differ.append(f.stem)
        if todo and not self.dry_run and not self.backend.put_all(todo):
            raise CAError(f"canary runs: a run appeared in {self.backend.location} during the migration; run it "
                          "again (what is there stays)")
        if differ:
            self.add("canary runs", STATE_PREFIX + "*", CONFLICT,
                     f"{', '.join(differ)} recorded differently in KV; left as they are ({len(todo)} written)")
            return
        self.add("canary runs", STATE_PREFIX + "*", WRITE if todo else UNCHANGED,
                 f"{len(todo)} to write, {kept} already there" if todo else f"all {kept} already there")


def migrate(state_dir: Path | str, backend: StateBackend, kek: bytes, *, dry_run: bool = False) -> Plan:
    """Copy ``state_dir`` into ``backend`` (see the module docstring); the steps taken (or planned)."""
    from ..controlplane.operator_certs import _PURPOSE as CERTS_PURPOSE
    from ..controlplane.operator_certs import CERTS_FILE, SHARED_CERTS_KEY
    from ..controlplane.operators import _PURPOSE as TOKENS_PURPOSE
    from ..controlplane.operators import SHARED_TOKENS_KEY, TOKENS_FILE

    state_dir = Path(state_dir)
    if not state_dir.is_dir():
        raise CAError(f"{state_dir} is not a directory; pass the control plane's --state-dir")
    run = _Run(state_dir, backend, kek, dry_run)
    run.ca()
    run.issued()
    run.revocations()
    run.join_tokens()
    run.sealed_list("operator tokens", TOKENS_FILE, SHARED_TOKENS_KEY, TOKENS_PURPOSE, lambda e: e["hash"])
    run.sealed_list("operator certificate roles", CERTS_FILE, SHARED_CERTS_KEY, CERTS_PURPOSE,
                    lambda e: (e["name"], e["serial"]))
    run.federation()
    run.canaries()
    plan = Plan(steps=tuple(run.steps), dry_run=dry_run, source=f"state directory {state_dir}",
                target=backend.location)
    log.info("state migration source=%s target=%s dry_run=%s written=%d conflicts=%d", state_dir,
             backend.location, dry_run, plan.written, len(plan.conflicts))
    return plan
