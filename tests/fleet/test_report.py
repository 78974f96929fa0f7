"""The pure parts of the fleet commands, on outputs recorded from lab hosts."""

from __future__ import annotations

from pathlib import Path

import pytest

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


JOIN = "mjt_Q2x-Zy_09abcDEFghiJKLmnoPQRstuVWX"
OPERATOR = "mco_a1B2-c3D4_e5F6g7H8i9J0kLmNoPqRsTuVwXyZ0123456"
KEK = "q83vEjRWeJq83vEjRWeJq83vEjRWeJq83vEjRWeJq80="


@pytest.mark.parametrize("text, secret", [
    (f"ExecStart=/usr/local/bin/meshcore-agent --node vm1 --join-token {JOIN} --control-plane https://cp:8502",
     JOIN),
    (f"ExecStart=/usr/local/bin/meshcore-agent --join-token={JOIN}", JOIN),
    (f"root      4242  0.3  1.1 meshctl --server https://cp:8443 --token {OPERATOR} ca rotate", OPERATOR),
    (f"Dec 07 00:12:01 cp meshcore-control-plane[812]: operator request refused {OPERATOR} from 10.0.0.9",
     OPERATOR),
    (f"agent: joining with {JOIN}", JOIN),
    (f"Environment=MESHCORE_KEK={KEK} MESHCORE_LOG=info", KEK),
    (f"MESHCORE_KEK={KEK}", KEK),
    (f'{{"env": {{"MESHCORE_KEK": "{KEK}"}}}}', KEK),
    ("Environment=CONSUL_HTTP_TOKEN=7f6e5d4c-1234-5678-9abc-def012345678",
     "7f6e5d4c-1234-5678-9abc-def012345678"),
    ("Authorization: Bearer sekrit-bearer-value", "sekrit-bearer-value"),
    ("meshctl --token=plain-operator-token get proxies", "plain-operator-token"),
])
def test_redact_removes_every_token_and_key_pattern_wherever_it_appears(text, secret):
    out = redact(text)
    assert secret not in out, out
    assert "[redacted]" in out
    assert redact(out) == out  # idempotent: redacting twice (collect, then archive) changes nothing more


def test_redact_keeps_what_is_not_a_secret():
    text = ("--kek-file /etc/meshcore/kek --token-ttl 1h secrets_dir: /var/lib/meshcore-agent/secrets "
            "node=vm1 spiffe://cluster.local/ns/default/sa/details")
    assert redact(text) == text


def test_redact_removes_pem_private_keys_of_every_kind(cert_factory):
    _, _, key_pem = cert_factory("k")
    for pem in (key_pem, key_pem.replace("PRIVATE KEY", "EC PRIVATE KEY"),
                key_pem.replace("PRIVATE KEY", "ENCRYPTED PRIVATE KEY")):
        body = pem.splitlines()[1]
        out = redact(f"log line\n{pem}after")
        assert body not in out and "PRIVATE KEY" not in out and "after" in out
