"""Replica registration in Consul (the double, over HTTP): meta, the TTL check kept from /healthz, listing, deregistration."""

from __future__ import annotations

import requests

from meshcore.catalog._consul_settings import ConsulSettings
from meshcore.controlplane.replicas import SERVICE, ReplicaRegistry, healthz_probe
from tests.consul_double import ConsulDouble
from tests.consul_double._polling import wait_for


def test_register_keep_the_check_current_list_and_deregister():
    health = {"ok": True}
    with ConsulDouble() as double:
        settings = ConsulSettings.from_env({}, address=double.address)
        reg = ReplicaRegistry(settings, "cp-1", address="127.0.0.1", ports={"xds": 15012, "api": 15443, "http": 15000},
                              health=lambda: (health["ok"], "GET /healthz: HTTP 200" if health["ok"] else "refused"),
                              check_ttl=0.6, leader=lambda: "cp-1",
                              endpoints={"xds": "127.0.0.1:15012", "api": "https://127.0.0.1:15443"}).start()
        try:
            [entry] = requests.get(f"{double.address}/v1/health/service/{SERVICE}", timeout=10).json()
            svc = entry["Service"]
            assert svc["ID"] == "cp-1" and svc["Port"] == 15000 and svc["Address"] == "127.0.0.1"
            assert svc["Meta"]["meshcore-xds-port"] == "15012" and svc["Meta"]["meshcore-api-port"] == "15443"
            assert svc["Meta"]["meshcore-api-address"] == "https://127.0.0.1:15443"
            assert svc["Meta"]["meshcore-xds-address"] == "127.0.0.1:15012"
            assert reg.registered_check() == "service:cp-1"
            [r] = reg.replicas(max_age=0)
            assert r.id == "cp-1" and r.healthy and r.leader and r.xds_port == 15012 and r.version
            health["ok"] = False  # its /healthz fails: the check turns critical with the probe's output
            wait_for(lambda: not reg.replicas(max_age=0)[0].healthy, what="the replica shown unhealthy")
            assert reg.replicas(max_age=0)[0].output == "refused"
            health["ok"] = True
            wait_for(lambda: reg.replicas(max_age=0)[0].healthy, what="the replica healthy again")
            double.restart(empty=True)  # the agent lost every registration: it registers again
            wait_for(lambda: [x.id for x in reg.replicas(max_age=0)] == ["cp-1"], what="the registration back")
        finally:
            reg.stop()
        assert requests.get(f"{double.address}/v1/health/service/{SERVICE}", timeout=10).json() == []


def test_a_dead_replica_turns_critical_within_the_check_ttl():
    with ConsulDouble() as double:
        settings = ConsulSettings.from_env({}, address=double.address)
        reg = ReplicaRegistry(settings, "cp-2", address="127.0.0.1", ports={"http": 1}, health=lambda: (True, "ok"),
                              check_ttl=0.5).start()
        reg._stopped.set()  # the process died: nobody updates the check, nobody deregisters
        wait_for(lambda: not reg.replicas(max_age=0)[0].healthy, timeout=5, what="the check's TTL expiring")
        assert reg.replicas(max_age=0)[0].output == "TTL expired"


def test_healthz_probe_reports_a_refused_connection():
    passing, output = healthz_probe(lambda: "http://127.0.0.1:9/healthz", timeout=1)()
    assert not passing and "127.0.0.1:9" in output
