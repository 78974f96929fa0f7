"""Root rotation: overlapping bundle, signing switch, finish, resume after reopen, key types."""

from __future__ import annotations

import stat
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.verification import VerificationError

from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.ca.authority import NEXT_ROOT_FILE, ROTATION_FILE
from meshcore.errors import CAError

from .conftest import Clock, verify_chain

WEB = "spiffe://cluster.local/ns/default/sa/web"
API = "spiffe://cluster.local/ns/default/sa/api"


def _issue(ca: CertificateAuthority, spiffe_id: str = WEB, node: str | None = "vm1", key_type: str = "ec-p256"):
    key = new_private_key(key_type)
    return ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id, node=node)


def _roots(bundle_pem: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(bundle_pem.encode())


def _verifies(bundle_pem: str, chain_pem: str, clock: Clock) -> bool:
    try:
        verify_chain(bundle_pem, chain_pem, clock.now)
    except VerificationError:
        return False
    return True


def test_rotation_overlaps_then_retires_the_old_root(ca: CertificateAuthority, clock: Clock) -> None:
    old_bundle = ca.bundle_pem()
    old_leaf = _issue(ca)
    old_signer = ca.signer_key_id()

    ca.begin_rotation()
    assert ca.rotation_phase == "preparing"
    both = ca.bundle_pem()
    assert len(_roots(both)) == 2 and both.startswith(old_bundle)
    # preparing: still signed by the old intermediate, so peers holding only the old bundle verify it
    prepared_leaf = _issue(ca, API)
    assert ca.signer_key_id() == old_signer
    assert _verifies(old_bundle, prepared_leaf.chain_pem, clock)
    assert [c.spiffe_id for c in ca.old_root_certificates()] == [API, WEB]

    ca.activate_rotation()
    assert ca.rotation_phase == "rotating"
    assert ca.signer_key_id() != old_signer
    new_leaf = _issue(ca)
    # the overlapping bundle verifies old and new leaves alike
    assert _verifies(ca.bundle_pem(), old_leaf.chain_pem, clock)
    assert _verifies(ca.bundle_pem(), new_leaf.chain_pem, clock)
    assert not _verifies(old_bundle, new_leaf.chain_pem, clock)
    # the new root has its own name, so chain building never confuses the two
    old_root, new_root = _roots(old_bundle)[0], _roots(ca.bundle_pem())[0]
    assert old_root.subject != new_root.subject
    assert [c.spiffe_id for c in ca.old_root_certificates()] == [API]  # web was renewed, api not yet

    with pytest.raises(CAError, match="1 unexpired certificate.*still chain to the old root.*--force"):
        ca.finish_rotation()
    _issue(ca, API)
    assert ca.old_root_certificates() == []
    assert ca.finish_rotation() == []
    assert ca.rotation_phase == "idle"
    assert _roots(ca.bundle_pem()) == [new_root]
    assert _verifies(ca.bundle_pem(), new_leaf.chain_pem, clock)
    assert not _verifies(ca.bundle_pem(), old_leaf.chain_pem, clock)
    with pytest.raises(CAError, match="no rotation to finish"):
        ca.finish_rotation()


def test_rotation_state_survives_reopen_in_each_phase(ca: CertificateAuthority, state_dir: Path, kek: bytes,
                                                      clock: Clock) -> None:
    old_leaf = _issue(ca)
    ca.begin_rotation()
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert reopened.rotation_phase == "preparing"
    assert reopened.bundle_pem() == ca.bundle_pem()
    assert reopened.signer_key_id() == ca.signer_key_id()

    reopened.activate_rotation()
    again = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert again.rotation_phase == "rotating"
    assert again.bundle_pem() == reopened.bundle_pem() and len(_roots(again.bundle_pem())) == 2
    assert again.signer_key_id() == reopened.signer_key_id()
    assert _verifies(again.bundle_pem(), old_leaf.chain_pem, clock)
    assert _verifies(again.bundle_pem(), _issue(again).chain_pem, clock)

    again.finish_rotation(force=True)
    last = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert last.rotation_phase == "idle" and len(_roots(last.bundle_pem())) == 1
    assert not (state_dir / ROTATION_FILE).exists()
    for path in state_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and b"PRIVATE KEY" not in path.read_bytes()


def test_crash_between_announcing_and_swapping_completes_on_open(ca: CertificateAuthority, state_dir: Path,
                                                                 kek: bytes, clock: Clock) -> None:
    ca.begin_rotation()
    new_root = _roots(ca.bundle_pem())[1]
    # simulate activate_rotation dying after writing rotation.json but before the renames
    import json

    from meshcore.ca._store import RotationState

    state = RotationState.read(state_dir / ROTATION_FILE)
    state.phase, state.previous_roots = "rotating", [_roots(ca.bundle_pem())[0]]
    state.write(state_dir / ROTATION_FILE)
    assert (state_dir / NEXT_ROOT_FILE).exists()
    resumed = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert resumed.rotation_phase == "rotating"
    assert _roots(resumed.bundle_pem())[0] == new_root
    assert not (state_dir / NEXT_ROOT_FILE).exists()
    assert json.loads((state_dir / ROTATION_FILE).read_text())["phase"] == "rotating"


def test_an_unannounced_rotation_is_discarded(ca: CertificateAuthority, state_dir: Path, kek: bytes,
                                              clock: Clock) -> None:
    bundle = ca.bundle_pem()
    ca.begin_rotation()
    (state_dir / ROTATION_FILE).unlink()  # crashed before announcing it
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert reopened.rotation_phase == "idle" and reopened.bundle_pem() == bundle
    assert not (state_dir / NEXT_ROOT_FILE).exists()


def test_only_one_rotation_at_a_time(ca: CertificateAuthority) -> None:
    with pytest.raises(CAError, match="no rotation is being prepared"):
        ca.activate_rotation()
    ca.begin_rotation()
    with pytest.raises(CAError, match="already in progress"):
        ca.begin_rotation()
    with pytest.raises(CAError, match="wait until it is active"):
        ca.finish_rotation()


@pytest.mark.parametrize("key_type, cls, size", [
    ("ec-p384", ec.EllipticCurvePublicKey, 384), ("rsa-2048", rsa.RSAPublicKey, 2048),
])
def test_ca_key_type(tmp_path: Path, kek: bytes, clock: Clock, key_type: str, cls: type, size: int) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock, key_type=key_type)
    root = _roots(ca.bundle_pem())[0]
    assert isinstance(root.public_key(), cls) and root.public_key().key_size == size
    leaf = _issue(ca, key_type=key_type)
    assert _verifies(ca.bundle_pem(), leaf.chain_pem, clock)
    assert ca.state()["key_type"] == key_type
    # a rotation on an existing CA makes keys of the type asked for now
    again = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock, key_type="ec-p256")
    again.begin_rotation()
    again.activate_rotation()
    assert again.state()["key_type"] == "ec-p256"
    assert _verifies(again.bundle_pem(), leaf.chain_pem, clock)


def test_unknown_key_type_is_refused(tmp_path: Path, kek: bytes) -> None:
    with pytest.raises(CAError, match="ec-p256, ec-p384, rsa-2048, rsa-3072"):
        CertificateAuthority.open(tmp_path / "ca", kek=kek, key_type="ed25519")


def test_state_lists_roots_by_role(ca: CertificateAuthority, clock: Clock) -> None:
    _issue(ca)
    ca.begin_rotation()
    state = ca.state()
    assert state["phase"] == "preparing" and state["mode"] == "generated"
    assert [r["role"] for r in state["roots"]] == ["current", "next"]
    assert [c["spiffe_id"] for c in state["old_root_certificates"]] == [WEB]
    ca.activate_rotation()
    clock.advance(timedelta(seconds=1))
    assert [r["role"] for r in ca.state()["roots"]] == ["current", "previous"]


def test_a_held_rotation_stays_preparing_until_released_also_across_reopen(ca: CertificateAuthority,
                                                                          state_dir: Path, kek: bytes,
                                                                          clock: Clock) -> None:
    with pytest.raises(CAError, match="no rotation is being prepared"):
        ca.release_rotation()
    ca.begin_rotation(hold=True)
    assert ca.rotation_held and ca.state()["held"] is True and len(_roots(ca.bundle_pem())) == 2
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert reopened.rotation_phase == "preparing" and reopened.rotation_held
    assert reopened.release_rotation() is True
    assert not reopened.rotation_held and reopened.rotation_phase == "preparing"
    assert reopened.release_rotation() is False  # not held any more: nothing to release
    again = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert again.rotation_phase == "preparing" and not again.rotation_held
    again.activate_rotation()
    assert not again.rotation_held and again.state()["held"] is False
    with pytest.raises(CAError, match="no rotation is being prepared"):
        again.release_rotation()
