"""The node's identity on disk, workload SVIDs in memory, and when to renew them.

Layout of the state directory (0700)::

    node.key     the node's private key (0600), made here, never sent anywhere
    node.crt     node certificate chain (leaf + intermediate) from join / renew-node
    bundle.pem   the trust domain's roots
    agent.json   trust domain, xDS address, hash of the join token already used

Renewal rotates the key: the new key and certificate are first written as ``*.pending`` files and
then renamed into place; :meth:`NodeIdentityStore.load` completes an interrupted rotation, so a
crash never leaves a key that does not match its certificate.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from meshcore._files import (
    atomic_write,
    ensure_private_dir,
    os_errors_as,
    read_text,
    remove_stale_temp_files,
    write_if_changed,
)
from meshcore.ca import cert_info
from meshcore.errors import AgentError, MeshError

RENEW_FRACTION = 0.5
RENEW_JITTER = 0.1
MIN_RENEW_DELAY = timedelta(seconds=1)

KEY_FILE = "node.key"
CERT_FILE = "node.crt"
BUNDLE_FILE = "bundle.pem"
META_FILE = "agent.json"
PENDING = ".pending"


# --- renewal scheduling (pure) --------------------------------------------------------------

def parse_time(value: str) -> datetime:
    """RFC 3339 (``...Z`` or with an offset) -> aware UTC datetime."""
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise AgentError(f"not an RFC 3339 time: {value!r}") from exc
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed.astimezone(timezone.utc)


def renewal_time(not_before: datetime, not_after: datetime, jitter: float = 0.0,
                 *, issued_at: datetime | None = None, fraction: float = RENEW_FRACTION,
                 max_jitter: float = RENEW_JITTER) -> datetime:
    """When to renew a certificate: at ``fraction`` of its lifetime, moved by ``jitter``.

    ``jitter`` in [-1, 1] scales ``max_jitter`` (±10 % of the half-life by default), so a fleet
    issued at the same moment does not renew in the same second. A 30 s leaf renews between
    13.5 s and 16.5 s after it starts.

    CAs backdate ``not_before`` to absorb clock skew (meshcore's by a minute), which with short
    leaves would put "half-life" in the past and renew in a loop; so the lifetime counts from
    ``issued_at`` (when the agent received the certificate) when that is later than ``not_before``.
    """
    if not -1.0 <= jitter <= 1.0:
        raise ValueError(f"jitter must be within [-1, 1], got {jitter}")
    start = max(not_before, issued_at) if issued_at is not None else not_before
    lifetime = not_after - start
    if lifetime <= timedelta(0):
        return start
    return start + lifetime * (fraction * (1.0 + max_jitter * jitter))


def random_jitter(rng: random.Random | None = None) -> float:
    """A uniform draw in [-1, 1] for :func:`renewal_time`."""
    return (rng or random).uniform(-1.0, 1.0)


def next_wakeup(now: datetime, deadlines: list[datetime], cap: float, floor: float = 0.05) -> float:
    """Seconds to sleep: until the earliest deadline, at most ``cap``, at least ``floor``."""
    delay = cap
    for deadline in deadlines:
        delay = min(delay, (deadline - now).total_seconds())
    return max(floor, delay)


# --- certificates ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CertSummary:
    """What the agent needs to know about a certificate it holds."""

    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    issuer_key_id: str = ""  # hex AKI: which intermediate signed it

    @classmethod
    def of(cls, pem: str) -> CertSummary:
        try:
            info = cert_info(pem)
        except MeshError as exc:
            raise AgentError(f"cannot read certificate: {exc}") from exc
        return cls(spiffe_id=info.get("spiffe_id") or "", serial=info["serial"],
                   not_before=parse_time(info["not_before"]), not_after=parse_time(info["not_after"]),
                   issuer_key_id=issuer_key_id(pem))

    def expired(self, now: datetime) -> bool:
        return now >= self.not_after

    def to_json(self) -> dict[str, str]:
        return {"spiffe_id": self.spiffe_id, "serial": self.serial,
                "not_before": rfc3339(self.not_before), "not_after": rfc3339(self.not_after)}


def issuer_key_id(pem: str) -> str:
    """Hex authority key identifier of the first certificate in ``pem`` ("" when it has none)."""
    try:
        cert = x509.load_pem_x509_certificates(pem.encode())[0]
        key_id = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value.key_identifier
    except (ValueError, IndexError, x509.ExtensionNotFound):
        return ""
    return key_id.hex() if key_id is not None else ""  # an AKI may name only the issuer and serial


def bundle_sha256(bundle_pem: str | None) -> str:
    """Hex SHA-256 of the bundle text, as the control plane computes it ("" for no bundle)."""
    return hashlib.sha256(bundle_pem.encode()).hexdigest() if bundle_pem else ""


def early_renewal(renew_at: datetime, now: datetime, window: float, jitter: float) -> datetime:
    """Bring a renewal forward into ``[now, now + window]`` (``jitter`` in [0, 1] picks where), so a
    fleet told at once that its issuer changed spreads its requests over one refresh interval.
    A renewal already due within the window is left alone."""
    due = now + timedelta(seconds=window * jitter)
    return renew_at if renew_at <= now + timedelta(seconds=window) else due


def bundle_trust_domain(bundle_pem: str) -> str | None:
    """The trust domain named by a SPIFFE CA certificate in ``bundle_pem`` (URI SAN ``spiffe://<td>``).

    Lets the agent ask for the right node identity on its first join, before the control plane
    has told it the trust domain. None when no certificate carries one.
    """
    try:
        certs = x509.load_pem_x509_certificates(bundle_pem.encode())
    except ValueError:
        return None
    for cert in certs:
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            continue
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith("spiffe://"):
                td = uri[len("spiffe://"):].split("/", 1)[0]
                if td:
                    return td
    return None


def key_matches_cert(key_pem: str, cert_pem: str) -> bool:
    """True when ``key_pem`` is the private key of the first certificate in ``cert_pem``."""
    try:
        key = serialization.load_pem_private_key(key_pem.encode(), password=None)
        cert = x509.load_pem_x509_certificates(cert_pem.encode())[0]
    except (ValueError, TypeError):
        return False
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


@dataclass
class Credential:
    """A certificate chain with its private key and renewal deadline (the node identity or one SVID).

    A workload SVID's key lives only in this object and in the service's 0600 secret file.
    """

    chain_pem: str
    key_pem: str
    summary: CertSummary
    renew_at: datetime
    started: datetime | None = None  # when its lifetime counts from (received, if later than not_before)

    @property
    def lifetime(self) -> timedelta:
        """not_after minus when it was received (the CA backdates not_before; see :func:`renewal_time`)."""
        start = max(self.summary.not_before, self.started) if self.started else self.summary.not_before
        return self.summary.not_after - start

    @classmethod
    def build(cls, chain_pem: str, key_pem: str, jitter: float, issued_at: datetime | None = None) -> Credential:
        """``issued_at``: when it was received (now for a fresh one, the file's mtime for one on disk)."""
        summary = CertSummary.of(chain_pem)
        renew_at = renewal_time(summary.not_before, summary.not_after, jitter, issued_at=issued_at)
        if issued_at is not None:  # never renew in a tight loop, whatever the CA hands out
            renew_at = max(renew_at, issued_at + MIN_RENEW_DELAY)
        return cls(chain_pem=chain_pem, key_pem=key_pem, summary=summary, renew_at=renew_at, started=issued_at)


# --- node state on disk ---------------------------------------------------------------------

@dataclass
class AgentMeta:
    trust_domain: str = ""
    xds_address: str = ""
    used_token_sha256: list[str] = field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AgentMeta:
        return cls(trust_domain=str(data.get("trust_domain") or ""),
                   xds_address=str(data.get("xds_address") or ""),
                   used_token_sha256=[str(t) for t in data.get("used_token_sha256") or []])

    def to_json(self) -> dict[str, Any]:
        return {"trust_domain": self.trust_domain, "xds_address": self.xds_address,
                "used_token_sha256": self.used_token_sha256}


def file_mtime(path: Path) -> datetime | None:
    """When ``path`` was last written (UTC), or None when it does not exist."""
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, timezone.utc)
    except FileNotFoundError:
        return None


def token_digest(token: str) -> str:
    return hashlib.sha256(token.strip().encode()).hexdigest()


class NodeIdentityStore:
    """Reads and writes the node's key, certificate, trust bundle and metadata under ``state_dir``."""

    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.key_path = state_dir / KEY_FILE
        self.cert_path = state_dir / CERT_FILE
        self.bundle_path = state_dir / BUNDLE_FILE
        self.meta_path = state_dir / META_FILE

    def prepare(self) -> None:
        """Create the state directory (0700) and finish any interrupted key rotation."""
        with os_errors_as(AgentError, f"cannot create directory {self.state_dir}", "check the agent's permissions"):
            ensure_private_dir(self.state_dir)
        remove_stale_temp_files(self.state_dir)
        self._complete_pending()

    def _complete_pending(self) -> None:
        key_pending = self.key_path.with_name(KEY_FILE + PENDING)
        cert_pending = self.cert_path.with_name(CERT_FILE + PENDING)
        if cert_pending.exists():
            # the certificate is renamed last, so a pending certificate means the rotation was decided
            if key_pending.exists():
                key_pending.replace(self.key_path)
            cert_pending.replace(self.cert_path)
        elif key_pending.exists():
            key_pending.unlink()  # crashed before the certificate was written: keep the old pair

    def load_node(self, jitter: float) -> Credential | None:
        """The node credential on disk, or None when the agent has not joined (or the files are unusable)."""
        key_pem, chain_pem = _read(self.key_path), _read(self.cert_path)
        if not key_pem or not chain_pem:
            return None
        if not key_matches_cert(key_pem, chain_pem):
            raise AgentError(
                f"{self.key_path} does not match {self.cert_path}; remove both and join again with a new token "
                "(`meshctl token create --node NAME`)"
            )
        return Credential.build(chain_pem, key_pem, jitter, issued_at=file_mtime(self.cert_path))

    def save_node(self, chain_pem: str, key_pem: str) -> None:
        """Install a new node key and certificate chain (crash-safe, see the module docstring)."""
        if not key_matches_cert(key_pem, chain_pem):
            raise AgentError("the control plane returned a node certificate that does not match the key sent")
        key_pending = self.key_path.with_name(KEY_FILE + PENDING)
        cert_pending = self.cert_path.with_name(CERT_FILE + PENDING)
        with os_errors_as(AgentError, f"cannot write {key_pending}"):
            atomic_write(key_pending, key_pem, 0o600)
        with os_errors_as(AgentError, f"cannot write {cert_pending}"):
            atomic_write(cert_pending, chain_pem, 0o644)
        key_pending.replace(self.key_path)
        cert_pending.replace(self.cert_path)

    def load_bundle(self) -> str | None:
        return _read(self.bundle_path) or None

    def save_bundle(self, bundle_pem: str) -> bool:
        with os_errors_as(AgentError, f"cannot write {self.bundle_path}"):
            return write_if_changed(self.bundle_path, bundle_pem, 0o644)

    def load_meta(self) -> AgentMeta:
        text = _read(self.meta_path)
        if not text:
            return AgentMeta()
        try:
            return AgentMeta.from_json(json.loads(text))
        except (ValueError, AttributeError) as exc:
            raise AgentError(f"{self.meta_path} is not valid JSON ({exc}); remove it, it is rebuilt on join") from exc

    def save_meta(self, meta: AgentMeta) -> bool:
        with os_errors_as(AgentError, f"cannot write {self.meta_path}"):
            return write_if_changed(self.meta_path, json.dumps(meta.to_json(), indent=2, sort_keys=True) + "\n", 0o644)


def _read(path: Path) -> str | None:
    """The file's text, or None when it does not exist; AgentError when it cannot be read."""
    with os_errors_as(AgentError, f"cannot read {path}"):
        return read_text(path)


def rfc3339(value: datetime) -> str:
    """UTC RFC 3339 with ``Z``, second precision."""
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


PENDING_CN = "meshcore pending SVID"
PENDING_LIFETIME = timedelta(days=1)


def pending_certificate(service: str) -> tuple[str, str]:
    """(certificate PEM, key PEM) standing in for ``service``'s SVID until it is issued.

    Self-signed, with no SPIFFE ID, so no peer trusts it (connections to the service fail closed
    for the moment it is served); it exists so Envoy can load a listener that names the service's
    SVID file before the real SVID is written over it (file SDS then reloads it in place).
    """
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, PENDING_CN),
                      x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME, service[:64] or "-")])
    now = datetime.now(timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + PENDING_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    return cert.public_bytes(serialization.Encoding.PEM).decode(), key_pem
