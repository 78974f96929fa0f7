"""Private: the control plane's own sealed copy of the last resource generation it saw in Consul KV.

One file in the state directory, sealed with the KEK (AES-256-GCM, purpose ``resource-store``),
replaced atomically. It lets the Consul KV store notice that Consul lost resources (KV emptied or
its generation counter went backwards) and hold, then restore, what was there.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from .._files import atomic_write
from ..ca._sealed import check_kek, seal, unseal
from ..errors import CAError, StoreError
from .model import Resource

PURPOSE = "resource-store"
FILE_NAME = "resources-last-applied.sealed"


@dataclass(frozen=True)
class Generation:
    """One generation of the store: its counter and every resource in it (sorted)."""

    generation: int
    resources: tuple[Resource, ...]
    location: str = ""
    saved_at: float = 0.0


class LastApplied:
    """The sealed file ``path`` (see the module docstring)."""

    def __init__(self, path: Path | str, kek: bytes):
        check_kek(kek)
        self.path = Path(path)
        self._kek = bytes(kek)

    def load(self) -> Generation | None:
        try:
            blob = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the control plane's copy of the resources {self.path}: {exc}") from exc
        from .consul_store import parse_document

        try:
            raw = json.loads(unseal(self._kek, PURPOSE, blob, where=str(self.path)))
            return Generation(generation=int(raw["generation"]), location=str(raw.get("location", "")),
                              saved_at=float(raw.get("saved_at") or 0),
                              resources=tuple(parse_document(f"{self.path}[{i}]", d)
                                                        for i, d in enumerate(raw["resources"])))
        except CAError as exc:
            raise StoreError(f"{exc}; without it lost Consul KV resources cannot be detected") from exc
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise StoreError(f"the control plane's copy of the resources {self.path} is damaged ({exc}); "
                             "delete it (it is rewritten from Consul KV on the next change)") from exc

    def save(self, generation: int, resources: list[Resource], location: str) -> Generation:
        saved = Generation(generation=generation, resources=tuple(resources), location=location, saved_at=time.time())
        body = json.dumps({"version": 1, "generation": generation, "location": location, "saved_at": saved.saved_at,
                           "resources": [r.canonical_json() for r in resources]}, sort_keys=True).encode()
        try:
            atomic_write(self.path, seal(self._kek, PURPOSE, body))
        except OSError as exc:
            raise StoreError(f"cannot write the control plane's copy of the resources {self.path}: "
                             f"{exc.strerror or exc}") from exc
        return saved
