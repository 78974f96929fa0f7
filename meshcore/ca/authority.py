"""The SPIFFE certificate authority: a root, an intermediate, and X509-SVID leaves signed from CSRs.

State directory (mode 0700; every file 0600, written atomically):

* ``root.sealed`` / ``intermediate.sealed``: the CA certificate and its private key, sealed with
  the KEK (AES-256-GCM). No private key is ever on disk in the clear. With an external upstream CA
  ``root.sealed`` holds only the operator's root certificate (its key stays with the operator).
* ``next-root.sealed`` / ``next-intermediate.sealed``: the new CA while a root rotation prepares.
* ``rotation.json``: the rotation phase and the roots still trusted (public certificates only).
* ``issued.jsonl``: an append-only journal of issued leaves, metadata and public PEMs (no keys: the
  CA never sees a leaf key), compacted to the unexpired ones as it grows (see ``_issued.py``).
  An ``issued.json`` of older versions is moved into it on first use.
* ``revoked.jsonl``: append-only revocations: nodes (``meshctl node revoke``) and the intermediates a
  finished root rotation retired (see ``_revocations.py``). Nothing is ever removed from it.
* ``.ca.lock``: empty lock file serialising writers across processes (control plane, ``meshctl``).

Root rotation (:meth:`CertificateAuthority.begin_rotation`) has three phases, each persisted:

1. ``preparing``: a new root and intermediate exist; the bundle holds both roots, leaves are still
   signed by the old intermediate, so no peer ever sees a certificate it cannot verify. A rotation
   begun with ``hold`` stays here until :meth:`release_rotation` (time to hand the new root to the
   trust domains that federate with this one, whose peers must trust it too).
2. ``rotating`` (:meth:`activate_rotation`, once every proxy has the two-root bundle): leaves are
   signed by the new intermediate; the old root stays in the bundle.
3. ``idle`` again (:meth:`finish_rotation`, once no unexpired leaf chains to the old root): the old
   root leaves the bundle, and every intermediate under it is recorded as retired: a leaf it signed
   is refused at once by :meth:`node_certificate_refusal`, also on connections opened before.

Node identities: a node certificate lives ``node_ttl`` (7 days by default, apart from the short
workload leaves' ``leaf_ttl``); its record stays in the journal ``recovery_grace`` (30 days) past its
expiry so that :meth:`recover_node` can re-issue it to the holder of its key (see ``recovery.py``).
:meth:`revoke_node` ends a node's certificates (renewal, signing, recovery, ADS) at once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from meshcore import naming
from meshcore._files import ensure_private_dir, file_lock
from meshcore.errors import CAError, SigningRefused
from meshcore.state import StateBackend

from ._issued import IssuedJournal
from ._revocations import KIND_ISSUER, KIND_NODE, Revocation, RevocationJournal
from ._shared import DURABLE_WAIT, CARecord, SharedAuthority, SharedIssuedJournal, SharedRevocations
from ._sealed import check_kek
from ._spiffeid import check_trust_domain, parse_workload_id
from ._store import (
    PHASE_IDLE,
    PHASE_PREPARING,
    PHASE_ROTATING,
    KeyPair,
    RotationState,
    pem_of,
    unseal_pair,
    write_pair,
)
from ._x509 import build_ca_cert, build_leaf_cert, issuer_key_id, serial_hex, subject_key_id
from .keys import DEFAULT_KEY_TYPE, check_key_type, key_type_of, new_private_key
from .model import IssuedCertificate, parse_rfc3339, rfc3339
from .recovery import RECOVERY_SKEW, recovery_message, verify_recovery
from .upstream import UpstreamCA, check_signing_cert, describe

log = logging.getLogger(__name__)

ROOT_TTL = timedelta(days=3650)
INTERMEDIATE_TTL = timedelta(days=365)
INTERMEDIATE_RENEW_BEFORE = timedelta(days=30)
CLOCK_SKEW = timedelta(minutes=1)
DEFAULT_NODE_TTL = timedelta(days=7)  # node certificates (renewed at half life: survives a 3.5-day outage)
DEFAULT_RECOVERY_GRACE = timedelta(days=30)  # an expired node certificate's key recovers it this long
EXPIRED_LEAF_KEPT = timedelta(hours=24)  # an expired leaf stays on record (and in the expiry signal) this long

ROOT_FILE = "root.sealed"
INTERMEDIATE_FILE = "intermediate.sealed"
NEXT_ROOT_FILE = "next-root.sealed"
NEXT_INTERMEDIATE_FILE = "next-intermediate.sealed"
ROTATION_FILE = "rotation.json"
ISSUED_FILE = "issued.jsonl"
REVOKED_FILE = "revoked.jsonl"
LEGACY_ISSUED_FILE = "issued.json"
LOCK_FILE = ".ca.lock"
SHARED_COPY_FILE = "shared-ca.sealed"  # with shared state: this host's copy of ca/authority (keys sealed)
CERT_FACTS_CACHED = 4096  # node certificates whose parsed facts are remembered (about one per connected node)
VERIFIED_CSRS_KEPT = 64  # parsed CSRs whose signature verified, so check_csr then sign_csr verify once
ROOT_PURPOSE = "ca-root"
INTERMEDIATE_PURPOSE = "ca-intermediate"

_NODE_NAME = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9._-]{0,252})$")
_DNS_NAME = re.compile(r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$", re.I)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _ca_trust_domain(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
        if uri.startswith("spiffe://"):
            return uri[len("spiffe://"):]
    return None


def _issued_by(child: x509.Certificate, parent: x509.Certificate) -> bool:
    if child.issuer != parent.subject:
        return False
    try:
        child.verify_directly_issued_by(parent)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _fingerprint(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


class CertificateAuthority:
    """Signs X509-SVIDs for one trust domain. Create or load with :meth:`open`. Thread-safe.

    One process (the control plane) drives rotations; other handles (``meshctl``) see a rotation
    after they reopen the CA.
    """

    def __init__(
        self,
        *,
        state_dir: Path,
        trust_domain: str,
        kek: bytes,
        leaf_ttl: timedelta,
        clock: Callable[[], datetime],
        root: KeyPair,
        intermediate: KeyPair,
        key_type: str = DEFAULT_KEY_TYPE,
        rotation: RotationState | None = None,
        next_ca: tuple[KeyPair, KeyPair] | None = None,
        node_ttl: timedelta = DEFAULT_NODE_TTL,
        recovery_grace: timedelta = DEFAULT_RECOVERY_GRACE,
        shared: SharedAuthority | None = None,
    ) -> None:
        self.state_dir = state_dir
        self._lock_path = os.fspath(state_dir / LOCK_FILE)  # taken on every signature: joined once
        self.trust_domain = trust_domain
        self.leaf_ttl = leaf_ttl
        self.node_ttl = node_ttl
        self.recovery_grace = recovery_grace
        self.key_type = key_type
        self._kek = bytes(kek)
        self._clock = clock
        self._root = root
        self._intermediate = intermediate
        self._rotation = rotation or RotationState()
        self._next = next_ca
        self._anchors: dict[str, bytes | None] = {}  # leaf serial -> DER of the root it chains to
        self._lock = threading.RLock()
        self._bundle_cache: tuple[tuple[Any, ...], tuple[tuple[x509.Certificate, ...], str, str]] | None = None
        self._signer_cache: tuple[KeyPair, str, str, str] | None = None
        self._shared = shared  # the CA's state in a shared backend (Consul KV), see _shared.py
        self._journal: IssuedJournal
        self._revocations: RevocationJournal | SharedRevocations
        if shared is not None:
            self._journal = SharedIssuedJournal(shared.backend, retention=self._retention,
                                                clock=lambda: _now(self._clock))
            self._revocations = SharedRevocations(shared.backend, on_node_revoked=self._revoked_elsewhere)
        else:
            self._journal = IssuedJournal(state_dir / ISSUED_FILE, state_dir / LEGACY_ISSUED_FILE,
                                          retention=self._retention)
            self._revocations = RevocationJournal(state_dir / REVOKED_FILE)
        self._revocation_listeners: list[Callable[[str], None]] = []
        self._recovery_lock = threading.Lock()  # one recovery at a time: the record it checks moves on
        self._seen_proofs: dict[str, datetime] = {}  # recovery signatures accepted, until they are stale
        self._facts: dict[bytes, tuple[datetime, str | None, str]] = {}  # see _cert_facts
        self._verified: dict[int, x509.CertificateSigningRequest] = {}  # see _verified_csr

    def _retention(self, cert: IssuedCertificate) -> timedelta:
        """How long past its expiry a certificate stays on record (see the module docstring)."""
        if cert.node is not None and naming.parse_node_spiffe_id(cert.spiffe_id) is not None:
            return max(self.recovery_grace, EXPIRED_LEAF_KEPT)
        return EXPIRED_LEAF_KEPT

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
        key_type: str = DEFAULT_KEY_TYPE,
        upstream: UpstreamCA | None = None,
        node_ttl: timedelta = DEFAULT_NODE_TTL,
        recovery_grace: timedelta = DEFAULT_RECOVERY_GRACE,
        backend: StateBackend | None = None,
    ) -> "CertificateAuthority":
        """Load the CA from ``state_dir``, creating a root (10 y) and intermediate (1 y) on first use.

        With a shared ``backend`` (:class:`~meshcore.state.ConsulStateBackend`), the CA lives there instead and
        every control plane replica opening it shares it (see :meth:`_open_shared`); ``state_dir`` then holds
        only the local lock file. A backend that is not shared (the state directory) changes nothing.

        ``key_type`` (``ec-p256``, ``ec-p384``, ``rsa-2048``, ``rsa-3072``) is used for CA keys made
        from now on (a new CA, a renewed intermediate, a rotation). ``upstream`` (see
        :func:`meshcore.ca.load_upstream_ca`) makes the CA sign with the operator's intermediate:
        installed at once into an empty state directory, or as a root rotation (``preparing``)
        when another CA is there. A rotation interrupted by a restart resumes where it stood.

        Raises :class:`CAError` when the KEK does not decrypt the stored keys, the stored CA
        belongs to another trust domain, or the root has expired.
        """
        state_dir = Path(state_dir)
        _check_open(trust_domain, kek, key_type, leaf_ttl, node_ttl, recovery_grace)
        ensure_private_dir(state_dir)
        now = _now(clock)
        if backend is not None and backend.shared:
            return cls._open_shared(backend, state_dir, trust_domain=trust_domain, kek=kek, leaf_ttl=leaf_ttl,
                                    clock=clock, key_type=key_type, upstream=upstream, node_ttl=node_ttl,
                                    recovery_grace=recovery_grace, now=now)
        with file_lock(state_dir / LOCK_FILE):
            root_path, inter_path = state_dir / ROOT_FILE, state_dir / INTERMEDIATE_FILE
            rotation = RotationState.read(state_dir / ROTATION_FILE)
            next_ca: tuple[KeyPair, KeyPair] | None = None
            if not root_path.exists():
                if inter_path.exists():
                    raise CAError(
                        f"{inter_path} exists but {root_path} is missing; restore {root_path.name} from backup "
                        "(or empty the directory to create a new CA, which invalidates every issued certificate)"
                    )
                _discard_next(state_dir)
                RotationState().write(state_dir / ROTATION_FILE)
                rotation = RotationState()
                if upstream is not None:
                    root, intermediate = _upstream_pairs(upstream, trust_domain)
                    _write_ca(state_dir, kek, trust_domain, root, intermediate, ROOT_FILE, INTERMEDIATE_FILE)
                    log.info("installed the external upstream CA trust_domain=%s root=%s", trust_domain,
                             root.cert.subject.rfc4514_string())
                else:
                    root, intermediate = _generate_ca(trust_domain, now, key_type)
                    _write_ca(state_dir, kek, trust_domain, root, intermediate, ROOT_FILE, INTERMEDIATE_FILE)
                    log.info("created root CA trust_domain=%s not_after=%s", trust_domain,
                             root.cert.not_valid_after_utc.isoformat())
            else:
                if rotation.phase == PHASE_IDLE:
                    _discard_next(state_dir)  # a rotation that crashed before it was announced
                elif rotation.phase == PHASE_ROTATING:
                    _complete_swap(state_dir)  # a crash between announcing and swapping the files
                root, stored_td = unseal_pair(kek, ROOT_PURPOSE, root_path, need_key=False)
                stored_td = stored_td or _ca_trust_domain(root.cert)
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
                    intermediate, _ = unseal_pair(kek, INTERMEDIATE_PURPOSE, inter_path)
                    if not _chains_to(intermediate, root):
                        raise CAError(f"{inter_path} was not issued by the root in {root_path}")
                elif root.key is not None:
                    intermediate = _new_intermediate(trust_domain, root, now, key_type)
                    write_pair(inter_path, kek, INTERMEDIATE_PURPOSE, intermediate, trust_domain)
                else:
                    raise CAError(f"{inter_path} is missing and the root's key is the operator's; "
                                  "start the control plane with --ca-cert/--ca-key again")
                if rotation.phase == PHASE_PREPARING:
                    next_ca = _load_next(state_dir, kek)
                    if next_ca is None:
                        log.warning("rotation state says preparing but the new CA files are gone; "
                                    "the rotation is cancelled, start it again with `meshctl ca rotate`")
                        rotation = RotationState()
                        rotation.write(state_dir / ROTATION_FILE)
            ca = cls(
                state_dir=state_dir, trust_domain=trust_domain, kek=kek, leaf_ttl=leaf_ttl, clock=clock,
                root=root, intermediate=intermediate, key_type=key_type, rotation=rotation, next_ca=next_ca,
                node_ttl=node_ttl, recovery_grace=recovery_grace,
            )
            if rotation.phase != PHASE_IDLE:
                log.info("resuming root rotation phase=%s trust_domain=%s", rotation.phase, trust_domain)
            ca._renew_intermediate_if_due(now)
            ca._journal.catch_up(locked=True)  # migrates an old issued.json, cuts a torn last line
            if upstream is not None:
                ca._adopt_upstream(upstream, now)
        return ca

    @classmethod
    def _open_shared(cls, backend: StateBackend, state_dir: Path, *, trust_domain: str, kek: bytes,
                     leaf_ttl: timedelta, clock: Callable[[], datetime], key_type: str, upstream: UpstreamCA | None,
                     node_ttl: timedelta, recovery_grace: timedelta, now: datetime) -> "CertificateAuthority":
        """:meth:`open` on state shared by every control plane replica (``backend``: Consul KV; see ``_shared.py``).

        The first replica creates the CA (compare-and-set on an absent key); one started later, or the loser of
        a race at first start, loads the stored one. The replica keeps the CA, the issued-certificate record and
        the revocations in memory and follows other replicas' changes by blocking queries, so signing never
        waits on Consul. ``state_dir`` is local (the lock file; the control plane writes ``bundle.pem`` there).
        """
        shared = SharedAuthority(backend, kek, local_copy=state_dir / SHARED_COPY_FILE)

        def make() -> CARecord:
            pairs = _upstream_pairs(upstream, trust_domain) if upstream is not None else \
                _generate_ca(trust_domain, now, key_type)
            return CARecord(root=pairs[0], intermediate=pairs[1], next_ca=None, rotation=RotationState(),
                            trust_domain=trust_domain)

        with file_lock(state_dir / LOCK_FILE):
            record, created = shared.load_or_create(make)
            if created:
                log.info("created the shared CA trust_domain=%s in %s root=%s", trust_domain, shared.where,
                         record.root.cert.subject.rfc4514_string())
            else:
                log.info("loaded the shared CA trust_domain=%s from %s phase=%s", trust_domain, shared.where,
                         record.rotation.phase)
            _check_record(record, trust_domain, now, shared.where)
            ca = cls(state_dir=state_dir, trust_domain=trust_domain, kek=kek, leaf_ttl=leaf_ttl, clock=clock,
                     root=record.root, intermediate=record.intermediate, key_type=key_type, rotation=record.rotation,
                     next_ca=record.next_ca, node_ttl=node_ttl, recovery_grace=recovery_grace, shared=shared)
            assert isinstance(ca._journal, SharedIssuedJournal) and isinstance(ca._revocations, SharedRevocations)
            ca._journal.start()
            ca._journal.compact(now)  # records past their retention (any replica may remove them: CAS)
            ca._revocations.start()
            with ca._lock:
                ca._renew_intermediate_if_due(now)
                if upstream is not None:
                    ca._adopt_upstream(upstream, now)
            shared.watch(ca._follow)
        return ca

    def _follow(self, record: CARecord, index: int | None = None) -> None:
        """Another replica changed the shared CA (renewed the intermediate, a rotation step): take it over.
        ``index``: its version, skipped when this replica committed a newer one meanwhile (all commits hold the lock)."""
        assert self._shared is not None
        _check_record(record, self.trust_domain, _now(self._clock), self._shared.where)
        with self._lock:
            if index is not None:
                if index <= self._shared.index:
                    return
                self._shared.index = index
            self._root, self._intermediate = record.root, record.intermediate
            self._next, self._rotation = record.next_ca, record.rotation
            self._anchors.clear()
        log.info("following a CA change made by another replica phase=%s signer=%s trust_domain=%s",
                 record.rotation.phase, subject_key_id(record.intermediate.cert).hex(), self.trust_domain)

    def _commit_shared(self, doing: str, root: KeyPair, intermediate: KeyPair,
                       next_ca: tuple[KeyPair, KeyPair] | None, rotation: RotationState) -> None:
        """Write a CA change to the shared state (CAS); when another replica changed it first, follow that one
        and raise :class:`CAError`."""
        assert self._shared is not None
        try:
            self._shared.commit(CARecord(root=root, intermediate=intermediate, next_ca=next_ca, rotation=rotation,
                                         trust_domain=self.trust_domain), doing)
        except CAError:
            stored = self._shared.load()
            if stored is not None:
                self._follow(stored)
            raise

    def _revoked_elsewhere(self, node: str) -> None:
        log.warning("node revoked on another control plane replica node=%s: its certificates are refused here too",
                    node, extra={"node": node})
        self._notify_revoked(node)

    def _adopt_upstream(self, upstream: UpstreamCA, now: datetime) -> None:
        """Start a rotation to ``upstream`` unless it already signs (or is being prepared). File lock held."""
        fp = _fingerprint(upstream.cert)
        if _fingerprint(self._intermediate.cert) == fp:
            return
        if self._next is not None and _fingerprint(self._next[1].cert) == fp:
            return
        if self._rotation.phase != PHASE_IDLE:
            raise CAError("a root rotation is in progress; finish it (`meshctl ca rotate --finish`) before "
                          "importing another upstream CA")
        root, intermediate = _upstream_pairs(upstream, self.trust_domain)
        self._begin(root, intermediate, now, reason="upstream")
        log.warning("a new external upstream CA was given: rotating to it (phase preparing) root=%s",
                    root.cert.subject.rfc4514_string())

    def _intermediate_due(self, now: datetime) -> bool:
        """The intermediate is within its renewal window (cheap: no file, no lock)."""
        threshold = max(INTERMEDIATE_RENEW_BEFORE, self.leaf_ttl)
        return self._intermediate.cert.not_valid_after_utc - now <= threshold

    def _renew_intermediate_if_due(self, now: datetime) -> None:
        """Replace the intermediate when it has less than 30 days (or one leaf TTL) left and the root
        allows a longer-lived one. Caller holds the file lock."""
        threshold = max(INTERMEDIATE_RENEW_BEFORE, self.leaf_ttl)
        remaining = self._intermediate.cert.not_valid_after_utc - now
        if remaining > threshold:
            return
        if self._shared is not None:
            kv = self._shared.load()  # another replica may have renewed it already
            if kv is not None and kv.intermediate.cert.not_valid_after_utc > \
                    self._intermediate.cert.not_valid_after_utc:
                self._follow(kv)
                if kv.intermediate.cert.not_valid_after_utc - now > threshold:
                    return
        # Another process (meshctl, a second control plane) may have renewed it already.
        on_disk = self.state_dir / INTERMEDIATE_FILE
        if on_disk.exists():
            stored, _ = unseal_pair(self._kek, INTERMEDIATE_PURPOSE, on_disk)
            if stored.cert.not_valid_after_utc > self._intermediate.cert.not_valid_after_utc:
                if not _chains_to(stored, self._root):
                    raise CAError(f"{on_disk} was not issued by this CA's root")
                self._intermediate = stored
                remaining = stored.cert.not_valid_after_utc - now
                if remaining > threshold:
                    return
        if self._root.key is None:
            if remaining <= timedelta(0):
                raise CAError("the external intermediate CA expired; start the control plane with a renewed "
                              "--ca-cert/--ca-key from your root CA")
            log.warning("the external intermediate CA expires at %s; renew it with your root CA and restart with "
                        "--ca-cert/--ca-key", self._intermediate.cert.not_valid_after_utc.isoformat())
            return
        if self._root.cert.not_valid_after_utc <= self._intermediate.cert.not_valid_after_utc:
            if remaining <= timedelta(0):
                raise CAError("the intermediate CA expired and the root expires too; a new root is needed "
                              "(`meshctl ca rotate`)")
            log.warning("root CA expires soon, intermediate cannot be renewed past it trust_domain=%s; "
                        "rotate the root with `meshctl ca rotate`", self.trust_domain)
            return
        renewed = _new_intermediate(self.trust_domain, self._root, now, self.key_type)
        if self._shared is not None:
            try:
                self._commit_shared("renewing the intermediate CA", self._root, renewed, self._next, self._rotation)
            except CAError:  # another replica renewed it first: _commit_shared followed its intermediate
                return
        else:
            write_pair(on_disk, self._kek, INTERMEDIATE_PURPOSE, renewed, self.trust_domain)
        self._intermediate = renewed
        log.info("issued intermediate CA trust_domain=%s not_after=%s", self.trust_domain,
                 self._intermediate.cert.not_valid_after_utc.isoformat())

    # --- public API ------------------------------------------------------------------------

    @property
    def external(self) -> bool:
        """True when the CA signs with an operator's intermediate (an external upstream CA)."""
        return self._root.key is None

    @property
    def rotation_phase(self) -> str:
        """``idle``, ``preparing`` or ``rotating`` (see the module docstring)."""
        return self._rotation.phase

    def roots(self) -> list[x509.Certificate]:
        """The trust anchors, current root first, then the new one (preparing) or the old ones (rotating)."""
        return list(self._bundle()[0])

    def _bundle(self) -> tuple[tuple[x509.Certificate, ...], str, str]:
        """(roots, bundle PEM, its SHA-256), computed once per CA state: every SVID response carries them."""
        cached = self._bundle_cache  # read without the lock: signing holds it, and this is on every answer
        if cached is not None and all(a is b for a, b in zip(cached[0], (self._root, self._next, self._rotation))):
            return cached[1]
        with self._lock:
            state = (self._root, self._next, self._rotation)
            roots = [self._root.cert]
            if self._next is not None:
                roots.append(self._next[0].cert)
            roots += self._rotation.previous_roots
            out, seen = [], set()
            for cert in roots:
                if _fingerprint(cert) not in seen:
                    seen.add(_fingerprint(cert))
                    out.append(cert)
            pem = "".join(pem_of(c) for c in out)
            value = (tuple(out), pem, hashlib.sha256(pem.encode()).hexdigest())
            self._bundle_cache = (state, value)
            return value

    def bundle_pem(self) -> str:
        """The trust anchors of this trust domain (every root in :meth:`roots`), PEM."""
        return self._bundle()[1]

    def bundle_sha256(self) -> str:
        """Hex SHA-256 of :meth:`bundle_pem`: agents compare it to know the bundle changed."""
        return self._bundle()[2]

    def intermediate_pem(self) -> str:
        """The current intermediate certificate, PEM."""
        return self._signer()[1]

    def chain_tail_pem(self) -> str:
        """What follows the leaf in the ``chain_pem`` of a certificate signed now: the intermediate and the CA
        certificates above it but the root (PEM)."""
        return self._signer()[2]

    def signer_key_id(self) -> str:
        """Hex key identifier of the intermediate signing leaves now; a leaf whose AKI differs was
        signed by another intermediate (agents renew those early during a rotation)."""
        return self._signer()[3]

    def _signer(self) -> tuple[KeyPair, str, str, str]:
        """(intermediate, its PEM, the PEM chain above a leaf, its key id), once per intermediate."""
        inter = self._intermediate
        cached = self._signer_cache
        if cached is not None and cached[0] is inter:
            return cached
        pem = inter.pem
        value = (inter, pem, pem + "".join(pem_of(c) for c in inter.chain), subject_key_id(inter.cert).hex())
        self._signer_cache = value
        return value

    # --- rotation --------------------------------------------------------------------------

    def begin_rotation(self, hold: bool = False) -> None:
        """Make a new root and intermediate (``key_type``) and add the root to the bundle (``preparing``).

        Leaves are still signed by the current intermediate until :meth:`activate_rotation`; with ``hold``
        the rotation also stays in ``preparing`` until :meth:`release_rotation` (the operator hands the new
        root to federated trust domains meanwhile: their peers must trust it before leaves come from it).
        Raises :class:`CAError` when a rotation is already under way or the CA is an external one.
        """
        with self._lock, file_lock(self.state_dir / LOCK_FILE):
            if self._rotation.phase != PHASE_IDLE:
                raise CAError(f"a root rotation is already in progress (phase {self._rotation.phase}); "
                              "wait for it (`meshctl ca rotate --wait`) and finish it (`meshctl ca rotate --finish`)")
            if self.external:
                raise CAError("this CA signs with your own upstream CA; to rotate, restart the control plane with "
                              "the new --ca-cert/--ca-key (meshcore then rotates to it the same way)")
            now = _now(self._clock)
            root, intermediate = _generate_ca(self.trust_domain, now, self.key_type, generation=_generation(now))
            self._begin(root, intermediate, now, reason="rotate", hold=hold)

    def _begin(self, root: KeyPair, intermediate: KeyPair, now: datetime, reason: str, hold: bool = False) -> None:
        """Write the new CA, then announce the rotation (a crash in between leaves no trace). Locks held."""
        rotation = RotationState(phase=PHASE_PREPARING, started_at=now, reason=reason, held=hold)
        if self._shared is not None:
            self._commit_shared("starting a root rotation", self._root, self._intermediate, (root, intermediate),
                                rotation)
        else:
            _write_ca(self.state_dir, self._kek, self.trust_domain, root, intermediate, NEXT_ROOT_FILE,
                      NEXT_INTERMEDIATE_FILE)
            rotation.write(self.state_dir / ROTATION_FILE)
        self._rotation, self._next = rotation, (root, intermediate)
        log.info("root rotation started phase=preparing trust_domain=%s new_root=%s", self.trust_domain,
                 root.cert.subject.rfc4514_string())

    @property
    def rotation_held(self) -> bool:
        """True while a rotation started with ``hold`` waits in ``preparing`` for :meth:`release_rotation`."""
        return self._rotation.held

    def release_rotation(self) -> bool:
        """Let a held rotation move on (``preparing`` -> ``rotating`` once every node holds the bundle).
        Returns False when it was not held; raises :class:`CAError` when no rotation is being prepared."""
        with self._lock, file_lock(self.state_dir / LOCK_FILE):
            if self._rotation.phase != PHASE_PREPARING:
                raise CAError(f"no rotation is being prepared (phase {self._rotation.phase})")
            if not self._rotation.held:
                return False
            rotation = dataclasses.replace(self._rotation, held=False)
            if self._shared is not None:
                self._commit_shared("releasing the held root rotation", self._root, self._intermediate,
                                    self._next, rotation)
            else:
                rotation.write(self.state_dir / ROTATION_FILE)
            self._rotation = rotation
        log.info("held root rotation released trust_domain=%s", self.trust_domain)
        return True

    def activate_rotation(self) -> None:
        """``preparing`` -> ``rotating``: sign every new leaf with the new intermediate; both roots stay trusted."""
        with self._lock, file_lock(self.state_dir / LOCK_FILE):
            if self._rotation.phase != PHASE_PREPARING or self._next is None:
                raise CAError(f"no rotation is being prepared (phase {self._rotation.phase})")
            now = _now(self._clock)
            old_roots = [self._root.cert] + [c for c in self._rotation.previous_roots]
            new_root, new_inter = self._next
            old_issuers = [subject_key_id(self._intermediate.cert).hex()]
            if _fingerprint(new_root.cert) == _fingerprint(self._root.cert):
                old_roots, old_issuers = [], []  # a new intermediate under the same (operator's) root
            rotation = RotationState(phase=PHASE_ROTATING, started_at=self._rotation.started_at,
                                     activated_at=now, previous_roots=old_roots, reason=self._rotation.reason,
                                     previous_issuers=old_issuers)
            if self._shared is not None:
                self._commit_shared("activating the root rotation", new_root, new_inter, None, rotation)
            else:
                rotation.write(self.state_dir / ROTATION_FILE)  # announce first: open() completes the swap
                _complete_swap(self.state_dir)
            self._root, self._intermediate, self._next, self._rotation = new_root, new_inter, None, rotation
            self._anchors.clear()
        log.info("root rotation active phase=rotating: new leaves come from the new intermediate "
                 "trust_domain=%s", self.trust_domain)

    def finish_rotation(self, force: bool = False) -> list[IssuedCertificate]:
        """``rotating`` -> ``idle``: drop the old roots from the bundle.

        Refused while unexpired leaves still chain to an old root (they would stop verifying),
        unless ``force``; returns the leaves that were still on an old root.
        """
        with self._lock:
            if self._rotation.phase != PHASE_ROTATING:
                raise CAError(f"no rotation to finish (phase {self._rotation.phase}); "
                              + ("wait until it is active (`meshctl ca rotate --wait`)"
                                 if self._rotation.phase == PHASE_PREPARING else "start one with `meshctl ca rotate`"))
            left = self.old_root_certificates()
            if left and not force:
                names = ", ".join(f"{c.spiffe_id} ({c.node or '-'})" for c in left[:5])
                raise CAError(f"{len(left)} unexpired certificate(s) still chain to the old root: {names}"
                              f"{' ...' if len(left) > 5 else ''}; wait for their renewal (`meshctl ca rotate "
                              "--wait`) or pass --force (those peers then fail to connect)")
            retired = self._old_issuers()
            with file_lock(self.state_dir / LOCK_FILE):
                now = _now(self._clock)
                self._revocations.refresh()
                entries = [Revocation(kind=KIND_ISSUER, subject=key_id, revoked_at=now.replace(microsecond=0),
                                      reason="root rotation finished", by="ca")
                           for key_id in sorted(retired) if self._revocations.issuer(key_id) is None]
                try:  # retire first: a crash after it leaves a rotation to finish again, never a live old root
                    self._revocations.append(entries)
                except OSError as exc:
                    raise CAError(f"cannot record the retired intermediates in {self.state_dir / REVOKED_FILE}: "
                                  f"{exc}; the rotation is not finished, try again") from exc
                if self._shared is not None:
                    self._commit_shared("finishing the root rotation", self._root, self._intermediate, self._next,
                                        RotationState())
                else:
                    RotationState().write(self.state_dir / ROTATION_FILE)
                self._rotation = RotationState()
                self._anchors.clear()
        log.info("root rotation finished: old root removed from the trust bundle, %d intermediate(s) under it "
                 "retired trust_domain=%s", len(retired), self.trust_domain)
        return left

    def _old_issuers(self) -> set[str]:
        """Hex key ids of the intermediates under the roots a finishing rotation drops: the one that signed
        before activation and every issuer of a recorded leaf that does not chain to the newest root."""
        target = _fingerprint(self._target_root())
        out = set(self._rotation.previous_issuers)
        for cert in self._journal.recent(_now(self._clock)):
            anchor = self.anchor_of(cert)
            if anchor is not None and _fingerprint(anchor) == target:
                continue
            key_id = issuer_key_id(x509.load_pem_x509_certificate(cert.cert_pem.encode()))
            if key_id:
                out.add(key_id.hex())
        out.discard(subject_key_id(self._intermediate.cert).hex())  # never the one signing now
        if self._next is not None:
            out.discard(subject_key_id(self._next[1].cert).hex())
        return out

    # --- node identities: revocation and recovery ------------------------------------------

    def add_revocation_listener(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(node)`` after :meth:`revoke_node` recorded a revocation (e.g. end its ADS streams)."""
        self._revocation_listeners.append(listener)

    def revoke_node(self, node: str, *, reason: str = "", by: str = "") -> Revocation:
        """Revoke every certificate issued to ``node`` until now (durably; see ``_revocations.py``).

        Renewal, workload signing, recovery and the agent API refuse them from now on, and the
        revocation listeners run (the control plane ends the node's ADS streams). The node can join
        again only with a new join token; the certificates of that join are honoured.
        """
        if not _NODE_NAME.match(node or ""):
            raise CAError(f"{node!r} is not a node name (letters, digits, '.', '-', '_'; at most 253 characters)")
        with self._lock, file_lock(self.state_dir / LOCK_FILE):
            entry = Revocation(kind=KIND_NODE, subject=node, revoked_at=_now(self._clock).replace(microsecond=0),
                               reason=reason, by=by)
            try:
                self._revocations.append([entry])
            except OSError as exc:
                raise CAError(f"cannot record the revocation of node {node!r} in {self.state_dir / REVOKED_FILE}: "
                              f"{exc}; nothing was revoked, fix the disk and try again") from exc
        log.warning("node revoked node=%s by=%s reason=%s: its certificates are refused from now on",
                    node, by or "-", reason or "-", extra={"node": node})
        self._notify_revoked(node)
        return entry

    def _notify_revoked(self, node: str) -> None:
        for listener in list(self._revocation_listeners):
            try:
                listener(node)
            except Exception:  # a listener's failure must not undo or hide the revocation
                log.exception("a revocation listener failed node=%s", node, extra={"node": node})

    def node_revocation(self, node: str) -> Revocation | None:
        """The latest revocation of ``node`` (None: never revoked)."""
        with self._lock:
            self._revocations.refresh()
            return self._revocations.node(node)

    def revocations(self) -> list[Revocation]:
        """Every node revocation and retired intermediate on record."""
        with self._lock:
            self._revocations.refresh()
            return self._revocations.nodes() + self._revocations.issuers()

    def is_revoked(self, node: str, cert: x509.Certificate | bytes | None = None) -> bool:
        """True when ``cert`` (DER or parsed; None: any certificate issued until now) of ``node`` is no longer
        honoured: the node was revoked after it was issued, or a finished root rotation retired its issuer."""
        if cert is None:
            return self.node_revocation(node) is not None
        return self.node_certificate_refusal(node, cert) is not None

    def node_certificate_refusal(self, node: str, cert: x509.Certificate | bytes) -> str | None:
        """Why ``cert``, presented by ``node``, is no longer honoured; None when it is.

        Checked on every agent API call and ADS stream, so a revocation or a finished root rotation
        also ends what connections opened before it can do.
        """
        not_before, key_id, serial = self._cert_facts(cert)
        with self._lock:
            self._revocations.refresh()  # one stat: a revocation by another process is seen at once
            rev = self._revocations.node(node)
            retired = self._revocations.issuer(key_id) if key_id else None
        if rev is not None and not_before <= rev.revoked_at - CLOCK_SKEW:  # see _not_before_floor
            return (f"node {node!r} was revoked at {rfc3339(rev.revoked_at)}"
                    f"{' (' + rev.reason + ')' if rev.reason else ''}; once the VM is trusted again, join it "
                    f"with a new token (`meshctl token create --node {node}`)")
        if retired is not None:
            return (f"the certificate of node {node!r} (serial {serial}) was signed by an "
                    f"intermediate CA retired when a root rotation finished at {rfc3339(retired.revoked_at)}; join "
                    f"the node again with a new token (`meshctl token create --node {node}`)")
        return None

    def _cert_facts(self, cert: x509.Certificate | bytes) -> tuple[datetime, str | None, str]:
        """(not_before, issuer key id hex, serial hex) of ``cert``: what a refusal depends on besides the
        revocations. Remembered per DER (a connection presents the same one on every call); the verdict
        itself is never cached, so a revocation takes effect on the next call."""
        if not isinstance(cert, bytes):
            key_id = issuer_key_id(cert)
            return cert.not_valid_before_utc, key_id.hex() if key_id else None, serial_hex(cert.serial_number)
        facts = self._facts.get(cert)
        if facts is None:
            parsed = x509.load_der_x509_certificate(cert)
            facts = self._cert_facts(parsed)
            if len(self._facts) >= CERT_FACTS_CACHED:
                self._facts.clear()
            self._facts[cert] = facts
        return facts

    def recover_node(self, node: str, csr_pem: str | bytes | x509.CertificateSigningRequest, *,
                     timestamp: str, signature: str) -> IssuedCertificate:
        """Issue a new node certificate to the holder of the key of the node certificate on record.

        The proof (``signature`` over :func:`meshcore.ca.recovery.recovery_message`) must verify with
        the public key of the newest node certificate the CA issued to ``node``, which must have expired
        less than ``recovery_grace`` ago and still be honoured (not revoked, issuer not retired).
        Whether the node is in the catalog is the caller's check. Raises :class:`SigningRefused`.
        """
        spiffe_id = naming.node_spiffe_id(self.trust_domain, node)
        now = _now(self._clock)
        try:
            when = parse_rfc3339(timestamp)
        except (ValueError, TypeError, AttributeError) as exc:
            raise SigningRefused(f"timestamp {timestamp!r} is not an RFC 3339 time") from exc
        if abs(now - when) > RECOVERY_SKEW:
            raise SigningRefused(f"the recovery request's timestamp {timestamp} is {abs(now - when)} away from the "
                                 f"control plane's clock (at most {RECOVERY_SKEW} allowed); check the VM's clock (NTP)")
        csr = _load_csr(csr_pem)
        _check_csr_key(csr)
        _check_csr_sans(csr, spiffe_id, (), ())
        message = recovery_message(self.trust_domain, node, timestamp, csr.public_bytes(serialization.Encoding.PEM))
        with self._recovery_lock:
            with self._lock:
                record = self._journal.newest(spiffe_id, node, now)
            if record is None or now - record.not_after > self.recovery_grace:
                raise SigningRefused(
                    f"the CA has no node certificate of {node!r} that expired less than {self.recovery_grace} ago "
                    f"(never joined here, or it expired too long ago); join it with a new token "
                    f"(`meshctl token create --node {node}`)")
            held = x509.load_pem_x509_certificate(record.cert_pem.encode())
            if not verify_recovery(held.public_key(), message, signature):
                raise SigningRefused(
                    f"the recovery proof does not verify with the key of node {node!r}'s last certificate "
                    f"(serial {record.serial}); only the agent holding that key can recover, others join with a "
                    f"new token (`meshctl token create --node {node}`)")
            refusal = self.node_certificate_refusal(node, held)
            if refusal is not None:
                raise SigningRefused(refusal)
            for seen, at in list(self._seen_proofs.items()):
                if now - at > 2 * RECOVERY_SKEW:
                    del self._seen_proofs[seen]
            proof = hashlib.sha256(signature.encode()).hexdigest()
            if proof in self._seen_proofs:
                raise SigningRefused("this recovery proof was used already; sign a new one")
            issued = self.sign_csr(csr, spiffe_id=spiffe_id, node=node, ttl=self.node_ttl)
            self._seen_proofs[proof] = now
        log.warning("node recovered with the key of its expired certificate node=%s old_serial=%s old_not_after=%s "
                    "serial=%s", node, record.serial, rfc3339(record.not_after), issued.serial, extra={"node": node})
        return issued

    def _target_root(self) -> x509.Certificate:
        return self._next[0].cert if self._next is not None else self._root.cert

    def anchor_of(self, issued: IssuedCertificate) -> x509.Certificate | None:
        """The root in the bundle that ``issued`` chains to (None: none of them)."""
        with self._lock:
            key = issued.serial
            if key not in self._anchors:
                chain = x509.load_pem_x509_certificates(issued.chain_pem.encode())
                top = chain[-1]
                found = None
                for root in self.roots():
                    if _fingerprint(top) == _fingerprint(root) or _issued_by(top, root):
                        found = _fingerprint(root)
                        break
                self._anchors[key] = found
            der = self._anchors[key]
        return x509.load_der_x509_certificate(der) if der else None

    def old_root_certificates(self) -> list[IssuedCertificate]:
        """Unexpired leaves (newest per identity and node) that do not chain to the newest root."""
        target = _fingerprint(self._target_root())
        out = []
        for cert in self.issued():
            anchor = self.anchor_of(cert)
            if anchor is None or _fingerprint(anchor) != target:
                out.append(cert)
        return out

    def state(self) -> dict[str, Any]:
        """What ``GET /v1/ca`` shows: phase, roots with their role, the signing intermediate, leaves left."""
        with self._lock:
            roles = [(self._root.cert, "current")]
            if self._next is not None:
                roles.append((self._next[0].cert, "next"))
            roles += [(c, "previous") for c in self._rotation.previous_roots]
            rotation = self._rotation
            intermediate = self._intermediate.cert
        left = self.old_root_certificates() if rotation.phase != PHASE_IDLE else []
        return {
            "trust_domain": self.trust_domain,
            "mode": "upstream" if self.external else "generated",
            "key_type": key_type_of(self._intermediate.key),
            "phase": rotation.phase,
            "held": rotation.held,
            "started_at": rfc3339(rotation.started_at) if rotation.started_at else None,
            "activated_at": rfc3339(rotation.activated_at) if rotation.activated_at else None,
            "roots": [{**describe(c), "role": role} for c, role in roles],
            "intermediate": describe(intermediate),
            "signer_key_id": self.signer_key_id(),
            "bundle_sha256": self.bundle_sha256(),
            "old_root_certificates": [
                {"spiffe_id": c.spiffe_id, "node": c.node, "serial": c.serial, "not_after": rfc3339(c.not_after)}
                for c in left
            ],
        }

    # --- signing ---------------------------------------------------------------------------

    def sign_csr(
        self,
        csr_pem: str | bytes | x509.CertificateSigningRequest,
        *,
        spiffe_id: str,
        node: str | None = None,
        ttl: timedelta | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> IssuedCertificate:
        """Sign ``csr_pem`` (PEM, or a CSR the caller parsed already) as an X509-SVID for ``spiffe_id``.

        The CSR's signature must verify, and it must carry no SAN or exactly the URI SAN
        ``spiffe_id`` (plus, for the control plane, DNS/IP SANs among those requested). Raises
        :class:`SigningRefused` saying why when it does not. Authorisation (is this node allowed
        this identity?) is the caller's job: see :func:`check_workload_request`.
        """
        ttl = self.leaf_ttl if ttl is None else ttl
        if ttl <= timedelta(0):
            raise SigningRefused(f"ttl must be positive, got {ttl}")
        dns_names, ip_addresses = self._check_extra_sans(spiffe_id, dns_names, ip_addresses)
        _, public_key = self._check_csr(csr_pem, spiffe_id, dns_names, ip_addresses)

        while True:
            now = _now(self._clock)
            with self._lock:
                if self._intermediate_due(now):
                    with file_lock(self._lock_path):
                        self._renew_intermediate_if_due(now)
                inter, _, chain_tail, _ = self._signer()
            # Built and signed outside the locks, so signers do not queue behind each other's
            # crypto; only the record is serialised.
            floor = self._not_before_floor(spiffe_id, node)
            issued = self._build_leaf(public_key, spiffe_id, node, ttl, now, inter, chain_tail, dns_names,
                                      ip_addresses, floor)
            with self._lock, file_lock(self._lock_path):
                if self._intermediate is inter:
                    seq = self._record(issued, now)
                    rotating = self._rotation.phase != PHASE_IDLE
                    break
            # The intermediate changed meanwhile (renewed, or a rotation activated and may finish):
            # sign again with the current one, never hand out a leaf the record does not know.
        if rotating and not self._journal.wait_written(seq, DURABLE_WAIT):
            # answered anyway (signing must not hang on Consul); a replica killed now would lose the record
            log.warning("the record of certificate serial=%s is not in the shared state after %.0fs; answering "
                        "anyway", issued.serial, DURABLE_WAIT)
        log.info(
            "issued certificate spiffe_id=%s serial=%s node=%s not_after=%s",
            spiffe_id, issued.serial, node, issued.not_after.isoformat(),
            extra={"spiffe_id": spiffe_id, "serial": issued.serial, "node": node},
        )
        return issued

    def _not_before_floor(self, spiffe_id: str, node: str | None) -> datetime | None:
        """A revoked node's new certificate is not backdated as far as those the revocation ended.

        Every leaf is backdated by :data:`CLOCK_SKEW` (to the second), so one issued at or before the
        revocation (``revoked_at`` floored to the second) has ``not_before <= revoked_at - CLOCK_SKEW``;
        one issued after it (a join with a new token) starts a second later than that, and still not in
        the future. :meth:`node_certificate_refusal` tells them apart by that."""
        if node is None or naming.parse_node_spiffe_id(spiffe_id) is None:
            return None
        with self._lock:
            self._revocations.refresh()
            rev = self._revocations.node(node)
        return rev.revoked_at - CLOCK_SKEW + timedelta(seconds=1) if rev is not None else None

    def check_csr(self, csr_pem: str | bytes | x509.CertificateSigningRequest, *, spiffe_id: str,
                  dns_names: Sequence[str] = (), ip_addresses: Sequence[str] = ()) -> x509.CertificateSigningRequest:
        """Every check :meth:`sign_csr` makes of the CSR and the identity, without signing (a join checks
        before it uses its one-time token); :class:`SigningRefused` saying why. Returns the parsed CSR.

        A parsed CSR that passed is remembered (a few, by identity): :meth:`sign_csr` given the same object
        then makes every check again but does not verify its signature a second time (the object is immutable)."""
        return self._check_csr(csr_pem, spiffe_id, dns_names, ip_addresses)[0]

    def _check_csr(self, csr_pem: str | bytes | x509.CertificateSigningRequest, spiffe_id: str,
                   dns_names: Sequence[str], ip_addresses: Sequence[str]) -> tuple[x509.CertificateSigningRequest, Any]:
        """:meth:`check_csr`, returning the CSR and its (checked) public key."""
        sid = parse_workload_id(spiffe_id, SigningRefused)
        if sid.trust_domain.name != self.trust_domain:
            raise SigningRefused(
                f"{spiffe_id} is in trust domain {sid.trust_domain.name!r}; this CA signs only {self.trust_domain!r}"
            )
        csr = self._verified_csr(csr_pem)
        key = _check_csr_key(csr)
        _check_csr_sans(csr, spiffe_id, dns_names, ip_addresses)
        return csr, key

    def _verified_csr(self, csr_pem: str | bytes | x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
        """:func:`_load_csr` (parse, verify the self-signature), once per parsed CSR object."""
        if isinstance(csr_pem, x509.CertificateSigningRequest):
            if self._verified.get(id(csr_pem)) is csr_pem:  # the entry holds the object: its id is not reused
                return csr_pem
            csr = _load_csr(csr_pem)
            if len(self._verified) >= VERIFIED_CSRS_KEPT:
                self._verified.clear()
            self._verified[id(csr)] = csr
            return csr
        return _load_csr(csr_pem)

    @staticmethod
    def _build_leaf(public_key: Any, spiffe_id: str, node: str | None, ttl: timedelta,
                    now: datetime, inter: KeyPair, chain_tail: str, dns_names: Sequence[str],
                    ip_addresses: Sequence[str], floor: datetime | None = None) -> IssuedCertificate:
        not_before = max(now - CLOCK_SKEW, inter.cert.not_valid_before_utc)
        if floor is not None:
            not_before = max(not_before, floor)
        not_after = min(now + ttl, inter.cert.not_valid_after_utc)
        assert inter.key is not None
        cert = build_leaf_cert(
            spiffe_id=spiffe_id, public_key=public_key, not_before=not_before, not_after=not_after,
            issuer_cert=inter.cert, issuer_key=inter.key, dns_names=dns_names, ip_addresses=ip_addresses,
        )
        leaf_pem = pem_of(cert)
        return IssuedCertificate(
            spiffe_id=spiffe_id,
            serial=serial_hex(cert.serial_number),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            cert_pem=leaf_pem,
            chain_pem=leaf_pem + chain_tail,
            node=node,
        )

    def issued(self) -> list[IssuedCertificate]:
        """Every unexpired certificate issued, the newest per (spiffe_id, node), sorted by spiffe_id, node."""
        now = _now(self._clock)
        with self._lock:
            return self._journal.live(now)

    def recent(self) -> list[IssuedCertificate]:
        """Like :meth:`issued`, plus the newest ones that expired without being renewed, while on record
        (node certificates for the recovery grace, leaves for :data:`EXPIRED_LEAF_KEPT`)."""
        now = _now(self._clock)
        with self._lock:
            return self._journal.recent(now)

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

    def _record(self, issued: IssuedCertificate, now: datetime) -> int | None:
        """Append ``issued`` to the journal (O(1) amortised); what ``wait_written`` takes. Caller holds both locks."""
        try:
            return self._journal.append(issued, now)
        except OSError as exc:
            raise CAError(f"cannot record the issued certificate in {self.state_dir / ISSUED_FILE}: {exc}") from exc

    def close(self) -> None:
        """Release the journal's file descriptor (the CA stays usable: it reopens it when needed). On shared
        state: write the pending issued records and stop following other replicas."""
        with self._lock:
            self._journal.close()
        if self._shared is not None:
            self._shared.stop()
            assert isinstance(self._revocations, SharedRevocations)
            self._revocations.stop()


# --- helpers -----------------------------------------------------------------------------------

def _check_open(trust_domain: str, kek: bytes, key_type: str, leaf_ttl: timedelta, node_ttl: timedelta,
                recovery_grace: timedelta) -> None:
    check_trust_domain(trust_domain, CAError)
    check_kek(kek)
    check_key_type(key_type)
    if leaf_ttl <= timedelta(0):
        raise CAError(f"leaf_ttl must be positive, got {leaf_ttl}")
    if node_ttl <= timedelta(0):
        raise CAError(f"node_ttl must be positive, got {node_ttl} (e.g. --node-cert-ttl 7d)")
    if recovery_grace < timedelta(0):
        raise CAError(f"recovery_grace must not be negative, got {recovery_grace} (e.g. --node-recovery-grace 30d)")


def _check_record(record: CARecord, trust_domain: str, now: datetime, where: str) -> None:
    """The shared CA is usable by this replica: its trust domain, an unexpired root, chains that hold."""
    if record.trust_domain != trust_domain:
        raise CAError(f"the CA in {where} is for trust domain {record.trust_domain!r}, not {trust_domain!r}; "
                      "pass the right trust domain or use another --state-prefix")
    if record.root.cert.not_valid_after_utc <= now:
        raise CAError(f"the root CA in {where} expired at {record.root.cert.not_valid_after_utc.isoformat()}; "
                      "a new root must be created and distributed")
    if not _chains_to(record.intermediate, record.root):
        raise CAError(f"the intermediate in {where} was not issued by its root; restore the key from a snapshot")
    if record.next_ca is not None and not _chains_to(record.next_ca[1], record.next_ca[0]):
        raise CAError(f"the next intermediate in {where} was not issued by the next root; restore from a snapshot")


def _now(clock: Callable[[], datetime]) -> datetime:
    now = clock()
    if now.tzinfo is None:
        raise CAError("the CA clock must return timezone-aware datetimes (UTC)")
    return now.astimezone(timezone.utc)


def _generation(now: datetime) -> str:
    """Distinguishes a rotated root's name from its predecessor's: ``g20300101T120000Z``."""
    return now.strftime("g%Y%m%dT%H%M%SZ")


def _generation_of(root: x509.Certificate, trust_domain: str) -> str:
    cn = root.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    prefix = f"meshcore root CA {trust_domain} "
    value = str(cn[0].value) if cn else ""
    return value[len(prefix):] if value.startswith(prefix) else ""


def _chains_to(pair: KeyPair, root: KeyPair) -> bool:
    """``pair`` (with its chain) leads up to ``root``, or is the root itself."""
    path = [pair.cert, *pair.chain]
    for child, parent in zip(path, path[1:]):
        if not _issued_by(child, parent):
            return False
    top = path[-1]
    return _fingerprint(top) == _fingerprint(root.cert) or _issued_by(top, root.cert)


def _generate_ca(trust_domain: str, now: datetime, key_type: str, generation: str = "") -> tuple[KeyPair, KeyPair]:
    key = new_private_key(key_type)
    cert = build_ca_cert(
        trust_domain=trust_domain, role="root", key=key, not_before=now - CLOCK_SKEW,
        not_after=now + ROOT_TTL, path_length=1, generation=generation,
    )
    root = KeyPair(cert, key)
    return root, _new_intermediate(trust_domain, root, now, key_type)


def _new_intermediate(trust_domain: str, root: KeyPair, now: datetime, key_type: str) -> KeyPair:
    key = new_private_key(key_type)
    cert = build_ca_cert(
        trust_domain=trust_domain, role="intermediate", key=key, not_before=now - CLOCK_SKEW,
        not_after=min(now + INTERMEDIATE_TTL, root.cert.not_valid_after_utc), path_length=0,
        issuer_cert=root.cert, issuer_key=root.key, generation=_generation_of(root.cert, trust_domain),
    )
    return KeyPair(cert, key)


def _upstream_pairs(upstream: UpstreamCA, trust_domain: str) -> tuple[KeyPair, KeyPair]:
    check_signing_cert(upstream.cert, trust_domain, "the upstream CA certificate")
    return KeyPair(upstream.root, None), KeyPair(upstream.cert, upstream.key, upstream.chain)


def _write_ca(state_dir: Path, kek: bytes, trust_domain: str, root: KeyPair, intermediate: KeyPair,
              root_file: str, intermediate_file: str) -> None:
    write_pair(state_dir / root_file, kek, ROOT_PURPOSE, root, trust_domain)
    write_pair(state_dir / intermediate_file, kek, INTERMEDIATE_PURPOSE, intermediate, trust_domain)


def _load_next(state_dir: Path, kek: bytes) -> tuple[KeyPair, KeyPair] | None:
    root_path, inter_path = state_dir / NEXT_ROOT_FILE, state_dir / NEXT_INTERMEDIATE_FILE
    if not (root_path.exists() and inter_path.exists()):
        return None
    root, _ = unseal_pair(kek, ROOT_PURPOSE, root_path, need_key=False)
    inter, _ = unseal_pair(kek, INTERMEDIATE_PURPOSE, inter_path)
    if not _chains_to(inter, root):
        raise CAError(f"{inter_path} was not issued by the root in {root_path}; restore both from backup")
    return root, inter


def _complete_swap(state_dir: Path) -> None:
    """Move the prepared CA into place (each rename is atomic; safe to repeat after a crash)."""
    for src, dst in ((NEXT_ROOT_FILE, ROOT_FILE), (NEXT_INTERMEDIATE_FILE, INTERMEDIATE_FILE)):
        if (state_dir / src).exists():
            (state_dir / src).replace(state_dir / dst)


def _discard_next(state_dir: Path) -> None:
    for name in (NEXT_ROOT_FILE, NEXT_INTERMEDIATE_FILE):
        (state_dir / name).unlink(missing_ok=True)


def _load_csr(csr_pem: str | bytes | x509.CertificateSigningRequest) -> x509.CertificateSigningRequest:
    if isinstance(csr_pem, x509.CertificateSigningRequest):
        csr = csr_pem
    else:
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


def _check_csr_key(csr: x509.CertificateSigningRequest) -> Any:
    """The CSR's public key, when it is one the CA signs for."""
    try:
        key = csr.public_key()
    except Exception as exc:
        raise SigningRefused(f"unsupported public key in the CSR: {exc}") from exc
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in ("secp256r1", "secp384r1"):
            raise SigningRefused(f"CSR key uses curve {key.curve.name}; use P-256 (or P-384)")
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise SigningRefused(f"CSR has a {key.key_size}-bit RSA key; at least 2048 bits are required")
        return key
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
