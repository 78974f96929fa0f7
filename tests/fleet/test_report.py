"""The pure parts of the fleet commands, on outputs recorded from lab hosts."""

from __future__ import annotations

from pathlib import Path

from meshcore.fleet import build_host_report, format_table, redact, split_sections, unit_state
from meshcore.fleet.report import certificate_metadata, certificates_metadata, envoy_state, parse_key_values

RECORDED = Path(__file__).parent / "recorded"


def test_a_healthy_vm_reports_active_units_and_its_earliest_not_after():
    r = build_host_report("vm1", "10.213.0.12", ("meshcore_vms",), (RECORDED / "vm1-probe.txt").read_text())
    assert r.error is None
    assert r.units == {"agent": "active", "control-plane": "not-installed", "envoy": "active"}
    assert r.envoy["pid"] == 1241 and r.envoy["ready"] is True
    assert r.agent_state == "running"
    assert [c["name"] for c in r.certificates] == ["node", "details", "productpage"]
    assert r.not_after == "2026-11-26T23:00:00Z"  # productpage's, the earliest
    assert r.healthy
    doc = r.to_json()
    assert doc["healthy"] is True and doc["units"]["agent"] == "active"


def test_a_failed_agent_and_dead_envoy_are_not_healthy():
    r = build_host_report("vm2", "10.213.0.13", (), (RECORDED / "vm2-agent-failed.txt").read_text())
    assert r.units["agent"] == "failed"
    assert r.units["envoy"] == "inactive"
    assert r.envoy["ready"] is False and "refused" in r.envoy["ready_error"]
    assert r.certificates == [] and r.not_after is None
    assert not r.healthy


def test_truncated_output_is_an_error():
    text = (RECORDED / "vm1-probe.txt").read_text().replace("@@end", "")
    assert build_host_report("vm1", "a", (), text).error == "the probe's output ended early"


def test_sections_and_key_values():
    s = split_sections("noise\n@@a\nx=1\n@@b c\n\ny\n@@end\n")
    assert s == {"a": "x=1", "b c": "y"}
    assert parse_key_values("A=1\nnot a pair\nB=x=y\n") == {"A": "1", "B": "x=y"}


def test_unit_states():
    assert unit_state({"LoadState": "loaded", "ActiveState": "activating"}) == "activating"
    assert unit_state({"LoadState": "not-found", "ActiveState": "inactive"}) == "not-installed"
    assert unit_state({}) == "unknown"  # no systemd / no permission: systemctl printed nothing usable


def test_envoy_starting_is_activating():
    e = envoy_state({"pid": "9", "pid_alive": "1", "ready_code": "503", "ready_body": "PRE_INITIALIZING"}, "active")
    assert e["state"] == "activating" and e["pid"] == 9


def test_table_has_every_host():
    r1 = build_host_report("vm1", "10.0.0.1", (), (RECORDED / "vm1-probe.txt").read_text())
    r2 = build_host_report("vm2", "10.0.0.2", (), (RECORDED / "vm2-agent-failed.txt").read_text())
    lines = format_table([r1, r2]).splitlines()
    assert lines[0].split()[:3] == ["HOST", "ADDRESS", "AGENT"]
    assert lines[1].split()[:4] == ["vm1", "10.0.0.1", "active", "active"]
    assert lines[2].split()[:4] == ["vm2", "10.0.0.2", "failed", "inactive"]


def test_redact_removes_private_keys_and_tokens(cert_factory):
    _, cert_pem, key_pem = cert_factory("x")
    text = (f"before\n{key_pem}middle\n{cert_pem}join_token: abcdefgh12345678\n"
            'MESHCORE_TOKEN=s3cr3tvalue99\n{"admin_token": "zzzzzzzzzz"}\n'
            "-----BEGIN EC PRIVATE KEY-----\ntruncated")
    out = redact(text)
    assert "PRIVATE KEY" not in out
    assert "abcdefgh12345678" not in out and "s3cr3tvalue99" not in out and "zzzzzzzzzz" not in out
    assert cert_pem in out and "before" in out and "middle" in out


def test_certificate_metadata(cert_factory):
    cert, pem, _ = cert_factory("leaf", "spiffe://cluster.local/ns/default/sa/details", days=2)
    meta = certificate_metadata(pem)
    assert meta["uri_sans"] == ["spiffe://cluster.local/ns/default/sa/details"]
    assert meta["serial"] == format(cert.serial_number, "x")
    assert meta["not_after"].startswith(cert.not_valid_after_utc.strftime("%Y-%m-%dT%H:%M"))
    assert meta["is_ca"] is False and len(meta["sha256"]) == 64
    out = certificates_metadata({"/x.pem": [pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----"]})
    assert out["/x.pem"][0]["subject"] == "CN=leaf" and "error" in out["/x.pem"][1]
