"""Renewal timing (pure functions) and the node identity files."""

from __future__ import annotations

import random
import stat
from datetime import datetime, timedelta, timezone

import pytest

from meshcore import naming
from meshcore.agent.identity import (
    AgentMeta,
    bundle_trust_domain,
    CertSummary,
    Credential,
    NodeIdentityStore,
    key_matches_cert,
    next_wakeup,
    parse_time,
    random_jitter,
    renewal_time,
    token_digest,
)
from meshcore.errors import AgentError

from ._helpers import issue

T0 = datetime(2030, 1, 1, tzinfo=timezone.utc)
TD = naming.DEFAULT_TRUST_DOMAIN


def test_renewal_at_half_life_without_jitter():
    assert renewal_time(T0, T0 + timedelta(hours=24)) == T0 + timedelta(hours=12)
    assert renewal_time(T0, T0 + timedelta(seconds=30)) == T0 + timedelta(seconds=15)


def test_jitter_bounds_are_ten_percent_of_the_half_life():
    lifetime = timedelta(seconds=30)
    assert renewal_time(T0, T0 + lifetime, -1.0) == T0 + timedelta(seconds=13.5)
    assert renewal_time(T0, T0 + lifetime, 1.0) == T0 + timedelta(seconds=16.5)
    rng = random.Random(7)
    draws = [random_jitter(rng) for _ in range(2000)]
    assert all(-1.0 <= j <= 1.0 for j in draws)
    assert min(draws) < -0.9 and max(draws) > 0.9  # spread over the whole window
    times = [renewal_time(T0, T0 + lifetime, j) for j in draws]
    assert all(T0 + timedelta(seconds=13.5) <= t <= T0 + timedelta(seconds=16.5) for t in times)
    with pytest.raises(ValueError):
        renewal_time(T0, T0 + lifetime, 1.5)


def test_backdated_not_before_counts_from_issuance():
    # the CA backdates not_before by a minute; a 20 s leaf must still renew ~10 s after it arrived
    issued_at = T0 + timedelta(minutes=1)
    not_after = issued_at + timedelta(seconds=20)
    assert renewal_time(T0, not_after, issued_at=issued_at) == issued_at + timedelta(seconds=10)
    assert renewal_time(T0, not_after) == T0 + timedelta(seconds=40)  # naive: already in the past
    # issued_at before not_before (clock skew the other way) is ignored
    assert renewal_time(T0, T0 + timedelta(seconds=30), issued_at=T0 - timedelta(hours=1)) == T0 + timedelta(
        seconds=15)


def test_expired_or_empty_lifetime_renews_at_once():
    assert renewal_time(T0, T0) == T0
    assert renewal_time(T0, T0 - timedelta(seconds=1)) == T0


def test_next_wakeup_is_the_earliest_deadline_capped():
    now = T0
    assert next_wakeup(now, [T0 + timedelta(seconds=3), T0 + timedelta(seconds=1)], cap=10) == 1
    assert next_wakeup(now, [T0 + timedelta(seconds=30)], cap=10) == 10
    assert next_wakeup(now, [T0 - timedelta(seconds=5)], cap=10) == 0.05  # overdue: at once (floor)
    assert next_wakeup(now, [], cap=2.5) == 2.5


def test_parse_time():
    assert parse_time("2030-01-01T00:00:00Z") == T0
    assert parse_time("2030-01-01T01:00:00+01:00") == T0
    with pytest.raises(AgentError):
        parse_time("tomorrow")


def test_credential_schedules_from_the_certificate(ca):
    chain, key = issue(ca, naming.node_spiffe_id(TD, "vm1"), ttl=timedelta(seconds=30))
    summary = CertSummary.of(chain)
    now = datetime.now(timezone.utc)
    cred = Credential.build(chain, key, 0.0, issued_at=now)
    assert cred.summary == summary
    assert summary.spiffe_id == naming.node_spiffe_id(TD, "vm1")
    half = (summary.not_after - now) / 2
    assert abs((cred.renew_at - (now + half)).total_seconds()) < 1.01
    assert key_matches_cert(key, chain)
    _, other_key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    assert not key_matches_cert(other_key, chain)


def test_store_round_trip_and_permissions(tmp_path, ca):
    store = NodeIdentityStore(tmp_path / "state")
    store.prepare()
    assert stat.S_IMODE(store.state_dir.stat().st_mode) == 0o700
    assert store.load_node(0.0) is None
    chain, key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    store.save_node(chain, key)
    assert stat.S_IMODE(store.key_path.stat().st_mode) == 0o600
    loaded = store.load_node(0.0)
    assert loaded is not None and loaded.chain_pem == chain and loaded.key_pem == key
    assert store.save_bundle(ca.bundle_pem()) is True
    assert store.save_bundle(ca.bundle_pem()) is False
    assert store.load_bundle() == ca.bundle_pem()
    meta = AgentMeta(trust_domain=TD, xds_address="127.0.0.1:15012", used_token_sha256=[token_digest("t")])
    store.save_meta(meta)
    assert store.load_meta() == meta


def test_store_refuses_a_key_for_another_certificate(tmp_path, ca):
    store = NodeIdentityStore(tmp_path / "state")
    store.prepare()
    chain, _ = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    _, other_key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    with pytest.raises(AgentError, match="does not match"):
        store.save_node(chain, other_key)
    store.cert_path.write_text(chain)
    store.key_path.write_text(other_key)
    with pytest.raises(AgentError, match="join again"):
        store.load_node(0.0)


def test_interrupted_rotation_is_completed_on_start(tmp_path, ca):
    store = NodeIdentityStore(tmp_path / "state")
    store.prepare()
    old_chain, old_key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    store.save_node(old_chain, old_key)
    new_chain, new_key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    # crash after the key was renamed into place, before the certificate was
    store.key_path.write_text(new_key)
    store.cert_path.with_name("node.crt.pending").write_text(new_chain)
    store.prepare()
    loaded = store.load_node(0.0)
    assert loaded is not None and loaded.chain_pem == new_chain and loaded.key_pem == new_key
    # crash before the certificate was written: the old pair stays
    store.key_path.with_name("node.key.pending").write_text(old_key)
    store.prepare()
    assert store.load_node(0.0).key_pem == new_key
    assert not store.key_path.with_name("node.key.pending").exists()


def test_trust_domain_named_by_the_ca_bundle(tmp_path, ca):
    from meshcore.ca import CertificateAuthority, generate_kek_file

    assert bundle_trust_domain(ca.bundle_pem()) == TD
    other = CertificateAuthority.open(tmp_path / "other", trust_domain="prod.example",
                                      kek=generate_kek_file(tmp_path / "other.kek"))
    assert bundle_trust_domain(other.bundle_pem() + ca.bundle_pem()) == "prod.example"
    assert bundle_trust_domain("not a pem") is None
