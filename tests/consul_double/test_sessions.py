"""Sessions and KV locks of the double, over plain HTTP (``consul_http`` tests also run against a real Consul)."""

from __future__ import annotations

import base64
import json
import threading
import time

import requests

from tests.consul_double import ConsulDouble
from tests.consul_double._polling import wait_for as _wait_for


def _h(endpoint) -> dict:
    return {"X-Consul-Token": endpoint.token} if endpoint.token else {}


def _put(endpoint, path: str, body=None, **params) -> requests.Response:
    data = json.dumps(body) if body is not None and not isinstance(body, bytes) else body
    return requests.put(endpoint.address + path, params=params, data=data, headers=_h(endpoint), timeout=30)


def _get(endpoint, path: str, **params) -> requests.Response:
    return requests.get(endpoint.address + path, params=params, headers=_h(endpoint), timeout=30)


def _session(endpoint, **body) -> str:
    r = _put(endpoint, "/v1/session/create", body)
    assert r.status_code == 200, r.text
    return r.json()["ID"]




def test_create_info_list_node_and_destroy(consul_http):
    sid = _session(consul_http, Name=consul_http.unique("leader"), LockDelay="5s", TTL="30s", Behavior="release")
    try:
        info = _get(consul_http, f"/v1/session/info/{sid}")
        assert info.status_code == 200 and int(info.headers["X-Consul-Index"]) >= 1
        [s] = info.json()
        assert s["ID"] == sid and s["Name"] == consul_http.unique("leader")
        assert s["LockDelay"] == 5_000_000_000 and s["TTL"] == "30s" and s["Behavior"] == "release"
        assert s["NodeChecks"] == ["serfHealth"] and s["Node"] == consul_http.node
        assert sid in [x["ID"] for x in _get(consul_http, "/v1/session/list").json()]
        assert sid in [x["ID"] for x in _get(consul_http, f"/v1/session/node/{consul_http.node}").json()]
        [renewed] = _put(consul_http, f"/v1/session/renew/{sid}").json()
        assert renewed["ID"] == sid
    finally:
        assert _put(consul_http, f"/v1/session/destroy/{sid}").json() is True
    assert _get(consul_http, f"/v1/session/info/{sid}").json() == []
    assert _put(consul_http, f"/v1/session/renew/{sid}").status_code == 404


def test_acquire_release_lock_index_and_session_field(consul_http):
    key = consul_http.kv_prefix + "leader"
    a, b = _session(consul_http), _session(consul_http)
    try:
        assert _put(consul_http, f"/v1/kv/{key}", b"replica-a", acquire=a).json() is True
        assert _put(consul_http, f"/v1/kv/{key}", b"replica-b", acquire=b).json() is False  # held by a
        assert _put(consul_http, f"/v1/kv/{key}", b"replica-a2", acquire=a).json() is True  # holder: value only
        [entry] = _get(consul_http, f"/v1/kv/{key}").json()
        assert entry["Session"] == a and entry["LockIndex"] == 1
        assert base64.b64decode(entry["Value"]) == b"replica-a2"
        assert _put(consul_http, f"/v1/kv/{key}", b"", release=b).json() is False  # not the holder
        assert _put(consul_http, f"/v1/kv/{key}", b"free", release=a).json() is True
        [entry] = _get(consul_http, f"/v1/kv/{key}").json()
        assert "Session" not in entry or not entry["Session"]
        # a release sets no lock-delay: b acquires at once, and the lock index counts acquisitions
        assert _put(consul_http, f"/v1/kv/{key}", b"replica-b", acquire=b).json() is True
        [entry] = _get(consul_http, f"/v1/kv/{key}").json()
        assert entry["Session"] == b and entry["LockIndex"] == 2
        assert _put(consul_http, f"/v1/kv/{key}", b"x", acquire="00000000-0000-0000-0000-000000000000").status_code == 500
    finally:
        for sid in (a, b):
            _put(consul_http, f"/v1/session/destroy/{sid}")


def test_destroy_releases_keys_with_the_lock_delay(consul_http):
    key = consul_http.kv_prefix + "leader"
    a = _session(consul_http, LockDelay="2s")
    b = _session(consul_http, LockDelay="0s")
    try:
        assert _put(consul_http, f"/v1/kv/{key}", b"a", acquire=a).json() is True
        _put(consul_http, f"/v1/session/destroy/{a}")
        [entry] = _get(consul_http, f"/v1/kv/{key}").json()
        assert not entry.get("Session") and base64.b64decode(entry["Value"]) == b"a"  # release keeps the value
        started = time.monotonic()
        assert _put(consul_http, f"/v1/kv/{key}", b"b", acquire=b).json() is False  # lock-delay
        _wait_for(lambda: _put(consul_http, f"/v1/kv/{key}", b"b", acquire=b).json() is True)
        assert time.monotonic() - started >= 1.5
    finally:
        _put(consul_http, f"/v1/session/destroy/{b}")


def test_delete_behavior_deletes_held_keys(consul_http):
    key = consul_http.kv_prefix + "ephemeral"
    sid = _session(consul_http, Behavior="delete", LockDelay="0s")
    assert _put(consul_http, f"/v1/kv/{key}", b"x", acquire=sid).json() is True
    _put(consul_http, f"/v1/session/destroy/{sid}")
    assert _get(consul_http, f"/v1/kv/{key}").status_code == 404


def test_blocking_kv_read_wakes_when_the_holder_is_invalidated(consul_http):
    key = consul_http.kv_prefix + "leader"
    sid = _session(consul_http, LockDelay="0s")
    assert _put(consul_http, f"/v1/kv/{key}", b"a", acquire=sid).json() is True
    first = _get(consul_http, f"/v1/kv/{key}")
    index = int(first.headers["X-Consul-Index"])
    threading.Timer(0.3, lambda: _put(consul_http, f"/v1/session/destroy/{sid}")).start()
    started = time.monotonic()
    second = _get(consul_http, f"/v1/kv/{key}", index=index, wait="20s")
    assert time.monotonic() - started < 10
    assert int(second.headers["X-Consul-Index"]) > index
    assert not second.json()[0].get("Session")


def test_bad_requests(consul_http):
    assert _put(consul_http, "/v1/session/create", {"Behavior": "explode"}).status_code == 400
    assert _put(consul_http, "/v1/session/create", {"TTL": "1s"}).status_code == 400  # under session_ttl_min
    assert _put(consul_http, "/v1/session/create", {"NodeChecks": ["no-such-check"]}).status_code == 500


def test_a_critical_service_check_invalidates_and_blocks_sessions(consul_http):
    double = consul_http.require_double("sets a check's status")
    sid_name = consul_http.unique("replica")
    _put(consul_http, "/v1/agent/service/register",
         {"Name": "meshcore-control-plane", "ID": sid_name, "Port": 1, "Check": {"TTL": "30s", "Status": "passing"}})
    check = f"service:{sid_name}"
    sid = _session(consul_http, LockDelay="0s", ServiceChecks=[{"ID": check}])
    key = consul_http.kv_prefix + "leader"
    assert _put(consul_http, f"/v1/kv/{key}", b"a", acquire=sid).json() is True
    double.set_check_status(check, "critical", "replica down")
    assert _get(consul_http, f"/v1/session/info/{sid}").json() == []
    assert not _get(consul_http, f"/v1/kv/{key}").json()[0].get("Session")
    r = _put(consul_http, "/v1/session/create", {"ServiceChecks": [{"ID": check}]})
    assert r.status_code == 500 and "critical" in r.text


def test_ttl_expiry_invalidates_within_twice_the_ttl():
    with ConsulDouble(session_ttl_min=0.5) as double:
        base = double.address
        sid = requests.put(base + "/v1/session/create", data=json.dumps({"TTL": "1s", "LockDelay": "0s"}),
                           timeout=10).json()["ID"]
        assert requests.put(base + "/v1/kv/leader", data=b"a", params={"acquire": sid}, timeout=10).json() is True
        started = time.monotonic()
        for _ in range(4):  # renewals keep it alive past its TTL
            time.sleep(0.5)
            assert requests.put(base + f"/v1/session/renew/{sid}", timeout=10).status_code == 200
        assert requests.get(base + f"/v1/session/info/{sid}", timeout=10).json() != []
        renewed = time.monotonic()
        _wait_for(lambda: requests.get(base + f"/v1/session/info/{sid}", timeout=10).json() == [])
        gone = time.monotonic() - renewed
        assert 1.0 <= gone <= 2.0 + 1.0, gone  # at least the TTL, at most 2 x TTL (+ the machine's slack)
        assert time.monotonic() - started > 2.0
        assert not requests.get(base + "/v1/kv/leader", timeout=10).json()[0].get("Session")


def test_txn_lock_unlock_and_check_session(consul_http):
    key = consul_http.kv_prefix + "txn-lock"
    sid = _session(consul_http, LockDelay="0s")
    try:
        value = base64.b64encode(b"v").decode()
        r = _put(consul_http, "/v1/txn", [{"KV": {"Verb": "lock", "Key": key, "Value": value, "Session": sid}}])
        assert r.status_code == 200, r.text
        r = _put(consul_http, "/v1/txn", [{"KV": {"Verb": "check-session", "Key": key, "Session": sid}},
                                          {"KV": {"Verb": "set", "Key": key + "/state", "Value": value}}])
        assert r.status_code == 200, r.text
        other = _session(consul_http)
        r = _put(consul_http, "/v1/txn", [{"KV": {"Verb": "check-session", "Key": key, "Session": other}},
                                          {"KV": {"Verb": "set", "Key": key + "/fenced", "Value": value}}])
        assert r.status_code == 409
        assert _get(consul_http, f"/v1/kv/{key}/fenced").status_code == 404
        _put(consul_http, f"/v1/session/destroy/{other}")
        r = _put(consul_http, "/v1/txn", [{"KV": {"Verb": "unlock", "Key": key, "Value": value, "Session": sid}}])
        assert r.status_code == 200, r.text
        assert not _get(consul_http, f"/v1/kv/{key}").json()[0].get("Session")
    finally:
        _put(consul_http, f"/v1/session/destroy/{sid}")
