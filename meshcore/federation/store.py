"""Where the control plane keeps other trust domains' bundles: ``<state-dir>/federation/``.

``bundles.json`` holds, per imported trust domain, its roots (PEM: public certificates only),
the SPIFFE ``spiffe_sequence`` it came with and when it was imported; ``local.json`` the sequence
number this domain's exported bundle carries (it grows whenever the local roots change, so a
peer that fetches our bundle can tell a newer one). Written atomically with compare-and-set on a
:class:`~meshcore.state.StateBackend`, so a restart keeps every imported domain, and ``meshctl`` on the
host sees what the server wrote. With a shared backend (Consul KV, ``--store consul``) the two documents
are the keys ``federation/bundles.json`` and ``federation/local.json``, the same for every replica.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..ca._spiffeid import check_trust_domain
from ..errors import ConfigError, StoreError
from ..state import DirBackend, Entry, PrefixWatcher, StateBackend, update
from .bundle import BundleError, check_roots, describe_root, load_pem_roots, pem_of, read_bundle_text

BUNDLES_FILE = "bundles.json"
LOCAL_FILE = "local.json"
SHARED_PREFIX = "federation/"  # the documents' keys in shared state (Consul KV)


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FederatedBundleStore:
    """Imported trust bundles of other domains (``trust domain -> roots``), persisted in ``directory``."""

    def __init__(self, directory: Path | str, local_trust_domain: str, *, backend: StateBackend | None = None):
        self.directory = Path(directory)
        self.local_trust_domain = local_trust_domain
        if backend is not None and backend.shared:
            self.backend: StateBackend = backend
            self._prefix = SHARED_PREFIX
        else:
            self.backend, self._prefix = DirBackend(self.directory), ""
        self._watcher: PrefixWatcher | None = None

    def follow(self, on_change: Callable[[], None]) -> None:
        """On shared state, call ``on_change()`` whenever another replica imports or removes a bundle (a blocking
        query on ``federation/``), so every replica's proxies trust the same domains. Nothing in a directory."""
        if not self._prefix:
            return
        self._watcher = PrefixWatcher(self.backend, SHARED_PREFIX + BUNDLES_FILE, lambda _: on_change(),
                                      name="federation").start()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()

    # --- reading ---------------------------------------------------------------------------
    def _where(self, name: str) -> str:
        return str(self.directory / name) if not self._prefix else f"{self.backend.location} key {self._prefix + name!r}"

    def _decode(self, name: str, entry: Entry | None) -> dict[str, Any]:
        if entry is None:
            return {}
        try:
            data = json.loads(entry.value)
        except ValueError as exc:
            raise StoreError(f"cannot read {self._where(name)}: {exc}; restore it from backup or remove it and "
                             "import the federated bundles again") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{self._where(name)} is not a JSON object; restore it from backup")
        return data

    def _read(self, name: str) -> dict[str, Any]:
        return self._decode(name, self.backend.get(self._prefix + name))

    def _change(self, name: str, change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
        """Apply ``change(document) -> new document (None: unchanged)`` with compare-and-set."""
        def step(entry: Entry | None) -> bytes | None:
            new = change(self._decode(name, entry))
            return json.dumps(new, indent=1, sort_keys=True).encode() if new is not None else None

        update(self.backend, self._prefix + name, step, doing=f"changing {self._where(name)}")

    def documents(self) -> dict[str, dict[str, Any]]:
        """Both documents as stored (migration)."""
        return {name: self._read(name) for name in (BUNDLES_FILE, LOCAL_FILE)}

    def import_document(self, name: str, data: dict[str, Any]) -> bool:
        """Write a migrated document where none is; True when written."""
        return bool(self.backend.put(self._prefix + name, json.dumps(data, indent=1, sort_keys=True).encode(), cas=0))

    def bundles(self) -> tuple[tuple[str, str], ...]:
        """``(trust_domain, PEM roots)`` pairs, sorted by trust domain: what ``MeshSettings`` carries."""
        entries = self._read(BUNDLES_FILE).get("domains", {})
        return tuple((td, entries[td]["bundle"]) for td in sorted(entries))

    def list(self) -> list[dict[str, Any]]:
        """Every imported domain with its roots described (subject, SHA-256, not-after)."""
        out = []
        for td, entry in sorted(self._read(BUNDLES_FILE).get("domains", {}).items()):
            roots = load_pem_roots(entry["bundle"], f"stored bundle of {td}")
            out.append({"trust_domain": td, "imported_at": entry.get("imported_at"),
                        "spiffe_sequence": entry.get("spiffe_sequence"),
                        "roots": [vars(describe_root(c)) for c in roots], "bundle": entry["bundle"]})
        return out

    # --- writing ---------------------------------------------------------------------------
    def put(self, trust_domain: str, bundle_text: str) -> dict[str, Any]:
        """Import (or replace) ``trust_domain``'s roots from a SPIFFE bundle or PEM; returns its listing.

        Refused (:class:`BundleError`/:class:`ConfigError`): the local trust domain, a malformed
        name, no CA certificate, an expired or foreign-domain root, or an older ``spiffe_sequence``
        than the one stored.
        """
        check_trust_domain(trust_domain, ConfigError)
        if trust_domain == self.local_trust_domain:
            raise ConfigError(f"{trust_domain!r} is this mesh's own trust domain; its roots come from its CA, "
                              "only other domains' bundles are imported")
        where = f"bundle for {trust_domain}"
        roots, sequence = read_bundle_text(bundle_text, where)
        check_roots(roots, trust_domain, where)

        def put(data: dict[str, Any]) -> dict[str, Any]:
            domains = data.setdefault("domains", {})
            old = domains.get(trust_domain) or {}
            if sequence is not None and isinstance(old.get("spiffe_sequence"), int) and sequence < old["spiffe_sequence"]:
                raise BundleError(f"{where}: spiffe_sequence {sequence} is older than the stored one "
                                  f"({old['spiffe_sequence']}); refusing to go back to an older bundle")
            domains[trust_domain] = {"bundle": pem_of(roots), "spiffe_sequence": sequence, "imported_at": _now()}
            return {**data, "version": 1}

        self._change(BUNDLES_FILE, put)
        return next(e for e in self.list() if e["trust_domain"] == trust_domain)

    def remove(self, trust_domain: str) -> bool:
        """Forget ``trust_domain``'s roots (its peers are refused from then on); False when not imported."""
        found = [False]

        def drop(data: dict[str, Any]) -> dict[str, Any] | None:
            found[0] = trust_domain in data.get("domains", {})
            if not found[0]:
                return None
            del data["domains"][trust_domain]
            return {**data, "version": 1}

        self._change(BUNDLES_FILE, drop)
        return found[0]

    def local_sequence(self, bundle_pem: str) -> int:
        """The ``spiffe_sequence`` to export ``bundle_pem`` with: the same number while the local roots
        stay the same, one more each time they change (a root rotation adds or drops a root)."""
        digest = hashlib.sha256(bundle_pem.encode()).hexdigest()
        out = [0]

        def bump(data: dict[str, Any]) -> dict[str, Any] | None:
            if data.get("bundle_sha256") == digest and isinstance(data.get("sequence"), int):
                out[0] = data["sequence"]
                return None
            out[0] = int(data.get("sequence") or 0) + 1
            return {"bundle_sha256": digest, "sequence": out[0]}

        self._change(LOCAL_FILE, bump)
        return out[0]


__all__ = ["FederatedBundleStore"]
