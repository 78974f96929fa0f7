"""External upstream CA: an intermediate signed by the operator's own root, imported from files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import VerificationError

from meshcore.ca import CertificateAuthority, load_upstream_ca, make_csr, new_private_key
from meshcore.errors import CAError

from .conftest import T0, Clock, verify_chain

TD = "cluster.local"
WEB = "spiffe://cluster.local/ns/default/sa/web"


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, uri: str | None = None,
          key_cert_sign: bool = True) -> x509.Certificate:
    """The operator's own PKI, built here with cryptography alone (no meshcore code)."""
    b = (x509.CertificateBuilder()
         .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
         .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(T0 - timedelta(days=1)).not_valid_after(T0 + timedelta(days=400))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
         .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                      data_encipherment=False, key_agreement=False, key_cert_sign=key_cert_sign,
                                      crl_sign=ca, encipher_only=False, decipher_only=False), critical=True))
    if uri:
        b = b.add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


@pytest.fixture
def pki(tmp_path: Path):
    root_key, inter_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP384R1())
    root = _cert("Example Corp Root", root_key, "Example Corp Root", root_key, ca=True)
    inter = _cert("Example Corp Mesh CA", inter_key, "Example Corp Root", root_key, ca=True, uri=f"spiffe://{TD}")
    files = {"root": tmp_path / "root.pem", "cert": tmp_path / "inter.pem", "key": tmp_path / "inter.key"}
    files["root"].write_bytes(_pem(root))
    files["cert"].write_bytes(_pem(inter))
    files["key"].write_bytes(_key_pem(inter_key))
    return {"root": root, "root_key": root_key, "inter": inter, "inter_key": inter_key, "files": files,
            "tmp": tmp_path}


def _load(pki, **over):
    f = {**pki["files"], **over}
    return load_upstream_ca(f["cert"], f["key"], f.get("root"), trust_domain=TD, now=T0)


def _issue(ca):
    return ca.sign_csr(make_csr(new_private_key(), WEB), spiffe_id=WEB, node="vm1")


def test_upstream_ca_signs_and_the_bundle_is_the_operators_root(pki, tmp_path: Path, kek: bytes,
                                                                clock: Clock) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock, upstream=_load(pki))
    assert ca.external and ca.state()["mode"] == "upstream" and ca.state()["key_type"] == "ec-p384"
    assert x509.load_pem_x509_certificates(ca.bundle_pem().encode()) == [pki["root"]]
    leaf = _issue(ca)
    chain = verify_chain(_pem(pki["root"]).decode(), leaf.chain_pem, clock.now)
    assert chain[1] == pki["inter"]
    # stored sealed: reopening needs no files, and no private key is on disk in the clear
    for path in (tmp_path / "ca").iterdir():
        assert b"PRIVATE KEY" not in path.read_bytes()
    reopened = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock)
    assert reopened.external and reopened.bundle_pem() == ca.bundle_pem()
    verify_chain(reopened.bundle_pem(), _issue(reopened).chain_pem, clock.now)
    with pytest.raises(CAError, match="--ca-cert"):
        reopened.begin_rotation()


def test_chain_with_a_second_intermediate(pki, tmp_path: Path, kek: bytes, clock: Clock) -> None:
    mid_key, sign_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    mid = _cert("Example Corp Issuing", mid_key, "Example Corp Root", pki["root_key"], ca=True)
    signer = _cert("Example Mesh", sign_key, "Example Corp Issuing", mid_key, ca=True)
    (tmp_path / "s.pem").write_bytes(_pem(signer))
    (tmp_path / "s.key").write_bytes(_key_pem(sign_key))
    (tmp_path / "chain.pem").write_bytes(_pem(mid) + _pem(pki["root"]))
    up = load_upstream_ca(tmp_path / "s.pem", tmp_path / "s.key", tmp_path / "chain.pem", trust_domain=TD, now=T0)
    assert up.chain == (mid,) and up.root == pki["root"]
    ca = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock, upstream=up)
    verify_chain(ca.bundle_pem(), _issue(ca).chain_pem, clock.now)


def test_refusals_say_what_is_wrong(pki) -> None:
    tmp = pki["tmp"]
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf = _cert("not a CA", leaf_key, "Example Corp Root", pki["root_key"], ca=False)
    (tmp / "leaf.pem").write_bytes(_pem(leaf))
    with pytest.raises(CAError, match="is not a CA certificate"):
        _load(pki, cert=tmp / "leaf.pem")

    other_td = _cert("Other", pki["inter_key"], "Example Corp Root", pki["root_key"], ca=True,
                     uri="spiffe://other.example")
    (tmp / "other.pem").write_bytes(_pem(other_td))
    with pytest.raises(CAError, match="spiffe://other.example.*may only carry spiffe://cluster.local"):
        _load(pki, cert=tmp / "other.pem")

    with_path = _cert("Path", pki["inter_key"], "Example Corp Root", pki["root_key"], ca=True,
                      uri="spiffe://cluster.local/ns/default/sa/web")
    (tmp / "path.pem").write_bytes(_pem(with_path))
    with pytest.raises(CAError, match="may only carry spiffe://cluster.local"):
        _load(pki, cert=tmp / "path.pem")

    no_sign = _cert("NoSign", pki["inter_key"], "Example Corp Root", pki["root_key"], ca=True, key_cert_sign=False)
    (tmp / "nosign.pem").write_bytes(_pem(no_sign))
    with pytest.raises(CAError, match="keyCertSign"):
        _load(pki, cert=tmp / "nosign.pem")

    (tmp / "wrong.key").write_bytes(_key_pem(ec.generate_private_key(ec.SECP256R1())))
    with pytest.raises(CAError, match="does not match --ca-cert"):
        _load(pki, key=tmp / "wrong.key")

    with pytest.raises(CAError, match="pass --ca-chain"):
        load_upstream_ca(pki["files"]["cert"], pki["files"]["key"], None, trust_domain=TD, now=T0)

    stranger_key = ec.generate_private_key(ec.SECP256R1())
    forged_root = _cert("Example Corp Root", stranger_key, "Example Corp Root", stranger_key, ca=True)
    (tmp / "forged.pem").write_bytes(_pem(forged_root))
    with pytest.raises(CAError, match="was not signed by"):
        _load(pki, root=tmp / "forged.pem")

    with pytest.raises(CAError, match="cannot read the CA key"):
        _load(pki, key=tmp / "missing.key")


def test_new_upstream_on_a_generated_ca_rotates_to_it(pki, tmp_path: Path, kek: bytes, clock: Clock) -> None:
    ca = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock)
    old_leaf = _issue(ca)
    moved = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock, upstream=_load(pki))
    assert moved.rotation_phase == "preparing"
    assert pki["root"] in x509.load_pem_x509_certificates(moved.bundle_pem().encode())
    moved.activate_rotation()
    new_leaf = _issue(moved)
    verify_chain(moved.bundle_pem(), old_leaf.chain_pem, clock.now)
    verify_chain(_pem(pki["root"]).decode(), new_leaf.chain_pem, clock.now)
    # a restart with the same flags changes nothing
    same = CertificateAuthority.open(tmp_path / "ca", kek=kek, clock=clock, upstream=_load(pki))
    assert same.rotation_phase == "rotating"
    same.finish_rotation(force=True)
    assert x509.load_pem_x509_certificates(same.bundle_pem().encode()) == [pki["root"]]
    with pytest.raises(VerificationError):
        verify_chain(same.bundle_pem(), old_leaf.chain_pem, clock.now)
