"""Private: AES-256-GCM envelopes for everything secret the CA keeps on disk.

Format: ``MAGIC || nonce(12) || ciphertext+tag``. The associated data binds the envelope to its
purpose (``b"root"``, ``b"join-tokens"``, ...), so a sealed file copied over another one is
rejected instead of being read as the wrong thing.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshcore.errors import CAError
from meshcore.state import DirBackend, Entry, PrefixWatcher, StateBackend, update

log = logging.getLogger("meshcore.ca")

MAGIC = b"MESHCORE-SEALED-1\n"
_NONCE_LEN = 12
KEK_LEN = 32


def check_kek(kek: bytes) -> None:
    if not isinstance(kek, (bytes, bytearray)) or len(kek) != KEK_LEN:
        raise CAError(
            f"the key-encryption key must be exactly {KEK_LEN} bytes; load it with meshcore.ca.load_kek()"
        )


def seal(kek: bytes, purpose: str, plaintext: bytes) -> bytes:
    """Encrypt ``plaintext`` with ``kek`` for ``purpose``."""
    check_kek(kek)
    nonce = os.urandom(_NONCE_LEN)
    return MAGIC + nonce + AESGCM(bytes(kek)).encrypt(nonce, plaintext, MAGIC + purpose.encode())


def unseal(kek: bytes, purpose: str, blob: bytes, *, where: str) -> bytes:
    """Decrypt an envelope made by :func:`seal`; ``where`` (a file name) goes into error messages."""
    check_kek(kek)
    if not blob.startswith(MAGIC) or len(blob) < len(MAGIC) + _NONCE_LEN + 16:
        raise CAError(f"{where} is not a meshcore sealed file (damaged or not written by meshcore)")
    nonce = blob[len(MAGIC):len(MAGIC) + _NONCE_LEN]
    body = blob[len(MAGIC) + _NONCE_LEN:]
    try:
        return AESGCM(bytes(kek)).decrypt(nonce, body, MAGIC + purpose.encode())
    except InvalidTag as exc:
        raise CAError(
            f"cannot decrypt {where}: wrong key-encryption key (or the file was tampered with). "
            "Use the KEK this CA was created with (MESHCORE_KEK or the KEK file)."
        ) from exc


def read_sealed_entries(path, kek: bytes, purpose: str, what: str) -> list:
    """The ``entries`` list of a sealed JSON store (``[]`` when the file does not exist yet).

    ``what`` names the store in errors ("join token store"). The file is only ever replaced
    atomically, so a reader without a lock still sees one whole version.
    """
    import json

    try:
        blob = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise CAError(f"cannot read {what} {path}: {exc}") from exc
    body = unseal(kek, purpose, blob, where=str(path))
    try:
        return list(json.loads(body)["tokens"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CAError(f"{what} {path} is damaged: {exc}") from exc


def write_sealed_entries(path, kek: bytes, purpose: str, entries: list) -> None:
    """Seal ``entries`` with the KEK and replace the store atomically (mode 0600)."""
    import json

    from meshcore._files import atomic_write

    atomic_write(path, seal(kek, purpose, json.dumps({"version": 1, "tokens": entries}).encode()))


class SealedEntries:
    """A sealed ``entries`` list (the format of :func:`write_sealed_entries`) at one key of a state backend.

    In the state directory the key is the file it always was; in Consul KV every replica keeps a copy that a
    blocking query refreshes (:meth:`follow`), so a lookup on every request (operator authentication) does not
    go to Consul. Changes are compare-and-set loops (:func:`meshcore.state.update`): two replicas changing the
    list at once both land."""

    def __init__(self, backend: StateBackend, key: str, kek: bytes, purpose: str, what: str):
        check_kek(kek)
        self.backend, self.key, self._kek, self.purpose, self.what = backend, key, bytes(kek), purpose, what
        self._cache: tuple[int, list] | None = None  # (index, entries) of the last version decoded
        self._held: bytes | None = None  # its stored value
        self._watcher: Any = None

    @classmethod
    def at(cls, backend: StateBackend | None, path: Path, shared_key: str, kek: bytes, purpose: str, what: str) -> SealedEntries:
        """On a shared ``backend`` (followed), the key ``shared_key``; otherwise the file ``path`` as always."""
        if backend is not None and backend.shared:
            doc = cls(backend, shared_key, kek, purpose, what)
            doc.follow()
            return doc
        return cls(DirBackend(path.parent), path.name, kek, purpose, what)

    @property
    def where(self) -> str:
        root = getattr(self.backend, "root", None)
        return str(root / self.key) if root is not None else f"{self.backend.location} key {self.key!r}"

    def _decode(self, entry: Entry | None) -> list:
        if entry is None:
            return []
        cached = self._cache
        if cached is not None and cached[0] == entry.index:
            return [dict(e) for e in cached[1]]
        body = unseal(self._kek, self.purpose, entry.value, where=self.where)
        try:
            entries = list(json.loads(body)["tokens"])
        except (ValueError, KeyError, TypeError) as exc:
            raise CAError(f"{self.what} {self.where} is damaged: {exc}") from exc
        self._cache = (entry.index, entries)
        self._held = entry.value
        return [dict(e) for e in entries]

    def _encode(self, entries: list) -> bytes:
        return seal(self._kek, self.purpose, json.dumps({"version": 1, "tokens": entries}).encode())

    def exists(self) -> bool:
        return self.backend.get(self.key) is not None

    def read(self) -> list:
        """The entries (``[]`` before the first write); the followed copy when :meth:`follow` runs."""
        if self._watcher is not None and self._cache is not None:
            return [dict(e) for e in self._cache[1]]
        return self._decode(self.backend.get(self.key))

    def update(self, change: Callable[[list], list]) -> list:
        """Apply ``change(entries) -> new entries`` with compare-and-set (re-read and retried on a lost race)."""
        written: list = []

        def step(entry):
            written[:] = change(self._decode(entry))
            return self._encode(written)

        update(self.backend, self.key, step, doing=f"changing the {self.what}")
        self._cache = None
        return written

    def replace(self, entries: list) -> bool:
        """Write ``entries`` only when the key is absent (migration); True when written."""
        return bool(self.backend.put(self.key, self._encode(entries), cas=0))

    def follow(self) -> None:
        """Keep a copy current by a blocking query (shared backends; the directory is read on each call)."""
        def changed(entries: list[Entry]) -> None:
            match = next((e for e in entries if e.key == self.key), None)
            if match is not None:
                self._decode(match)
            elif self._held is not None:  # never deleted by meshcore (an empty list is written): Consul lost it
                log.error("%s disappeared (Consul lost its data?); writing back the "
                                                       "copy this replica holds", self.where)
                self.backend.put(self.key, self._held, cas=0)
            else:
                self._cache = (0, [])

        self._watcher = PrefixWatcher(self.backend, self.key, changed, name=self.purpose).start()

    def close(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
