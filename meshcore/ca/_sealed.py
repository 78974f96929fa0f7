"""Private: AES-256-GCM envelopes for everything secret the CA keeps on disk.

Format: ``MAGIC || nonce(12) || ciphertext+tag``. The associated data binds the envelope to its
purpose (``b"root"``, ``b"join-tokens"``, ...), so a sealed file copied over another one is
rejected instead of being read as the wrong thing.
"""

from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from meshcore.errors import CAError

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
