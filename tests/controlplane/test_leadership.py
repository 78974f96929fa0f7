"""Leader election by a Consul session lock, against the Consul double (real HTTP on loopback)."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator

import pytest
import requests
from prometheus_client import CollectorRegistry

from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.controlplane.leadership import AlwaysLeader, ConsulLeadership, LeaderWork, check_lock_settings
from meshcore.errors import ConfigError
from tests.consul_double import ConsulDouble
from tests.consul_double._polling import wait_for as _wait_for

KEY = "meshcore/leader"




@pytest.fixture
def double() -> Iterator[ConsulDouble]:
    with ConsulDouble(session_ttl_min=0.5) as d:  # lets the tests use second-long TTLs
        yield d


def _replica(double: ConsulDouble, name: str, *, ttl: float = 1.0, delay: float = 1.0, check=lambda: None,
             registry=None) -> ConsulLeadership:
    settings = ConsulSettings.from_env({}, address=double.address)
    return ConsulLeadership(settings, KEY, name, ttl=ttl, lock_delay=delay, service_check=check, registry=registry)


def _holder(double: ConsulDouble) -> tuple[str | None, str]:
    r = requests.get(f"{double.address}/v1/kv/{KEY}", timeout=10)
    if r.status_code == 404:
        return None, ""
    entry = r.json()[0]
    return entry.get("Session"), json.loads(base64.b64decode(entry["Value"]) or b"{}").get("replica", "")


def _register(double: ConsulDouble, replica: str) -> str:
    requests.put(f"{double.address}/v1/agent/service/register", timeout=10, data=json.dumps(
        {"Name": "meshcore-control-plane", "ID": replica, "Port": 1,
         "Check": {"TTL": "60s", "Status": "passing"}})).raise_for_status()
    return f"service:{replica}"


def test_acquire_renew_and_the_others_see_the_leader(double):
    registry = CollectorRegistry()
    a = _replica(double, "cp-a", registry=registry).start()
    try:
        assert a.wait_leader(10)
        b = _replica(double, "cp-b").start()
        try:
            session, replica = _holder(double)
            assert replica == "cp-a" and session == a.status()["session"]
            _wait_for(lambda: b.leader() == "cp-a", what="cp-b seeing cp-a lead")
            assert not b.is_leader()
            time.sleep(2.5)  # 2.5 TTLs: renewals at TTL/2 keep the session (Consul drops it after 2 x TTL)
            assert a.is_leader() and not b.is_leader() and a.term() == 1
            assert _holder(double)[0] == session
            assert registry.get_sample_value("meshcore_leader") == 1
            assert registry.get_sample_value("meshcore_leadership_changes_total", {"change": "acquired"}) == 1
        finally:
            b.stop()
    finally:
        a.stop()


def test_a_lost_session_stops_the_work_at_once_and_another_replica_takes_over_after_the_lock_delay(double):
    a_check, b_check = _register(double, "cp-a"), _register(double, "cp-b")
    a = _replica(double, "cp-a", delay=2.0, check=lambda: a_check).start()
    assert a.wait_leader(10)
    b = _replica(double, "cp-b", delay=2.0, check=lambda: b_check).start()
    stopped_at: list[float] = []
    running = threading.Event()

    def work(stop: threading.Event) -> None:
        running.set()
        stop.wait()
        stopped_at.append(time.monotonic())

    job = LeaderWork(a, "test", work).start()
    try:
        assert running.wait(5)
        lost = time.monotonic()
        double.set_check_status(a_check, "critical", "replica cp-a is down")  # Consul invalidates a's session
        _wait_for(lambda: stopped_at, timeout=5, what="cp-a's work stopping")
        assert stopped_at[0] - lost < 1.0  # the watch saw the lock released: no renewal cycle waited for
        assert not a.is_leader() and not job.running()
        assert b.wait_leader(10)
        took = time.monotonic() - lost
        assert took >= 1.8, f"cp-b led {took:.2f}s after the invalidation, inside the 2s lock-delay"
        assert took < 2.0 + 5.0
        assert _holder(double)[1] == "cp-b"
        _wait_for(lambda: a.leader() == "cp-b", what="cp-a seeing cp-b lead")
    finally:
        job.stop()
        b.stop()
        a.stop()


def test_a_failed_renewal_ends_leadership_before_consul_could_expire_the_session(double):
    a = _replica(double, "cp-a", ttl=2.0).start()
    try:
        assert a.wait_leader(10)
        double.stop()  # Consul unreachable: the next renewal fails
        gone = time.monotonic()
        _wait_for(lambda: not a.is_leader(), timeout=5, what="cp-a stepping down")
        assert time.monotonic() - gone < 2.0  # within one TTL: Consul invalidates no sooner than that
    finally:
        a.stop()
        double.start()


def test_clean_stop_releases_the_lock_without_the_lock_delay(double):
    a = _replica(double, "cp-a", delay=10.0).start()
    assert a.wait_leader(10)
    b = _replica(double, "cp-b", delay=10.0).start()
    try:
        _wait_for(lambda: b.leader() == "cp-a", what="cp-b seeing cp-a lead")
        session = a.status()["session"]
        a.stop()
        assert requests.get(f"{double.address}/v1/session/info/{session}", timeout=10).json() == []
        started = time.monotonic()
        assert b.wait_leader(8)
        assert time.monotonic() - started < 5.0  # a release sets no lock-delay (10s here)
    finally:
        b.stop()
        a.stop()


def test_always_leader_and_its_work():
    lead = AlwaysLeader("only")
    assert lead.is_leader() and lead.leader() == "only" and lead.wait_leader(0)
    ran = threading.Event()
    job = LeaderWork(lead, "w", lambda stop: (ran.set(), stop.wait())).start()
    assert ran.wait(5)
    job.stop()
    assert not job.running()


def test_lock_settings_limits():
    check_lock_settings(15, 15)
    with pytest.raises(ConfigError, match="10s to 24h"):
        check_lock_settings(5, 15)
    with pytest.raises(ConfigError, match="0s to 60s"):
        check_lock_settings(15, 61)


def test_the_control_planes_leadership_flags(monkeypatch, capsys, tmp_path):
    from meshcore.controlplane.daemon import Settings, _check_limits, parse_args

    args = parse_args([])
    assert (args.leader_lock_ttl, args.leader_lock_delay, args.replica_id) == ("15s", "15s", "")
    monkeypatch.setenv("MESHCORE_LEADER_LOCK_DELAY", "20s")
    args = parse_args(["--replica-id", "cp-1", "--leader-lock-ttl", "30s"])
    assert (args.replica_id, args.leader_lock_ttl, args.leader_lock_delay) == ("cp-1", "30s", "20s")
    with pytest.raises(SystemExit):
        parse_args(["--help"])
    help_text = capsys.readouterr().out
    for flag in ("--replica-id", "--leader-lock-ttl", "--leader-lock-delay", "--leader-key", "--replica-check-ttl"):
        assert flag in help_text
    with pytest.raises(ConfigError, match="--leader-lock-ttl 5s"):
        _check_limits(Settings(state_dir=tmp_path, leader_lock_ttl=5))
    with pytest.raises(ConfigError, match="--replica-check-ttl"):
        _check_limits(Settings(state_dir=tmp_path, replica_check_ttl=0))


def test_fenced_writes_fail_once_the_lock_is_lost(double):
    from meshcore.controlplane.alerting import ConsulLedger
    from meshcore.errors import ConsulError

    a = _replica(double, "cp-a").start()
    try:
        assert a.wait_leader(10)
        settings = ConsulSettings.from_env({}, address=double.address)
        stale = a.fence()
        ledger = ConsulLedger(settings, "meshcore/alerts/notified", fence=a.fence)
        ledger.save({"abc": 1.0})
        assert ledger.load() == {"abc": 1.0}
        requests.put(f"{double.address}/v1/session/destroy/{a.status()['session']}", timeout=10)
        _wait_for(lambda: not a.is_leader(), timeout=5, what="cp-a stepping down")
        with pytest.raises(ConsulError, match="does not hold the leader lock"):
            ledger.save({"abc": 1.0, "def": 2.0})
        with pytest.raises(ConsulError, match="409"):  # a write prepared while leading, sent after: refused
            ConsulLedger(settings, "meshcore/alerts/notified", fence=lambda: stale).save({"late": 3.0})
        assert ledger.load() == {"abc": 1.0}
    finally:
        a.stop()


def test_root_rotation_steps_run_on_the_leader_only(tmp_path):
    from meshcore.ca import generate_kek_file
    from meshcore.controlplane.daemon import ControlPlane, Settings
    from tests.e2e._topology import write_catalog

    from ._leadership import ManualLeadership

    write_catalog(tmp_path / "catalog")
    plane = ControlPlane(Settings(state_dir=tmp_path / "state", catalog=f"files:{tmp_path / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0"),
                         generate_kek_file(tmp_path / "kek"))
    lead = ManualLeadership("cp-1", leader="cp-0")  # a follower: cp-0 leads
    plane.leadership = lead
    lead.subscribe(lambda leading: plane._ca_wake.set())  # as the daemon wires its own handle
    plane.start()
    try:
        assert plane.ca_rotate()["phase"] == "preparing"  # any replica accepts the operator's step
        for _ in range(3):  # no node lacks the bundle (none is connected), yet a follower does not move it on
            plane._ca_wake.set()
            time.sleep(0.2)
        assert plane.ca.rotation_phase == "preparing"
        lead.set(True)  # leadership gained: the watcher is woken and takes the step
        _wait_for(lambda: plane.ca.rotation_phase == "rotating", timeout=10, what="the leader activating the rotation")
    finally:
        plane.stop()
