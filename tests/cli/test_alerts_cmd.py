"""`meshctl alerts`: list and rules against a real operator-API server on loopback, export to a rule file."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from meshcore.cli.main import main
from meshcore.controlplane._http import JsonServer, Router
from meshcore.controlplane.alerting import Alerting, add_routes
from meshcore.observe.signals import Signals, labels

PROMTOOL = shutil.which("promtool")

OVERRIDES = """
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: policy-denials}
spec: {disabled: true}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: high-error-rate}
spec: {signal: error_rate, op: ">", threshold: 20%, for: 30s, severity: warning}
---
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: ratings-slow, namespace: team-a}
spec: {signal: p99_ms, match: {service: ratings}, op: ">", threshold: 250ms, for: 1m, labels: {team: a}}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - route:
    - destination: {host: ratings}
"""


@pytest.fixture
def server():
    alerting = Alerting(lambda: [], [])
    alerting.evaluate(Signals(at=0.0, values={"error_rate": {labels(service="ratings"): 0.5}}))
    alerting.evaluate(Signals(at=60.0, values={"error_rate": {labels(service="ratings"): 0.5}}))
    router = Router()
    add_routes(router, alerting=alerting)
    s = JsonServer(router, "127.0.0.1:0", name="test-meshctl-alerts").start()
    yield f"http://{s.address}"
    s.stop()


def test_list_as_table_and_json(server, capsys):
    assert main(["alerts", "--server", server]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["STATE", "SEVERITY", "ALERT", "LABELS", "VALUE"]
    assert out[1].split()[:5] == ["firing", "critical", "high-error-rate", "service=ratings", "50%"]
    assert main(["alerts", "list", "-o", "json", "--server", server, "--state", "firing"]) == 0
    [alert] = json.loads(capsys.readouterr().out)
    assert alert["state"] == "firing" and alert["fired_at"] == "1970-01-01T00:01:00.000Z"


def test_rules_lists_the_defaults(server, capsys):
    assert main(["alerts", "rules", "--server", server]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "SIGNAL", "CONDITION", "FOR", "SEVERITY", "STATE", "ORIGIN"]
    assert any(line.split()[:6] == ["high-error-rate", "error_rate", ">", "5%", "1m", "critical"] for line in lines)
    assert len(lines) == 14


def test_export_merges_files_over_the_defaults(tmp_path, capsys):
    (tmp_path / "rules.yaml").write_text(OVERRIDES)
    out = tmp_path / "meshcore.rules.yml"
    assert main(["alerts", "export", "-f", str(tmp_path / "rules.yaml"), "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "wrote 13 alerting rule(s)" in err
    assert "left out" not in err, "every default rule has a Prometheus series (store_suspect since its gauge)"
    rules = {r["alert"]: r for r in yaml.safe_load(out.read_text())["groups"][0]["rules"]}
    assert "PolicyDenials" not in rules and "RatingsSlow" in rules and "ResourceStoreSuspect" in rules
    assert rules["HighErrorRate"]["expr"].endswith("> 0.2") and rules["HighErrorRate"]["for"] == "30s"
    assert rules["RatingsSlow"]["labels"] == {"team": "a", "severity": "warning"}
    if PROMTOOL:
        res = subprocess.run([PROMTOOL, "check", "rules", str(out)], capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr


def test_export_to_stdout_without_defaults(tmp_path, capsys):
    (tmp_path / "rules.yaml").write_text(OVERRIDES)
    assert main(["alerts", "export", "--no-defaults", "-f", str(tmp_path / "rules.yaml")]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert sorted(r["alert"] for r in doc["groups"][0]["rules"]) == ["HighErrorRate", "RatingsSlow"]


def test_export_reports_invalid_rules_with_their_path(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: telemetry.mesh.io/v1beta1\nkind: AlertRule\nmetadata: {name: x}\n"
                   "spec: {signal: error_rate, op: '>', threshold: 500ms}\n")
    assert main(["alerts", "export", "-f", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "spec.threshold" in err and str(bad) in err


def test_export_from_the_server(server, capsys):
    assert main(["alerts", "export", "--from-server", "--server", server]) == 0
    doc = yaml.safe_load(capsys.readouterr().out)
    assert len(doc["groups"][0]["rules"]) == 13


def test_cli_in_a_subprocess_needs_no_server_for_export(tmp_path):
    import sys

    res = subprocess.run([sys.executable, "-m", "meshcore.cli.alerts", "export"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "MESHCORE_SERVER": "http://127.0.0.1:9"})
    assert res.returncode == 0, res.stderr
    assert Path(tmp_path).exists() and "alert: HighErrorRate" in res.stdout
