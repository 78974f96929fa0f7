"""Private: the CA's files. Sealed CA key pairs and the (public) rotation state.

A sealed key pair is JSON ``{"cert", "key", "chain", "trust_domain"}`` encrypted with the KEK:
``key`` is the base64 PKCS#8 DER private key, or null for a root whose key the operator keeps
(external upstream CA); ``chain`` lists PEM certificates between this one and its root.
``rotation.json`` holds only public certificates and the phase, so it is plain JSON (0600).
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshcore._files import atomic_write
from meshcore.errors import CAError

from ._sealed import seal, unseal
from .keys import key_type_of
from .model import parse_rfc3339, rfc3339

PHASE_IDLE = "idle"
PHASE_PREPARING = "preparing"
PHASE_ROTATING = "rotating"


def pem_of(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


@dataclass(frozen=True)
class KeyPair:
    """A CA certificate and its private key (None: an operator's root, only the certificate is known)."""

    cert: x509.Certificate
    key: Any | None
    chain: tuple[x509.Certificate, ...] = ()

    @property
    def pem(self) -> str:
        return pem_of(self.cert)


def seal_pair(kek: bytes, purpose: str, pair: KeyPair, trust_domain: str) -> bytes:
    key_b64 = None
    if pair.key is not None:
        der = pair.key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                     serialization.NoEncryption())
        key_b64 = base64.b64encode(der).decode("ascii")
    body = {"cert": pair.pem, "key": key_b64, "chain": [pem_of(c) for c in pair.chain],
            "trust_domain": trust_domain}
    return seal(kek, purpose, json.dumps(body).encode())


def write_pair(path: Path, kek: bytes, purpose: str, pair: KeyPair, trust_domain: str) -> None:
    atomic_write(path, seal_pair(kek, purpose, pair, trust_domain))


def unseal_pair(kek: bytes, purpose: str, path: Path, *, need_key: bool = True) -> tuple[KeyPair, str | None]:
    """Read a sealed pair; returns it and the trust domain stored with it (None in older files)."""
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc}") from exc
    return unseal_pair_blob(kek, purpose, blob, where=str(path), need_key=need_key)


def unseal_pair_blob(kek: bytes, purpose: str, blob: bytes, *, where: str,
                     need_key: bool = True) -> tuple[KeyPair, str | None]:
    """:func:`unseal_pair` of bytes read elsewhere (Consul KV); ``where`` names them in errors."""
    path = where
    body = unseal(kek, purpose, blob, where=where)
    try:
        data = json.loads(body)
        cert = x509.load_pem_x509_certificate(data["cert"].encode("ascii"))
        key = None
        if data.get("key"):
            key = serialization.load_der_private_key(base64.b64decode(data["key"]), password=None)
        chain = tuple(x509.load_pem_x509_certificate(p.encode("ascii")) for p in data.get("chain") or [])
    except (ValueError, KeyError, TypeError) as exc:
        raise CAError(f"{path} decrypted but its content is damaged: {exc}") from exc
    if key is None and need_key:
        raise CAError(f"{path} holds no private key; restore the state dir from backup")
    if key is not None:
        try:
            key_type_of(key)
        except CAError as exc:
            raise CAError(f"{path}: {exc}") from exc
        fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        if key.public_key().public_bytes(*fmt) != cert.public_key().public_bytes(*fmt):
            raise CAError(f"{path}: the private key does not match the certificate; restore the state dir from backup")
    return KeyPair(cert, key, chain), data.get("trust_domain")


@dataclass
class RotationState:
    """Where a root rotation stands. ``previous_roots`` are trusted until the rotation finishes."""

    phase: str = PHASE_IDLE
    started_at: datetime | None = None
    activated_at: datetime | None = None
    previous_roots: list[x509.Certificate] = field(default_factory=list)
    reason: str = ""
    previous_issuers: list[str] = field(default_factory=list)  # hex key ids of the intermediates under them
    # preparing, and kept there until the operator releases it (`meshctl ca rotate --hold`, then `--resume`):
    # the new root is in the bundle, leaves still come from the old one (time to hand it to federated peers)
    held: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "version": 1, "phase": self.phase, "reason": self.reason,
            "started_at": rfc3339(self.started_at) if self.started_at else None,
            "activated_at": rfc3339(self.activated_at) if self.activated_at else None,
            "previous_roots": [pem_of(c) for c in self.previous_roots],
            "previous_issuers": list(self.previous_issuers),
            **({"held": True} if self.held else {}),
        }

    @classmethod
    def read(cls, path: Path) -> RotationState:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot read {path}: {exc}; restore it from backup (it holds the rotation state)") from exc
        return cls.from_json(data, str(path))

    @classmethod
    def from_json(cls, data: Any, path: str) -> RotationState:
        """The state :meth:`to_json` wrote; ``path`` names where it came from in errors."""
        try:
            phase = data["phase"]
            if phase not in (PHASE_PREPARING, PHASE_ROTATING):
                raise ValueError(f"unknown phase {phase!r}")
            return cls(
                phase=phase, reason=str(data.get("reason") or ""),
                started_at=parse_rfc3339(data["started_at"]) if data.get("started_at") else None,
                activated_at=parse_rfc3339(data["activated_at"]) if data.get("activated_at") else None,
                previous_roots=[x509.load_pem_x509_certificate(p.encode()) for p in data.get("previous_roots") or []],
                previous_issuers=[str(k).lower() for k in data.get("previous_issuers") or []],
                held=phase == PHASE_PREPARING and data.get("held") is True,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CAError(f"{path} is damaged: {exc}; restore it from backup") from exc

    def write(self, path: Path) -> None:
        if self.phase == PHASE_IDLE:
            path.unlink(missing_ok=True)
            return
        atomic_write(path, json.dumps(self.to_json(), indent=1).encode())
