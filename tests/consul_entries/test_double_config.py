"""The double's ``/v1/config`` endpoints, as Consul documents them (also run against a real Consul with
``CONSUL_HTTP_ADDR``: every test names its entries with ``consul_http.unique`` and deletes them)."""

from __future__ import annotations

import json
import threading
import time

import requests


def _h(ep) -> dict:
    return {"X-Consul-Token": ep.token} if ep.token else {}


def _put(ep, entry: dict, **params) -> requests.Response:
    return requests.put(ep.address + "/v1/config", params=params, data=json.dumps(entry), headers=_h(ep), timeout=30)


def _get(ep, path: str, **params) -> requests.Response:
    return requests.get(ep.address + path, params=params, headers=_h(ep), timeout=30)


def _delete(ep, kind: str, name: str, **params) -> requests.Response:
    return requests.delete(f"{ep.address}/v1/config/{kind}/{name}", params=params, headers=_h(ep), timeout=30)


def test_write_get_list_delete_with_indexes(consul_http):
    name = consul_http.unique("web")
    r = _put(consul_http, {"Kind": "service-defaults", "Name": name, "Protocol": "http"})
    assert r.status_code == 200 and r.json() is True
    got = _get(consul_http, f"/v1/config/service-defaults/{name}")
    assert got.status_code == 200
    entry = got.json()
    assert entry["Kind"] == "service-defaults" and entry["Name"] == name and entry["Protocol"] == "http"
    assert entry["CreateIndex"] == entry["ModifyIndex"] > 0
    assert int(got.headers["X-Consul-Index"]) >= entry["ModifyIndex"]
    listed = _get(consul_http, "/v1/config/service-defaults")
    assert name in [e["Name"] for e in listed.json()]
    try:
        # an update keeps CreateIndex and moves ModifyIndex
        assert _put(consul_http, {"Kind": "service-defaults", "Name": name, "Protocol": "grpc"}).json() is True
        again = _get(consul_http, f"/v1/config/service-defaults/{name}").json()
        assert again["CreateIndex"] == entry["CreateIndex"] and again["ModifyIndex"] > entry["ModifyIndex"]
        assert again["Protocol"] == "grpc"
    finally:
        assert _delete(consul_http, "service-defaults", name).status_code == 200
    missing = _get(consul_http, f"/v1/config/service-defaults/{name}")
    assert missing.status_code == 404 and "Config entry not found" in missing.text


def test_cas_write_and_delete(consul_http):
    name = consul_http.unique("api")
    entry = {"Kind": "service-defaults", "Name": name, "Protocol": "http"}
    assert _put(consul_http, entry, cas=0).json() is True
    assert _put(consul_http, entry, cas=0).json() is False  # exists already
    index = _get(consul_http, f"/v1/config/service-defaults/{name}").json()["ModifyIndex"]
    assert _put(consul_http, dict(entry, Protocol="tcp"), cas=index + 1000).json() is False
    assert _get(consul_http, f"/v1/config/service-defaults/{name}").json()["Protocol"] == "http"
    assert _put(consul_http, dict(entry, Protocol="tcp"), cas=index).json() is True
    index2 = _get(consul_http, f"/v1/config/service-defaults/{name}").json()["ModifyIndex"]
    assert _delete(consul_http, "service-defaults", name, cas=index).json() is False  # stale
    assert _get(consul_http, f"/v1/config/service-defaults/{name}").status_code == 200
    assert _delete(consul_http, "service-defaults", name, cas=index2).json() is True
    assert _get(consul_http, f"/v1/config/service-defaults/{name}").status_code == 404


def test_blocking_list_wakes_on_write(consul_http):
    name = consul_http.unique("blocky")
    first = _get(consul_http, "/v1/config/service-resolver")
    index = int(first.headers["X-Consul-Index"])
    got: dict = {}

    def block() -> None:
        t0 = time.monotonic()
        r = _get(consul_http, "/v1/config/service-resolver", index=index, wait="20s")
        got.update(elapsed=time.monotonic() - t0, index=int(r.headers["X-Consul-Index"]),
                   names=[e["Name"] for e in r.json()])

    t = threading.Thread(target=block)
    t.start()
    time.sleep(0.3)  # let the query block (a late start would return at once: still correct, just not blocking)
    try:
        assert _put(consul_http, {"Kind": "service-resolver", "Name": name, "ConnectTimeout": "3s"}).json() is True
        t.join(25)
        assert got["index"] > index and name in got["names"] and got["elapsed"] < 15
        # a wait that passes returns the same index
        idx = got["index"]
        t0 = time.monotonic()
        r = _get(consul_http, "/v1/config/service-resolver", index=idx, wait="300ms")
        assert int(r.headers["X-Consul-Index"]) == idx and time.monotonic() - t0 >= 0.25
    finally:
        _delete(consul_http, "service-resolver", name)


def test_decoding_normalizes_keys_and_intention_precedence(consul_http):
    name = consul_http.unique("db")
    body = {"kind": "service-intentions", "name": name,
            "sources": [{"name": "web", "action": "allow"}, {"name": "*", "action": "deny"}]}
    assert _put(consul_http, body).status_code == 200
    try:
        entry = _get(consul_http, f"/v1/config/service-intentions/{name}").json()
        by_name = {s["Name"]: s for s in entry["Sources"]}
        assert by_name["web"]["Precedence"] == 9 and by_name["*"]["Precedence"] == 8
        assert by_name["web"]["Action"] == "allow" and by_name["web"]["Type"] == "consul"
    finally:
        _delete(consul_http, "service-intentions", name)
    resolver = {"Kind": "service-resolver", "Name": name, "default_subset": "v1",
                "subsets": {"v1": {"filter": "Service.Meta.version == v1"}}, "Meta": {"owner_team": "x"}}
    assert _put(consul_http, resolver).status_code == 200
    try:
        entry = _get(consul_http, f"/v1/config/service-resolver/{name}").json()
        assert entry["DefaultSubset"] == "v1" and entry["Subsets"] == {"v1": {"Filter": "Service.Meta.version == v1"}}
        assert entry["Meta"] == {"owner_team": "x"}
    finally:
        _delete(consul_http, "service-resolver", name)


def test_invalid_entries_are_refused(consul_http):
    assert _put(consul_http, {"Kind": "no-such-kind", "Name": "x"}).status_code in (400, 500)
    assert _put(consul_http, {"Kind": "proxy-defaults", "Name": "other"}).status_code in (400, 500)
    both = {"Kind": "service-intentions", "Name": consul_http.unique("x"),
            "Sources": [{"Name": "web", "Action": "allow", "Permissions": [{"Action": "deny", "HTTP": {"PathExact": "/"}}]}]}
    assert _put(consul_http, both).status_code in (400, 500)


def test_index_reset_lowers_config_entry_indexes(consul_http):
    double = consul_http.require_double("reset_index")
    for i in range(3):
        _put(consul_http, {"Kind": "service-defaults", "Name": f"s{i}", "Protocol": "http"})
    double.reset_index(1)
    r = _get(consul_http, "/v1/config/service-defaults")
    assert int(r.headers["X-Consul-Index"]) == 1 and all(e["ModifyIndex"] == 1 for e in r.json())


def test_acl_tokens_guard_config_entries(consul_acl):
    entry = {"Kind": "service-intentions", "Name": "api", "Sources": [{"Name": "web", "Action": "allow"}]}
    anonymous = requests.put(consul_acl.address + "/v1/config", data=json.dumps(entry), timeout=10)
    assert anonymous.status_code == 403 and "Permission denied" in anonymous.text
    read = {"X-Consul-Token": consul_acl.read_token}
    assert requests.put(consul_acl.address + "/v1/config", data=json.dumps(entry), headers=read,
                        timeout=10).status_code == 403
    assert _put(consul_acl, entry).json() is True  # the management token
    listed = requests.get(consul_acl.address + "/v1/config/service-intentions", headers=read, timeout=10)
    assert listed.status_code == 200 and [e["Name"] for e in listed.json()] == ["api"]
    assert requests.delete(consul_acl.address + "/v1/config/service-intentions/api", headers=read,
                           timeout=10).status_code == 403
