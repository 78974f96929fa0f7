"""The SPIFFE certificate authority: a root, an intermediate, and X509-SVID leaves signed from CSRs.

State directory (mode 0700; every file 0600, written atomically):

* ``root.sealed`` / ``intermediate.sealed``: the CA certificate and its private key, sealed with
  the KEK (AES-256-GCM). No private key is ever on disk in the clear.
* ``issued.json``: metadata and public PEMs of issued, unexpired leaves (no keys: the CA never
  sees a leaf key).
* ``.ca.lock``: empty lock file serialising writers across processes (control plane, ``meshctl``).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshcore import naming
from meshcore._files import atomic_write, ensure_private_dir, file_lock
from meshcore.errors import CAError, SigningRefused

from ._sealed import check_kek, seal, unseal
from ._spiffeid import check_trust_domain, parse_workload_id
from ._x509 import build_ca_cert, build_leaf_cert, serial_hex
from .model import IssuedCertificate

log = logging.getLogger(__name__)

ROOT_TTL = timedelta(days=3650)
INTERMEDIATE_TTL = timedelta(days=365)
INTERMEDIATE_RENEW_BEFORE = timedelta(days=30)
CLOCK_SKEW = timedelta(minutes=1)

ROOT_FILE = "root.sealed"
INTERMEDIATE_FILE = "intermediate.sealed"
ISSUED_FILE = "issued.json"
LOCK_FILE = ".ca.lock"

_DNS_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(frozen=True)
class _KeyPair:
    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _seal_pair(kek: bytes, purpose: str, pair: _KeyPair) -> bytes:
    key_der = pair.key.private_bytes(
        serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    body = json.dumps({"cert": pair.pem, "key": base64.b64encode(key_der).decode("ascii")}).encode()
    return seal(kek, purpose, body)


def _unseal_pair(kek: bytes, purpose: str, path: Path) -> _KeyPair:
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise CAError(f"cannot read {path}: {exc}") from exc
    body = unseal(kek, purpose, blob, where=str(path))
    try:
        data = json.loads(body)
        cert = x509.load_pem_x509_certificate(data["cert"].encode("ascii"))
        key = serialization.load_der_private_key(base64.b64decode(data["key"]), password=None)
    except (ValueError, KeyError, TypeError) as exc:
        raise CAError(f"{path} decrypted but its content is damaged: {exc}") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CAError(f"{path} holds a {type(key).__name__}, expected an ECDSA key")
    if key.public_key().public_numbers() != cert.public_key().public_numbers():  # type: ignore[union-attr]
        raise CAError(f"{path}: the private key does not match the certificate; restore the state dir from backup")
    return _KeyPair(cert, key)


def _ca_trust_domain(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):]
    return None


class CertificateAuthority:
    """Signs X509-SVIDs for one trust domain. Create or load with :meth:`open`. Thread-safe."""

    def __init__(
        self,
        *,
        state_dir: Path,
        trust_domain: str,
        kek: bytes,
        leaf_ttl: timedelta,
        clock: Callable[[], datetime],
        root: _KeyPair,
        intermediate: _KeyPair,
    ) -> None:
        self.state_dir = state_dir
        self.trust_domain = trust_domain
        self.leaf_ttl = leaf_ttl
        self._kek = bytes(kek)
        self._clock = clock
        self._root = root
        self._intermediate = intermediate
        self._lock = threading.Lock()

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        state_dir: Path | str,
        *,
        trust_domain: str = naming.DEFAULT_TRUST_DOMAIN,
        kek: bytes,
        leaf_ttl: timedelta = timedelta(hours=24),
        clock: Callable[[], datetime] = _utcnow,
    ) -> "CertificateAuthority":
        """Load the CA from ``state_dir``, creating a root (10 y) and intermediate (1 y) on first use.

        Raises :class:`CAError` when the KEK does not decrypt the stored keys, the stored CA
        belongs to another trust domain, or the root has expired.
        """
        state_dir = Path(state_dir)
        check_trust_domain(trust_domain, CAError)
        check_kek(kek)
        if leaf_ttl <= timedelta(0):
            raise CAError(f"leaf_ttl must be positive, got {leaf_ttl}")
        ensure_private_dir(state_dir)
        now = _now(clock)
        with file_lock(state_dir / LOCK_FILE):
            root_path, inter_path = state_dir / ROOT_FILE, state_dir / INTERMEDIATE_FILE
            if not root_path.exists():
                if inter_path.exists():
                    raise CAError(
                        f"{inter_path} exists but {root_path} is missing; restore {root_path.name} from backup "
                        "(or empty the directory to create a new CA, which invalidates every issued certificate)"
                    )
                root, intermediate = _create_ca(state_dir, trust_domain, kek, now)
            else:
                root = _unseal_pair(kek, "ca-root", root_path)
                stored_td = _ca_trust_domain(root.cert)
                if stored_td != trust_domain:
                    raise CAError(
                        f"the CA in {state_dir} is for trust domain {stored_td!r}, not {trust_domain!r}; "
                        "pass the right trust domain or use another state directory"
                    )
                if root.cert.not_valid_after_utc <= now:
                    raise CAError(
                        f"the root CA in {state_dir} expired at {root.cert.not_valid_after_utc.isoformat()}; "
                        "a new root must be created and distributed"
                    )
                if inter_path.exists():
                    intermediate = _unseal_pair(kek, "ca-intermediate", inter_path)
                    try:
                        intermediate.cert.verify_directly_issued_by(root.cert)
                    except (ValueError, TypeError, InvalidSignature) as exc:
                        raise CAError(f"{inter_path} was not issued by the root in {root_path}") from exc
                else:
                    intermediate = _new_intermediate(state_dir, trust_domain, kek, root, now)
            ca = cls(
                state_dir=state_dir, trust_domain=trust_domain, kek=kek, leaf_ttl=leaf_ttl, clock=clock,
                root=root, intermediate=intermediate,
            )
            ca._renew_intermediate_if_due(now)
        return ca

    def _renew_intermediate_if_due(self, now: datetime) -> None:
        """Replace the intermediate when it has less than 30 days (or one leaf TTL) left and the root
        allows a longer-lived one. Caller holds the file lock."""
        threshold = max(INTERMEDIATE_RENEW_BEFORE, self.leaf_ttl)
        remaining = self._intermediate.cert.not_valid_after_utc - now
        if remaining > threshold:
            return
        # Another process (meshctl, a second control plane) may have renewed it already.
        on_disk = self.state_dir / INTERMEDIATE_FILE
        if on_disk.exists():
            stored = _unseal_pair(self._kek, "ca-intermediate", on_disk)
            if stored.cert.not_valid_after_utc > self._intermediate.cert.not_valid_after_utc:
                try:
                    stored.cert.verify_directly_issued_by(self._root.cert)
                except (ValueError, TypeError, InvalidSignature) as exc:
                    raise CAError(f"{on_disk} was not issued by this CA's root") from exc
                self._intermediate = stored
                remaining = stored.cert.not_valid_after_utc - now
                if remaining > threshold:
                    return
        if self._root.cert.not_valid_after_utc <= self._intermediate.cert.not_valid_after_utc:
            if remaining <= timedelta(0):
                raise CAError("the intermediate CA expired and the root expires too; a new root is needed")
            log.warning("root CA expires soon, intermediate cannot be renewed past it trust_domain=%s",
                        self.trust_domain)
            return
        self._intermediate = _new_intermediate(self.state_dir, self.trust_domain, self._kek, self._root, now)

    # --- public API ------------------------------------------------------------------------

    def bundle_pem(self) -> str:
        """The trust anchors of this trust domain (the root certificate), PEM."""
        return self._root.pem

    def intermediate_pem(self) -> str:
        """The current intermediate certificate, PEM."""
        return self._intermediate.pem

    def sign_csr(
        self,
        csr_pem: str | bytes,
        *,
        spiffe_id: str,
        node: str | None = None,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> IssuedCertificate:
        """Sign ``csr_pem`` as an X509-SVID for ``spiffe_id``.

        The CSR's signature must verify, and it must carry no SAN or exactly the URI SAN
        ``spiffe_id`` (plus, for the control plane, DNS/IP SANs among those requested). Raises
        :class:`SigningRefused` saying why when it does not. Authorisation (is this node allowed
        this identity?) is the caller's job: see :func:`check_workload_request`.
        """
        sid = parse_workload_id(spiffe_id, SigningRefused)
        if sid.trust_domain.name != self.trust_domain:
            raise SigningRefused(
                f"{spiffe_id} is in trust domain {sid.trust_domain.name!r}; this CA signs only {self.trust_domain!r}"
            )
        ttl = self.leaf_ttl if ttl is None else ttl
        if ttl <= timedelta(0):
            raise SigningRefused(f"ttl must be positive, got {ttl}")
        dns_names, ip_addresses = self._check_extra_sans(spiffe_id, dns_names, ip_addresses)
        csr = _load_csr(csr_pem)
        _check_csr_key(csr)
        _check_csr_sans(csr, spiffe_id, dns_names, ip_addresses)

        with self._lock, file_lock(self.state_dir / LOCK_FILE):
            now = _now(self._clock)
            self._renew_intermediate_if_due(now)
            inter = self._intermediate
            not_before = max(now - CLOCK_SKEW, inter.cert.not_valid_before_utc)
            not_after = min(now + ttl, inter.cert.not_valid_after_utc)
            cert = build_leaf_cert(
                spiffe_id=spiffe_id, public_key=csr.public_key(), not_before=not_before, not_after=not_after,
                issuer_cert=inter.cert, issuer_key=inter.key, dns_names=dns_names, ip_addresses=ip_addresses,
            )
            leaf_pem = cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
            issued = IssuedCertificate(
                spiffe_id=spiffe_id,
                serial=serial_hex(cert.serial_number),
                not_before=cert.not_valid_before_utc,
                not_after=cert.not_valid_after_utc,
                cert_pem=leaf_pem,
                chain_pem=leaf_pem + inter.pem,
                node=node,
            )
            self._record(issued, now)
        log.info(
            "issued certificate spiffe_id=%s serial=%s node=%s not_after=%s",
            spiffe_id, issued.serial, node, issued.not_after.isoformat(),
            extra={"spiffe_id": spiffe_id, "serial": issued.serial, "node": node},
        )
        return issued

    def issued(self) -> list[IssuedCertificate]:
        """Every unexpired certificate issued, the newest per (spiffe_id, node), sorted by spiffe_id, node."""
        now = _now(self._clock)
        newest: dict[tuple[str, str | None], IssuedCertificate] = {}
        for cert in self._read_issued():
            if cert.not_after > now:
                newest[(cert.spiffe_id, cert.node)] = cert  # file is in issuance order: last wins
        return [newest[k] for k in sorted(newest, key=lambda k: (k[0], k[1] or ""))]

    # --- internals -------------------------------------------------------------------------

    def _check_extra_sans(
        self, spiffe_id: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        if isinstance(dns_names, str) or isinstance(ip_addresses, str):
            raise SigningRefused("dns_names and ip_addresses must be sequences of strings, not a string")
        dns, ips = tuple(dns_names), tuple(ip_addresses)
        if not dns and not ips:
            return dns, ips
        cp_id = naming.control_plane_spiffe_id(self.trust_domain)
        if spiffe_id != cp_id:
            raise SigningRefused(
                f"DNS/IP SANs are only issued to the control plane ({cp_id}), not to {spiffe_id}"
            )
        for name in dns:
            if not _DNS_NAME.match(name) or len(name) > 253:
                raise SigningRefused(f"invalid DNS name {name!r} for the control plane certificate")
        canonical_ips = []
        for ip in ips:
            try:
                canonical_ips.append(str(ipaddress.ip_address(ip)))
            except ValueError as exc:
                raise SigningRefused(f"invalid IP address {ip!r} for the control plane certificate") from exc
        return dns, tuple(canonical_ips)

    def _read_issued(self) -> list[IssuedCertificate]:
        path = self.state_dir / ISSUED_FILE
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise CAError(f"cannot read {path}: {exc}; move it aside to start a fresh listing") from exc
        try:
            return [IssuedCertificate.from_dict(d) for d in data.get("certificates", [])]
        except (KeyError, TypeError, ValueError) as exc:
            raise CAError(f"{path} is damaged: {exc}; move it aside to start a fresh listing") from exc

    def _record(self, issued: IssuedCertificate, now: datetime) -> None:
        """Append ``issued`` to issued.json, dropping expired entries. Caller holds the file lock."""
        kept = [c for c in self._read_issued() if c.not_after > now]
        kept.append(issued)
        body = {"version": 1, "certificates": [c.to_dict() for c in kept]}
        atomic_write(self.state_dir / ISSUED_FILE, json.dumps(body, indent=1).encode())


# --- helpers -----------------------------------------------------------------------------------

def _now(clock: Callable[[], datetime]) -> datetime:
    now = clock()
    if now.tzinfo is None:
        raise CAError("the CA clock must return timezone-aware datetimes (UTC)")
    return now.astimezone(timezone.utc)


def _create_ca(state_dir: Path, trust_domain: str, kek: bytes, now: datetime) -> tuple[_KeyPair, _KeyPair]:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_ca_cert(
        trust_domain=trust_domain, role="root", key=key, not_before=now - CLOCK_SKEW,
        not_after=now + ROOT_TTL, path_length=1,
    )
    root = _KeyPair(cert, key)
    atomic_write(state_dir / ROOT_FILE, _seal_pair(kek, "ca-root", root))
    log.info("created root CA trust_domain=%s not_after=%s", trust_domain, cert.not_valid_after_utc.isoformat())
    return root, _new_intermediate(state_dir, trust_domain, kek, root, now)


def _new_intermediate(state_dir: Path, trust_domain: str, kek: bytes, root: _KeyPair, now: datetime) -> _KeyPair:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = build_ca_cert(
        trust_domain=trust_domain, role="intermediate", key=key, not_before=now - CLOCK_SKEW,
        not_after=min(now + INTERMEDIATE_TTL, root.cert.not_valid_after_utc), path_length=0,
        issuer_cert=root.cert, issuer_key=root.key,
    )
    pair = _KeyPair(cert, key)
    atomic_write(state_dir / INTERMEDIATE_FILE, _seal_pair(kek, "ca-intermediate", pair))
    log.info("issued intermediate CA trust_domain=%s not_after=%s", trust_domain, cert.not_valid_after_utc.isoformat())
    return pair


def _load_csr(csr_pem: str | bytes) -> x509.CertificateSigningRequest:
    data = csr_pem.encode("ascii", errors="replace") if isinstance(csr_pem, str) else bytes(csr_pem)
    try:
        csr = x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise SigningRefused(f"not a PEM certificate signing request: {exc}") from exc
    try:
        valid = csr.is_signature_valid
    except Exception as exc:  # unsupported algorithms surface as assorted errors
        raise SigningRefused(f"cannot verify the CSR signature: {exc}") from exc
    if not valid:
        raise SigningRefused("the CSR's self-signature does not verify; it was altered or signed with another key")
    return csr


def _check_csr_key(csr: x509.CertificateSigningRequest) -> None:
    try:
        key = csr.public_key()
    except Exception as exc:
        raise SigningRefused(f"unsupported public key in the CSR: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise SigningRefused(f"CSR key uses curve {key.curve.name}; use P-256 (or P-384)")
        return
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SigningRefused(f"CSR has a {key.key_size}-bit RSA key; at least 2048 bits are required")
        return
    raise SigningRefused(f"CSR key type {type(key).__name__} is not supported; use ECDSA P-256")


def _check_csr_sans(
    csr: x509.CertificateSigningRequest, spiffe_id: str, dns_names: Sequence[str], ip_addresses: Sequence[str]
) -> None:
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    except ValueError as exc:
        raise SigningRefused(f"the CSR's extensions cannot be parsed: {exc}") from exc
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    if uris != [spiffe_id]:
        raise SigningRefused(
            f"the CSR asks for URI SAN(s) {uris} but the requested identity is {spiffe_id}; "
            "the CSR must carry exactly that one URI SAN, or no SAN at all"
        )
    for general_name in san:
        if isinstance(general_name, x509.UniformResourceIdentifier):
            continue
        if isinstance(general_name, x509.DNSName) and general_name.value in dns_names:
            continue
        if isinstance(general_name, x509.IPAddress) and str(general_name.value) in ip_addresses:
            continue
        raise SigningRefused(
            f"the CSR asks for SAN {general_name.value!s}, which was not requested; "
            "an X509-SVID carries only its SPIFFE ID"
        )
