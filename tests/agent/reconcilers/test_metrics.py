"""MetricsReconciler and AccessLogReconciler alone; StatusWriter's write-when-changed rule."""

from __future__ import annotations

import json
import urllib.request

from meshcore.agent.metrics import AgentFacts
from meshcore.agent.reconcilers.access_log import AccessLogReconciler
from meshcore.agent.reconcilers.metrics import MetricsReconciler
from meshcore.agent.status import StatusWriter


def test_metrics_serve_facts_and_advertise_the_bound_address():
    rec = MetricsReconciler("vm1", lambda: "0.0.0.0:0", lambda: "127.0.0.1:1",
                            lambda: AgentFacts(node="vm1", svids={"web": ("spiffe://cluster.local/ns/default/sa/web",
                                                                           1.0)}))
    assert rec.start()
    try:
        rec.svid_issued("web", "issue")
        host, port = rec.address().rsplit(":", 1)
        assert host == "127.0.0.1"  # a wildcard bind is advertised with the admin host
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'meshcore_agent_svid_expiry_timestamp_seconds{node="vm1",service="web"' in body
        assert 'meshcore_agent_svids_issued_total{reason="issue",service="web"} 1.0' in body
        assert "meshcore_envoy_up 0" in body
        (payload,) = rec.own_registrations()
        assert payload["Port"] == int(port)
    finally:
        rec.stop()
    assert rec.own_registrations() == [] and rec.address() == ""


def test_metrics_off():
    rec = MetricsReconciler("vm1", lambda: "", lambda: "127.0.0.1:1", lambda: AgentFacts(node="vm1"))
    assert not rec.start() and rec.own_registrations() == []


def test_access_log_follows_the_file_envoy_names(tmp_path):
    log = tmp_path / "access.log"
    log.write_text("")
    asked: list[str] = []

    def locate(admin: str) -> str:
        asked.append(admin)
        return str(log)

    rec = AccessLogReconciler(lambda: "127.0.0.1:1", locate=locate)
    assert rec.counts() is None
    rec.start()
    try:
        import time

        deadline = time.monotonic() + 10
        while rec.counts() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert asked[0] == "127.0.0.1:1" and rec.counts().path == str(log)
    finally:
        rec.stop()
    assert rec.counts() is None


def _doc(contact: str | None, state: str = "ready") -> dict:
    return {"state": state, "control_plane": {"address": "x", "last_contact": contact}}


def test_status_writer_skips_a_moved_last_contact_alone(tmp_path):
    now = {"t": 0.0}
    writer = StatusWriter(tmp_path, contact_every=60, clock=lambda: now["t"])
    read = lambda: json.loads((tmp_path / "status.json").read_text())  # noqa: E731
    assert writer.write(_doc(None))
    assert writer.write(_doc("t1"))  # the first contact: written at once
    now["t"] = 5
    assert not writer.write(_doc("t2")) and read()["control_plane"]["last_contact"] == "t1"
    assert writer.write(_doc("t3", state="degraded"))  # anything else: at once
    now["t"] = 70
    assert writer.write(_doc("t4")) and read()["control_plane"]["last_contact"] == "t4"
    assert writer.write(_doc("t4"), force=False) is False
    assert writer.write(_doc("t5"), force=True)
