"""``meshctl analyze``: each check finds its problem (with code, resource, path) and stays quiet on a clean set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from meshcore.analyze import ERROR, WARNING, analyze
from meshcore.catalog.files import FileCatalogSource
from meshcore.resources import load_documents

from tests.policies._catalog import write_catalog

DR = """apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  subsets: [{name: v1, labels: {version: v1}}, {name: v9, labels: {version: v9}}]
---
"""
VS = """apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: api}
spec:
  hosts: [api]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: api, subset: v1}}]
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: api}}]
  - route: [{destination: {host: api}}]
  - route: [{destination: {host: nowhere}}]
---
"""


def ap(name, spec, namespace="default"):
    return (f"apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\n"
            f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n---\n")


@pytest.fixture
def catalog(tmp_path):
    write_catalog(tmp_path, [{"name": "web", "meta": {}}, {"name": "api"}, {"name": "db", "protocol": "tcp"}])
    # web calls api (a declared upstream) and "ghost" (no such service)
    path = tmp_path / "n1" / "web.json"
    data = json.loads(path.read_text())
    data["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"] = [
        {"destination_name": "api", "local_bind_port": 18001}, {"destination_name": "ghost", "local_bind_port": 18002}]
    path.write_text(json.dumps(data))
    return FileCatalogSource(tmp_path).poll(None, 0).catalog


def codes(findings):
    return sorted((f.code, f.resource, f.path) for f in findings)


def test_each_check_finds_its_problem(catalog):
    text = (DR + VS + ap("nobody", "{selector: {matchLabels: {app: nobody}}}")
            + ap("wrong-port", "{selector: {matchLabels: {app: api}}, rules: [{to: [{operation: {ports: ['1']}}]}]}")
            + ap("tcp-http", "{selector: {matchLabels: {app: db}}, rules: [{to: [{operation: {methods: [GET]}}]}]}"))
    found = analyze(load_documents(text, "x.yaml"), catalog)
    got = codes(found)
    assert ("MC0102", "VirtualService/default/api", "spec.http[3].route[0].destination.host") in got
    assert ("MC0103", "DestinationRule/default/api", "spec.subsets[1].labels") in got
    assert ("MC0104", "AuthorizationPolicy/default/nobody", "spec.selector.matchLabels") in got
    assert ("MC0201", "VirtualService/default/api", "spec.http[1].match[0]") in got
    assert ("MC0201", "VirtualService/default/api", "spec.http[3]") in got
    assert ("MC0301", "AuthorizationPolicy/default/wrong-port", "spec.rules[0].to[0].operation.ports") in got
    assert ("MC0302", "AuthorizationPolicy/default/tcp-http", "spec.rules[0].to[0].operation.methods") in got
    assert any(c == "MC0402" and "ghost" in p for c, _, p in got)
    assert found[0].severity == ERROR  # errors first
    assert all(f.suggestion for f in found)


def test_unknown_hosts_and_unused_routes(catalog):
    text = VS.replace("hosts: [api]", "hosts: [api, nothing]").replace("{host: nowhere}", "{host: api}")
    got = codes(analyze(load_documents(text, "x.yaml"), catalog))
    assert ("MC0101", "VirtualService/default/api", "spec.hosts[1]") in got
    text = VS.replace("hosts: [api]", "hosts: [db]").replace("{host: nowhere}", "{host: db}").replace(
        "{host: api, subset: v1}", "{host: db}").replace("{host: api}", "{host: db}")
    got = codes(analyze(load_documents(text, "x.yaml"), catalog))
    assert ("MC0401", "VirtualService/default/api", "spec.hosts[0]") in got  # nobody declares db as an upstream
    # Bound to a Gateway only: its hosts are external names, no catalog services.
    text = VS.replace("hosts: [api]", "hosts: [shop.example.com]\n  gateways: [front]").replace("{host: nowhere}", "{host: api}")
    got = codes(analyze(load_documents(text, "x.yaml"), catalog))
    assert not [c for c in got if c[0] == "MC0101"]


def test_what_apply_refuses_is_an_error(catalog):
    text = DR + VS.replace("{host: nowhere}", "{host: api, subset: v7}")
    [f] = [f for f in analyze(load_documents(text, "x.yaml"), catalog) if f.code == "MC0001"]
    assert f.severity == ERROR and f.path == "spec.http[3].route[0].destination.subset"


def test_a_clean_set_has_no_findings(catalog):
    clean = (DR.replace(", {name: v9, labels: {version: v9}}", "")
             + "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: api}\n"
               "spec: {hosts: [api], http: [{route: [{destination: {host: api, subset: v1}}]}]}\n---\n"
             + ap("allow-web", "{selector: {matchLabels: {app: api}}, rules: [{}]}"))
    found = [f for f in analyze(load_documents(clean, "x.yaml"), catalog) if f.code != "MC0402"]
    assert found == []


def _meshctl(*args, cwd):
    return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=60)


def test_cli_exit_status_and_json(tmp_path, catalog):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    cat = f"files:{tmp_path}"
    warn = tmp_path / "warn.yaml"
    warn.write_text(ap("nobody", "{selector: {matchLabels: {app: nobody}}}"))
    out = _meshctl("analyze", "--offline", "--catalog", cat, "-f", str(warn), "-o", "json", cwd=root)
    assert out.returncode == 0, out.stderr
    data = json.loads(out.stdout)
    assert {d["code"] for d in data} >= {"MC0104"} and all(d["severity"] == WARNING for d in data)
    err = tmp_path / "err.yaml"
    err.write_text(VS)
    out = _meshctl("analyze", "--offline", "--catalog", cat, "-f", str(err), cwd=root)
    assert out.returncode == 1 and "MC0102" in out.stdout


def test_validate_runs_the_cross_resource_checks_apply_runs(tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    f = tmp_path / "two.yaml"
    f.write_text(VS.replace("{host: nowhere}", "{host: api, subset: v7}"))
    out = _meshctl("validate", "-f", str(f), cwd=root)
    assert out.returncode == 1 and "spec.http[0].route[0].destination.subset" in out.stderr


def test_competing_peer_authentications(catalog):
    def pa(name, ns="default", selector=""):
        sel = f"selector: {{matchLabels: {selector}}}, " if selector else ""
        return (f"apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{name: {name}, "
                f"namespace: {ns}}}\nspec: {{{sel}mtls: {{mode: STRICT}}}}\n---\n")

    text = (pa("a", "meshcore-system") + pa("b", "meshcore-system") + pa("c") + pa("w1", selector="{app: api}")
            + pa("w2", selector="{app: api}"))
    got = codes(f for f in analyze(load_documents(text, "x.yaml"), catalog) if f.code == "MC0105")
    assert got == [("MC0105", "PeerAuthentication/default/w2", "spec.selector.matchLabels"),
                   ("MC0105", "PeerAuthentication/meshcore-system/b", "metadata.name")]


def test_gateways_that_serve_nothing():
    bookinfo = FileCatalogSource(Path(__file__).resolve().parents[2] / "examples" / "bookinfo" / "consul.d")
    catalog = bookinfo.poll(None, 0).catalog
    text = ("apiVersion: networking.mesh.io/v1beta1\nkind: Gateway\nmetadata: {name: istio-style}\n"
            "spec: {selector: {istio: ingressgateway, app: nope}, servers: [{port: {number: 8081, protocol: HTTP}, hosts: ['*']}]}\n"
            "---\napiVersion: networking.mesh.io/v1beta1\nkind: Gateway\nmetadata: {name: ours}\n"
            "spec: {selector: {app: ingress-gateway}, servers: [{port: {number: 8082, protocol: HTTP}, hosts: ['*']}]}\n"
            "---\napiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\nmetadata: {name: front}\n"
            "spec: {hosts: ['*'], gateways: [ours, other/missing], http: [{route: [{destination: {host: productpage}}]}]}\n")
    got = codes(analyze(load_documents(text, "x.yaml"), catalog))
    assert ("MC0106", "Gateway/default/istio-style", "spec.selector") in got
    assert not [c for c in got if c[0] == "MC0106" and c[1] == "Gateway/default/ours"]
    assert ("MC0107", "VirtualService/default/front", "spec.gateways[1]") in got
    assert not [c for c in got if c[0] == "MC0107" and c[2] == "spec.gateways[0]"]
def test_service_entry_hosts_are_known_hosts(catalog):
    """A ServiceEntry host is a destination like a catalog service: no MC0101/MC0102 for routing to it."""
    text = """apiVersion: networking.mesh.io/v1beta1
kind: ServiceEntry
metadata: {name: ext}
spec: {hosts: [api.example.com], ports: [{number: 80, name: http, protocol: HTTP}], resolution: DNS}
---
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: ext}
spec: {hosts: [api.example.com], http: [{route: [{destination: {host: api.example.com}}]}]}
"""
    found = {(f.code, f.path) for f in analyze(load_documents(text, "x.yaml"), catalog)}
    assert not {code for code, _ in found} & {"MC0001", "MC0101", "MC0102"}, found


def test_a_delegate_rule_that_fits_no_root_match_is_reported(catalog):
    vs = "apiVersion: networking.mesh.io/v1beta1\nkind: VirtualService\n"
    text = (vs + "metadata: {name: api}\nspec:\n  hosts: [api]\n  http:\n"
            "  - match: [{uri: {prefix: /v1}}]\n    delegate: {name: api-v1}\n---\n"
            + vs + "metadata: {name: api-v1}\nspec:\n  http:\n"
            "  - match: [{uri: {prefix: /v1/users}}]\n    route: [{destination: {host: api}}]\n"
            "  - match: [{uri: {prefix: /v2}}]\n    route: [{destination: {host: api}}]\n"
            "  - route: [{destination: {host: api}}]\n")
    found = [f for f in analyze(load_documents(text, "x.yaml"), catalog) if f.code == "MC0202"]
    assert [(f.resource, f.path) for f in found] == [("VirtualService/default/api-v1", "spec.http[1].match")]
    assert "VirtualService/default/api spec.http[0]" in found[0].message and found[0].severity == WARNING
