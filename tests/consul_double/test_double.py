"""The double's Consul semantics, checked over plain HTTP.

Tests taking ``consul_http`` also run against a real Consul when ``CONSUL_HTTP_ADDR`` is set,
which is how the double's fidelity is checked; the rest need the double itself.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests

from tests.consul_double import ConsulDouble

REPO = Path(__file__).resolve().parents[2]


def _h(endpoint) -> dict:
    return {"X-Consul-Token": endpoint.token} if endpoint.token else {}


def _get(endpoint, path: str, **params) -> requests.Response:
    return requests.get(endpoint.address + path, params=params, headers=_h(endpoint), timeout=30)


def _put(endpoint, path: str, body=None, **params) -> requests.Response:
    data = json.dumps(body) if body is not None and not isinstance(body, bytes) else body
    return requests.put(endpoint.address + path, params=params, data=data, headers=_h(endpoint), timeout=30)


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _later(delay: float, fn) -> threading.Thread:
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


# ---------------------------------------------------------------------------- blocking queries
def test_blocking_query_returns_early_on_change(consul_http):
    key = consul_http.kv_prefix + "blocking"
    assert _put(consul_http, f"/v1/kv/{key}", b"one").json() is True
    first = _get(consul_http, f"/v1/kv/{key}")
    index = int(first.headers["X-Consul-Index"])
    assert first.headers["X-Consul-KnownLeader"] == "true"
    assert "X-Consul-LastContact" in first.headers

    _later(0.3, lambda: _put(consul_http, f"/v1/kv/{key}", b"two"))
    started = time.monotonic()
    second = _get(consul_http, f"/v1/kv/{key}", index=index, wait="10s")
    elapsed = time.monotonic() - started

    assert elapsed < 2.0, f"blocking query did not wake on the write ({elapsed:.1f}s)"
    assert int(second.headers["X-Consul-Index"]) > index
    assert base64.b64decode(second.json()[0]["Value"]) == b"two"


def test_blocking_query_times_out_with_same_index(consul_http):
    key = consul_http.kv_prefix + "quiet"
    _put(consul_http, f"/v1/kv/{key}", b"v")
    index = int(_get(consul_http, f"/v1/kv/{key}").headers["X-Consul-Index"])
    started = time.monotonic()
    again = _get(consul_http, f"/v1/kv/{key}", index=index, wait="1s")
    elapsed = time.monotonic() - started
    assert again.status_code == 200
    assert int(again.headers["X-Consul-Index"]) == index
    assert elapsed >= 0.9, "a blocking query with no change must hold for its wait"


def test_health_state_wakes_on_ttl_check_failing(consul_http):
    name = consul_http.unique("ttl")
    _put(consul_http, "/v1/agent/service/register",
         {"Name": name, "Port": 8080, "Check": {"CheckID": f"{name}-ttl", "TTL": "30s", "Status": "passing"}}).raise_for_status()
    index = int(_get(consul_http, "/v1/health/state/any").headers["X-Consul-Index"])
    _later(0.3, lambda: _put(consul_http, f"/v1/agent/check/fail/{name}-ttl", note="down"))
    woke = _get(consul_http, "/v1/health/state/any", index=index, wait="10s")
    assert int(woke.headers["X-Consul-Index"]) > index
    check = next(c for c in woke.json() if c["CheckID"] == f"{name}-ttl")
    assert (check["Status"], check["Output"]) == ("critical", "down")
    assert _get(consul_http, f"/v1/health/service/{name}", passing="1").json() == []


def test_index_parameter_zero_does_not_block(consul_http):
    started = time.monotonic()
    r = _get(consul_http, "/v1/catalog/services", index=0, wait="5s")
    assert time.monotonic() - started < 2.0
    assert int(r.headers["X-Consul-Index"]) >= 1


def test_reset_index_wakes_blocked_queries_with_a_lower_index(consul_http):
    double = consul_http.require_double("reset_index simulates a snapshot restore")
    for i in range(3):
        _put(consul_http, f"/v1/kv/k{i}", b"x")
    index = int(_get(consul_http, "/v1/kv/k2").headers["X-Consul-Index"])
    assert index > 1
    result = {}
    t = threading.Thread(target=lambda: result.update(r=_get(consul_http, "/v1/kv/k0", index=index, wait="10s")))
    t.start()
    time.sleep(0.3)
    assert double.reset_index() == 1
    t.join(timeout=3)
    assert not t.is_alive(), "a snapshot restore must wake blocked queries"
    assert int(result["r"].headers["X-Consul-Index"]) == 1
    assert _get(consul_http, "/v1/kv/k2").json()[0]["ModifyIndex"] == 1


# ---------------------------------------------------------------------------- agent + catalog
def test_sidecar_registration_creates_connect_proxy(consul_http):
    name = consul_http.unique("web")
    body = {
        "name": name, "id": f"{name}-1", "port": 8080, "meta": {"version": "v1"}, "tags": ["blue"],
        "connect": {"sidecar_service": {"proxy": {
            "upstreams": [{"destination_name": "db", "local_bind_port": 9191, "datacenter": "dc1"}]}}},
    }
    _put(consul_http, "/v1/agent/service/register", body).raise_for_status()
    services = _get(consul_http, "/v1/agent/services").json()
    sidecar = services[f"{name}-1-sidecar-proxy"]
    assert sidecar["Kind"] == "connect-proxy"
    assert sidecar["Service"] == f"{name}-sidecar-proxy"
    assert 21000 <= sidecar["Port"] <= 21255
    assert sidecar["Meta"] == {"version": "v1"} and sidecar["Tags"] == ["blue"]
    proxy = sidecar["Proxy"]
    assert (proxy["DestinationServiceName"], proxy["DestinationServiceID"]) == (name, f"{name}-1")
    assert (proxy["LocalServiceAddress"], proxy["LocalServicePort"]) == ("127.0.0.1", 8080)
    assert [(u["DestinationName"], u["LocalBindPort"], u["Datacenter"]) for u in proxy["Upstreams"]] == [("db", 9191, "dc1")]

    connect = _get(consul_http, f"/v1/health/connect/{name}").json()
    assert [e["Service"]["ID"] for e in connect] == [f"{name}-1-sidecar-proxy"]
    catalog = _get(consul_http, f"/v1/catalog/service/{name}-sidecar-proxy").json()
    assert catalog[0]["ServiceKind"] == "connect-proxy"

    _put(consul_http, f"/v1/agent/service/deregister/{name}-1").raise_for_status()
    services = _get(consul_http, "/v1/agent/services").json()
    assert f"{name}-1" not in services and f"{name}-1-sidecar-proxy" not in services


def test_catalog_register_any_node_and_deregister(consul_http):
    node = consul_http.unique("vm")
    _put(consul_http, "/v1/catalog/register", {
        "Node": node, "Address": "10.1.2.3", "NodeMeta": {"rack": "r1"},
        "Service": {"Service": consul_http.unique("api"), "Port": 9000, "Tags": ["a"]},
        "Check": {"CheckID": "api-alive", "Name": "alive", "Status": "passing", "ServiceID": consul_http.unique("api")},
    }).raise_for_status()
    nodes = {n["Node"]: n for n in _get(consul_http, "/v1/catalog/nodes").json()}
    assert nodes[node]["Address"] == "10.1.2.3" and nodes[node]["Meta"] == {"rack": "r1"}
    health = _get(consul_http, f"/v1/health/service/{consul_http.unique('api')}", passing="1").json()
    assert [e["Node"]["Node"] for e in health] == [node]
    _put(consul_http, "/v1/catalog/deregister", {"Node": node}).raise_for_status()
    assert node not in {n["Node"] for n in _get(consul_http, "/v1/catalog/nodes").json()}
    assert _get(consul_http, f"/v1/catalog/service/{consul_http.unique('api')}").json() == []


def test_identical_reregistration_does_not_move_the_index(consul_http):
    name = consul_http.unique("same")
    body = {"Name": name, "Port": 80, "Tags": ["x"]}
    _put(consul_http, "/v1/agent/service/register", body).raise_for_status()
    first = int(_get(consul_http, f"/v1/catalog/service/{name}").headers["X-Consul-Index"])
    _put(consul_http, "/v1/agent/service/register", body).raise_for_status()
    assert int(_get(consul_http, f"/v1/catalog/service/{name}").headers["X-Consul-Index"]) == first


def test_ttl_check_expires_to_critical():
    with ConsulDouble() as double:
        base = double.address
        requests.put(base + "/v1/agent/service/register", json={
            "Name": "w", "Port": 1, "Check": {"CheckID": "w-ttl", "TTL": "300ms", "Status": "passing"}}, timeout=5).raise_for_status()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            checks = requests.get(base + "/v1/agent/checks", timeout=5).json()
            if checks["w-ttl"]["Status"] == "critical":
                break
            time.sleep(0.05)
        assert checks["w-ttl"]["Status"] == "critical" and checks["w-ttl"]["Output"] == "TTL expired"


def test_unknown_ids_answer_404(consul_http):
    assert _put(consul_http, "/v1/agent/service/deregister/" + consul_http.unique("nope")).status_code == 404
    assert _put(consul_http, "/v1/agent/check/pass/" + consul_http.unique("nope")).status_code == 404


# ---------------------------------------------------------------------------- KV + txn
def test_kv_recurse_keys_cas_and_indexes(consul_http):
    p = consul_http.kv_prefix
    assert _get(consul_http, f"/v1/kv/{p}missing").status_code == 404
    assert _put(consul_http, f"/v1/kv/{p}a/x", b"1").json() is True
    assert _put(consul_http, f"/v1/kv/{p}a/y", b"2", flags=42).json() is True
    entries = _get(consul_http, f"/v1/kv/{p}a/", recurse="").json()
    assert [(e["Key"], base64.b64decode(e["Value"])) for e in entries] == [(f"{p}a/x", b"1"), (f"{p}a/y", b"2")]
    assert entries[1]["Flags"] == 42
    assert _get(consul_http, f"/v1/kv/{p}", keys="", separator="/").json() == [f"{p}a/"]
    x = entries[0]
    assert x["CreateIndex"] == x["ModifyIndex"]
    assert _put(consul_http, f"/v1/kv/{p}a/x", b"3", cas=x["ModifyIndex"] - 1).json() is False
    assert _put(consul_http, f"/v1/kv/{p}a/x", b"3", cas=x["ModifyIndex"]).json() is True
    assert _put(consul_http, f"/v1/kv/{p}a/x", b"4", cas=0).json() is False  # cas=0 means create-only
    assert _get(consul_http, f"/v1/kv/{p}a/x", raw="").content == b"3"
    before = int(_get(consul_http, f"/v1/kv/{p}a/", recurse="").headers["X-Consul-Index"])
    assert requests.delete(consul_http.address + f"/v1/kv/{p}a/y", headers=_h(consul_http), timeout=5).json() is True
    after = _get(consul_http, f"/v1/kv/{p}a/", recurse="")
    assert int(after.headers["X-Consul-Index"]) > before, "a delete must not move a prefix's index backwards"


def test_txn_is_all_or_nothing(consul_http):
    p = consul_http.kv_prefix
    _put(consul_http, f"/v1/kv/{p}b", b"old")
    ops = [
        {"KV": {"Verb": "set", "Key": f"{p}a", "Value": _b64("new-a")}},
        {"KV": {"Verb": "cas", "Key": f"{p}b", "Value": _b64("new-b"), "Index": 1}},
    ]
    r = _put(consul_http, "/v1/txn", ops)
    assert r.status_code == 409
    body = r.json()
    assert body["Results"] is None
    assert [e["OpIndex"] for e in body["Errors"]] == [1]
    assert "index is stale" in body["Errors"][0]["What"]
    assert _get(consul_http, f"/v1/kv/{p}a").status_code == 404, "the rolled-back set must not be visible"
    assert _get(consul_http, f"/v1/kv/{p}b", raw="").content == b"old"

    current = _get(consul_http, f"/v1/kv/{p}b").json()[0]["ModifyIndex"]
    ops[1]["KV"]["Index"] = current
    ok = _put(consul_http, "/v1/txn", ops + [{"KV": {"Verb": "get", "Key": f"{p}b"}}])
    assert ok.status_code == 200
    results = ok.json()["Results"]
    assert results[0]["KV"]["Value"] is None and base64.b64decode(results[2]["KV"]["Value"]) == b"new-b"
    assert _get(consul_http, f"/v1/kv/{p}a", raw="").content == b"new-a"


def test_txn_refuses_more_than_128_operations(consul_http):
    ops = [{"KV": {"Verb": "set", "Key": f"{consul_http.kv_prefix}{i}", "Value": _b64("v")}} for i in range(129)]
    r = _put(consul_http, "/v1/txn", ops)
    assert r.status_code == 413
    assert _get(consul_http, f"/v1/kv/{consul_http.kv_prefix}", recurse="").status_code == 404


# ---------------------------------------------------------------------------- ACL
def test_acl_requires_a_token(consul_acl):
    base = consul_acl.address
    denied = requests.get(base + "/v1/catalog/services", timeout=5)
    assert denied.status_code == 403 and denied.text.startswith("Permission denied")
    wrong = requests.get(base + "/v1/catalog/services", headers={"X-Consul-Token": "bogus"}, timeout=5)
    assert (wrong.status_code, wrong.text) == (403, "ACL not found")
    assert requests.get(base + "/v1/catalog/services", headers={"X-Consul-Token": consul_acl.token}, timeout=5).ok
    assert requests.get(base + "/v1/catalog/services", params={"token": consul_acl.token}, timeout=5).ok
    assert requests.get(base + "/v1/catalog/services", headers={"Authorization": f"Bearer {consul_acl.token}"}, timeout=5).ok


def test_acl_read_only_token_cannot_write(consul_acl):
    base, read = consul_acl.address, {"X-Consul-Token": consul_acl.read_token}
    assert requests.get(base + "/v1/kv/x", headers=read, timeout=5).status_code == 404
    refused = requests.put(base + "/v1/kv/x", data=b"1", headers=read, timeout=5)
    assert refused.status_code == 403 and "lacks permission 'key:write'" in refused.text
    read_txn = [{"KV": {"Verb": "get-or-empty", "Key": "x"}}]
    assert requests.put(base + "/v1/txn", json=read_txn, headers=read, timeout=5).status_code == 200


# ---------------------------------------------------------------------------- standalone service
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_runs_as_a_standalone_service():
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tests.consul_double", "--bind", f"127.0.0.1:{port}",
                             "--node", "vm-a", "--acl-token", "secret"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        line = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}" in line, proc.stderr.read() if proc.poll() is not None else line
        me = requests.get(f"http://127.0.0.1:{port}/v1/agent/self", headers={"X-Consul-Token": "secret"}, timeout=5).json()
        assert (me["Config"]["NodeName"], me["Config"]["Datacenter"]) == ("vm-a", "dc1")
        assert requests.get(f"http://127.0.0.1:{port}/v1/agent/self", timeout=5).status_code == 403
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        proc.stdout.close()
        proc.stderr.close()


def test_bad_index_or_wait_is_a_400(consul_http):
    consul_http.require_double("checks the double's parameter validation")
    assert _get(consul_http, "/v1/catalog/services", index="abc").status_code == 400
    assert _get(consul_http, "/v1/catalog/services", index=1, wait="5").status_code == 400  # Go wants a unit


def test_the_double_runs_standalone_with_the_standard_library_only(tmp_path):
    """The lab runs the double on booted hosts from a copy of tests/consul_double (ansible role
    lab_consul_double) with the system Python: no meshcore, no site-packages. An import of anything else
    at module level leaves the lab without Consul (this happened once)."""
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    here = Path(__file__).resolve().parent
    (tmp_path / "tests" / "consul_double").mkdir(parents=True)
    (tmp_path / "tests" / "lab").mkdir()
    shutil.copy(here.parent / "__init__.py", tmp_path / "tests")
    for f in [*here.glob("_*.py"), here / "server.py"]:
        shutil.copy(f, tmp_path / "tests" / "consul_double")
    for f in ("__init__.py", "consul_stand_in.py"):
        shutil.copy(here.parent / "lab" / f, tmp_path / "tests" / "lab")
    res = subprocess.run([sys.executable, "-S", "-c", "import tests.lab.consul_stand_in"], cwd=tmp_path, env={},
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
