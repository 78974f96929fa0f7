"""Where the control plane keeps other trust domains' bundles: ``<state-dir>/federation/``.

``bundles.json`` holds, per imported trust domain, its roots (PEM: public certificates only),
the SPIFFE ``spiffe_sequence`` it came with and when it was imported; ``local.json`` the sequence
number this domain's exported bundle carries (it grows whenever the local roots change, so a
peer that fetches our bundle can tell a newer one). Written atomically under a file lock, so a
restart keeps every imported domain, and ``meshctl`` on the host sees what the server wrote.
"""

from __future__ import annotations

import hashlib
import json
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._files import atomic_write, ensure_private_dir, file_lock
from ..ca._spiffeid import check_trust_domain
from ..errors import ConfigError, StoreError
from .bundle import BundleError, check_roots, describe_root, load_pem_roots, pem_of, read_bundle_text

BUNDLES_FILE = "bundles.json"
LOCAL_FILE = "local.json"
LOCK_FILE = ".federation.lock"


def _now() -> str:
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


class FederatedBundleStore:
    """Imported trust bundles of other domains (``trust domain -> roots``), persisted in ``directory``."""

    def __init__(self, directory: Path | str, local_trust_domain: str):
        self.directory = Path(directory)
        self.local_trust_domain = local_trust_domain
        self._lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------------
    def _read(self, name: str) -> dict[str, Any]:
        path = self.directory / name
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(f"cannot read {path}: {exc}; restore it from backup or remove it and import "
                             "the federated bundles again") from exc
        if not isinstance(data, dict):
            raise StoreError(f"{path} is not a JSON object; restore it from backup")
        return data

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
    def _locked(self):
        ensure_private_dir(self.directory)
        return file_lock(self.directory / LOCK_FILE)

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
        with self._lock, self._locked():
            data = self._read(BUNDLES_FILE)
            domains = data.setdefault("domains", {})
            old = domains.get(trust_domain) or {}
            if sequence is not None and isinstance(old.get("spiffe_sequence"), int) and sequence < old["spiffe_sequence"]:
                raise BundleError(f"{where}: spiffe_sequence {sequence} is older than the stored one "
                                  f"({old['spiffe_sequence']}); refusing to go back to an older bundle")
            domains[trust_domain] = {"bundle": pem_of(roots), "spiffe_sequence": sequence, "imported_at": _now()}
            atomic_write(self.directory / BUNDLES_FILE, json.dumps({"version": 1, **data}, indent=1, sort_keys=True))
        return next(e for e in self.list() if e["trust_domain"] == trust_domain)

    def remove(self, trust_domain: str) -> bool:
        """Forget ``trust_domain``'s roots (its peers are refused from then on); False when not imported."""
        with self._lock, self._locked():
            data = self._read(BUNDLES_FILE)
            if trust_domain not in data.get("domains", {}):
                return False
            del data["domains"][trust_domain]
            atomic_write(self.directory / BUNDLES_FILE, json.dumps({"version": 1, **data}, indent=1, sort_keys=True))
        return True

    def local_sequence(self, bundle_pem: str) -> int:
        """The ``spiffe_sequence`` to export ``bundle_pem`` with: the same number while the local roots
        stay the same, one more each time they change (a root rotation adds or drops a root)."""
        digest = hashlib.sha256(bundle_pem.encode()).hexdigest()
        with self._lock, self._locked():
            data = self._read(LOCAL_FILE)
            if data.get("bundle_sha256") == digest and isinstance(data.get("sequence"), int):
                return data["sequence"]
            sequence = int(data.get("sequence") or 0) + 1
            atomic_write(self.directory / LOCAL_FILE,
                         json.dumps({"bundle_sha256": digest, "sequence": sequence}, indent=1))
        return sequence


__all__ = ["FederatedBundleStore"]
