"""``meshctl consul import``: entries from files or Consul -> meshcore resource YAML that ``apply`` accepts."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from meshcore.cli.main import main
from meshcore.resources.loader import load_documents, validate_set

DATA = Path(__file__).parent / "testdata"
ROOT = Path(__file__).resolve().parents[2]


def test_import_files_prints_yaml_meshctl_apply_accepts(capsys):
    rc = main(["consul", "import", "-f", str(DATA / "router-reviews.hcl"), "-f", str(DATA / "splitter-reviews.hcl"),
               "-f", str(DATA / "resolver-reviews.json"), "--catalog", f"files:{ROOT / 'examples/bookinfo/consul.d'}"])
    out, err = capsys.readouterr()
    assert rc == 0
    resources = load_documents(out, "import.yaml")
    assert sorted(f"{r.kind}/{r.name}" for r in resources) == ["DestinationRule/consul-reviews",
                                                               "VirtualService/consul-reviews"]
    assert validate_set(resources) == []
    for r in resources:  # imported: meshcore's own now, with where it came from
        labels = dict(r.labels)
        assert "mesh.io/origin" not in labels and labels["mesh.io/imported-from"].startswith("service-")
    assert "# service-router/reviews Routes[2].Destination.IdleTimeout: unsupported" in err


def test_import_from_consul_as_json(consul_http, monkeypatch, capsys):
    consul_http.require_double("writes an entry named api")
    entry = {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "deny"}]}
    assert requests.put(consul_http.address + "/v1/config", data=json.dumps(entry), timeout=10).status_code == 200
    monkeypatch.setenv("CONSUL_HTTP_ADDR", consul_http.address)
    assert main(["consul", "import", "-o", "json", "--intentions-default", "allow"]) == 0
    out = json.loads(capsys.readouterr().out)
    (doc,) = out["resources"]
    assert doc["kind"] == "AuthorizationPolicy" and doc["spec"]["action"] == "DENY"
    assert doc["spec"]["rules"][0]["from"][0]["source"]["principals"] == ["cluster.local/ns/default/sa/web"]
    assert out["findings"] == []


def test_check_lists_findings_and_exits_3(capsys):
    assert main(["consul", "check", "--offline", "-o", "json", "-f", str(DATA / "defaults-ratings.hcl")]) == 3
    findings = json.loads(capsys.readouterr().out)
    assert any((f["entry"], f["field"], f["severity"]) == ("service-defaults/reviews", "MutualTLSMode", "unsupported")
               for f in findings)
    assert main(["consul", "check", "--offline", "-f", str(DATA / "l7-intentions-reviews.hcl")]) == 0
