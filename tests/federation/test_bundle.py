"""SPIFFE bundle format (JWK Set) to and from PEM roots; the store of imported bundles."""

from __future__ import annotations

import base64
import json
import os
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.errors import ConfigError
from meshcore.federation import (
    BundleError,
    FederatedBundleStore,
    load_pem_roots,
    parse_spiffe_bundle,
    read_bundle_text,
    to_spiffe_bundle,
)

KEK = os.urandom(32)


@pytest.fixture(scope="module")
def other(tmp_path_factory):
    return CertificateAuthority.open(tmp_path_factory.mktemp("other-ca"), trust_domain="other.example", kek=KEK)


@pytest.fixture(scope="module")
def rsa_other(tmp_path_factory):
    return CertificateAuthority.open(tmp_path_factory.mktemp("rsa-ca"), trust_domain="other.example", kek=KEK,
                                     key_type="rsa-2048")


def _b64url_int(text: str) -> int:
    return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")


def test_export_is_a_spiffe_bundle_with_ec_key_fields(other):
    bundle = to_spiffe_bundle(other.bundle_pem(), sequence=7, refresh_hint=60)
    assert bundle["spiffe_sequence"] == 7 and bundle["spiffe_refresh_hint"] == 60
    [key] = bundle["keys"]
    assert (key["use"], key["kty"], key["crv"]) == ("x509-svid", "EC", "P-256")
    root = load_pem_roots(other.bundle_pem(), "t")[0]
    numbers = root.public_key().public_numbers()
    assert _b64url_int(key["x"]) == numbers.x and _b64url_int(key["y"]) == numbers.y
    assert len(key["x"]) == len(key["y"]) == 43  # 32 bytes, base64url without padding
    assert x509.load_der_x509_certificate(base64.b64decode(key["x5c"][0])) == root


def test_rsa_roots_carry_n_and_e(rsa_other):
    [key] = to_spiffe_bundle(rsa_other.bundle_pem(), sequence=1)["keys"]
    root = load_pem_roots(rsa_other.bundle_pem(), "t")[0]
    assert key["kty"] == "RSA" and _b64url_int(key["e"]) == 65537
    assert _b64url_int(key["n"]) == root.public_key().public_numbers().n


def test_round_trip_through_json_and_pem(other):
    text = json.dumps(to_spiffe_bundle(other.bundle_pem(), sequence=3))
    roots, seq = read_bundle_text(text, "f")
    assert seq == 3 and roots == load_pem_roots(other.bundle_pem(), "t")
    roots2, seq2 = read_bundle_text(other.bundle_pem(), "f")
    assert roots2 == roots and seq2 is None


def test_jwt_keys_are_skipped_and_mismatched_keys_refused(other):
    bundle = to_spiffe_bundle(other.bundle_pem(), sequence=1)
    jwt_key = {"use": "jwt-svid", "kty": "EC", "crv": "P-256", "kid": "k1", "x": "AA", "y": "AA"}
    roots, _ = parse_spiffe_bundle({**bundle, "keys": [jwt_key, *bundle["keys"]]})
    assert len(roots) == 1
    with pytest.raises(BundleError, match="no key with"):
        parse_spiffe_bundle({"keys": [jwt_key]})
    forged = dict(bundle["keys"][0], x=bundle["keys"][0]["y"])
    with pytest.raises(BundleError, match="x does not match"):
        parse_spiffe_bundle({"keys": [forged]}, "other.json")
    with pytest.raises(BundleError, match="JWK Set"):
        parse_spiffe_bundle({"nokeys": []})
    with pytest.raises(BundleError, match="not valid JSON"):
        read_bundle_text("{ nope", "f")


def test_store_refuses_leaves_foreign_roots_and_own_domain(tmp_path, other):
    store = FederatedBundleStore(tmp_path / "fed", "cluster.local")
    key = new_private_key()
    leaf = other.sign_csr(make_csr(key, "spiffe://other.example/ns/a/sa/b"), spiffe_id="spiffe://other.example/ns/a/sa/b",
                          ttl=timedelta(minutes=5))
    with pytest.raises(BundleError, match="not a CA certificate"):
        store.put("other.example", leaf.cert_pem)
    with pytest.raises(BundleError, match="trust domain 'other.example', not 'third.example'"):
        store.put("third.example", other.bundle_pem())
    with pytest.raises(ConfigError, match="own trust domain"):
        store.put("cluster.local", other.bundle_pem())
    with pytest.raises(ConfigError, match="invalid trust domain|canonical"):
        store.put("Other.Example", other.bundle_pem())
    assert store.bundles() == ()


def test_store_persists_replaces_and_refuses_older_sequence(tmp_path, other):
    store = FederatedBundleStore(tmp_path / "fed", "cluster.local")
    entry = store.put("other.example", json.dumps(to_spiffe_bundle(other.bundle_pem(), sequence=5)))
    assert entry["spiffe_sequence"] == 5 and len(entry["roots"]) == 1
    reopened = FederatedBundleStore(tmp_path / "fed", "cluster.local")  # a restarted control plane
    assert reopened.bundles() == (("other.example", other.bundle_pem()),)
    with pytest.raises(BundleError, match="older than the stored one"):
        reopened.put("other.example", json.dumps(to_spiffe_bundle(other.bundle_pem(), sequence=4)))
    assert reopened.remove("other.example") and not reopened.remove("other.example")
    assert FederatedBundleStore(tmp_path / "fed", "cluster.local").bundles() == ()


def test_local_sequence_grows_only_when_roots_change(tmp_path, other, rsa_other):
    store = FederatedBundleStore(tmp_path / "fed", "cluster.local")
    first = store.local_sequence(other.bundle_pem())
    assert store.local_sequence(other.bundle_pem()) == first
    assert store.local_sequence(other.bundle_pem() + rsa_other.bundle_pem()) == first + 1


def test_unsupported_curve_is_refused(tmp_path):
    from meshcore.federation import jwk_of
    from meshcore.ca._x509 import build_ca_cert
    from datetime import datetime, timezone

    key = ec.generate_private_key(ec.SECP256K1())
    now = datetime.now(timezone.utc)
    cert = build_ca_cert(trust_domain="x.example", role="root", key=key, not_before=now, not_after=now + timedelta(days=1),
                         path_length=1)
    with pytest.raises(BundleError, match="secp256k1"):
        jwk_of(cert)
