"""Finding 11 (KV half): when Consul loses its data, the resources the control plane applied are held, reported
and restorable, never silently dropped."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from meshcore.ca import generate_kek_file
from meshcore.catalog.consul import ConsulSettings
from meshcore.errors import StoreError
from meshcore.resources._last_applied import FILE_NAME, LastApplied
from meshcore.resources.consul_store import ConsulKVStore
from meshcore.resources.model import Resource
from meshcore.resources.store import StoreHealth, store_health

WAIT = 30.0


def _policy(name: str, methods=("GET",)) -> Resource:
    return Resource("security.mesh.io/v1beta1", "AuthorizationPolicy", name, "default",
                    {"selector": {"matchLabels": {"app": "frontend"}}, "action": "ALLOW",
                     "rules": [{"to": [{"operation": {"methods": list(methods)}}]}]})


def _wipe(consul_http, prefix: str) -> None:
    """What Consul restarted with an empty data directory looks like to a client: the prefix is gone."""
    requests.delete(f"{consul_http.address}/v1/kv/{prefix}", params={"recurse": ""}, headers=consul_http._headers(),
                    timeout=10).raise_for_status()


@pytest.fixture
def kek(tmp_path):
    return generate_kek_file(tmp_path / "kek")


def _store(consul_http, tmp_path, kek, prefix=None) -> ConsulKVStore:
    return ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=prefix or consul_http.kv_prefix + "r/",
                         last_applied=LastApplied(tmp_path / FILE_NAME, kek))


def test_emptied_kv_is_held_reported_and_restored(consul_http, tmp_path, kek, caplog):
    store = _store(consul_http, tmp_path, kek)
    applied = [_policy("allow-get"), _policy("allow-post", ("POST",))]
    store.apply(applied)
    _, index = store.watch(None, 0)
    assert store.health().state == "ok" and store.health().held_generation >= 1
    assert (tmp_path / FILE_NAME).read_bytes().startswith(b"MESHCORE-SEALED-1\n")  # sealed, not clear text
    assert b"allow-get" not in (tmp_path / FILE_NAME).read_bytes()

    _wipe(consul_http, store.prefix)
    with caplog.at_level(logging.ERROR, logger="meshcore.resources.consul"):
        resources, _ = store.watch(index, 5)
    assert resources == applied  # held: not the empty set Consul now has
    health = store.health()
    assert health.state == "suspect" and health.resources == 0 and health.held_resources == 2
    assert "meshctl store restore" in health.message and "lost resources" in health.message
    assert [r.levelname for r in caplog.records if "suspect" in r.getMessage()] == ["ERROR"]
    with pytest.raises(StoreError, match="suspect"):
        store.apply([_policy("new")])  # an apply now would make the loss permanent

    # a restarted control plane (same state directory) holds it too: the copy is on disk
    restarted = _store(consul_http, tmp_path, kek, prefix=store.prefix)
    assert restarted.list() == applied and restarted.health().state == "suspect"

    after = restarted.restore()
    assert after.state == "ok" and after.resources == 2 and after.generation > health.held_generation
    raw = ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=store.prefix)  # no copy: KV as it is
    assert raw.list() == applied
    restarted.apply([_policy("new")])  # writable again
    assert [r.name for r in restarted.list()] == ["allow-get", "allow-post", "new"]


def test_generation_going_backwards_is_suspect(consul_http, tmp_path, kek):
    """Consul restored from an older snapshot: KV has resources, but an older generation of them."""
    store = _store(consul_http, tmp_path, kek)
    store.apply([_policy("a")])
    gen_key = store.prefix + ".meshcore/generation"
    old_generation = requests.get(f"{consul_http.address}/v1/kv/{gen_key}", params={"raw": ""},
                                  headers=consul_http._headers(), timeout=10).content
    store.apply([_policy("b")])
    store.delete([_policy("a").key])
    # the "snapshot": generation 1 with only a
    _wipe(consul_http, store.prefix)
    consul_http.put(f"/v1/kv/{gen_key}", None)
    requests.put(f"{consul_http.address}/v1/kv/{gen_key}", data=old_generation, headers=consul_http._headers(),
                 timeout=10).raise_for_status()
    requests.put(f"{consul_http.address}/v1/kv/{store.prefix}AuthorizationPolicy/default/a",
                 data=_policy("a").canonical_json(), headers=consul_http._headers(), timeout=10).raise_for_status()
    assert [r.name for r in store.list()] == ["b"]
    assert store.health().state == "suspect"


def test_changes_by_others_and_hand_edits_are_not_suspect(consul_http, tmp_path, kek):
    store = _store(consul_http, tmp_path, kek)
    other = ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=store.prefix)  # another replica
    store.apply([_policy("a"), _policy("b")])
    other.delete([_policy("a").key, _policy("b").key])  # deleting everything through meshcore is not a loss
    assert store.list() == [] and store.health().state == "ok"
    other.apply([_policy("c")])
    assert [r.name for r in store.list()] == ["c"] and store.health().held_resources == 1


def test_health_for_stores_without_one():
    class Plain:
        def list(self):
            return []

    assert store_health(Plain()) == StoreHealth(backend="Plain", location="")
    assert StoreHealth.from_json(StoreHealth(backend="consul", location="x", state="suspect",
                                             suspect_since=1.5).to_json()).state == "suspect"


def test_control_plane_holds_policies_when_consul_loses_kv(consul_http, tmp_path, monkeypatch):
    """The whole path: a running control plane, Consul KV emptied under it; the served policy set stays, the
    operator API says suspect, `meshctl store restore` puts it back in KV."""
    consul_http.require_double("empties the double's KV")
    from meshcore.cli.main import main as meshctl
    from meshcore.controlplane.daemon import ControlPlane, Settings

    from ..e2e._topology import free_port, write_catalog

    for k, v in consul_http.env().items():
        monkeypatch.setenv(k, v)
    write_catalog(tmp_path / "catalog")
    kek = generate_kek_file(tmp_path / "kek")
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    plane = ControlPlane(Settings(state_dir=tmp_path / "state", catalog=f"files:{tmp_path / 'catalog'}", store="consul",
                                  xds_bind=f"127.0.0.1:{ports['xds']}", api_bind=f"127.0.0.1:{ports['api']}",
                                  http_bind=f"127.0.0.1:{ports['http']}"), kek)
    plane.start()
    try:
        assert plane.engine.ready.wait(WAIT)
        url = f"http://127.0.0.1:{ports['http']}"
        headers = {"Authorization": f"Bearer {(tmp_path / 'state' / 'admin.token').read_text().strip()}"}
        policy = _policy("frontend-allow-get")
        r = requests.post(url + "/v1/resources", headers=headers, timeout=30,
                          json={"files": [{"name": "p.yaml", "content": policy.canonical_json()}]})
        assert r.status_code == 200, r.text

        def served() -> list[str]:
            snap = plane.engine.snapshot
            return sorted(str(res.key) for res in (snap.resources if snap else ()))

        deadline = time.monotonic() + WAIT
        while served() != [str(policy.key)]:
            assert time.monotonic() < deadline, f"policy never served: {served()}"
            time.sleep(0.05)

        _wipe(consul_http, "meshcore/resources/")  # Consul lost its data
        deadline = time.monotonic() + WAIT
        while requests.get(url + "/v1/store", headers=headers, timeout=10).json()["state"] != "suspect":
            assert time.monotonic() < deadline, "the store never noticed the loss"
            time.sleep(0.05)
        assert served() == [str(policy.key)]  # still enforced
        listed = requests.get(url + "/v1/resources", headers=headers, timeout=10).json()
        assert [d["metadata"]["name"] for d in listed] == ["frontend-allow-get"]
        refused = requests.post(url + "/v1/resources", headers=headers, timeout=30,
                                json={"files": [{"name": "q.yaml", "content": _policy("other").canonical_json()}]})
        assert refused.status_code == 503 and "meshctl store restore" in refused.json()["error"]

        monkeypatch.setenv("MESHCORE_TOKEN", headers["Authorization"].split()[1])
        assert meshctl(["store", "status", "--server", url]) == 3  # exit 3: suspect
        assert meshctl(["store", "restore", "--server", url, "--yes", "-o", "json"]) == 0
        kv = requests.get(f"{consul_http.address}/v1/kv/meshcore/resources/AuthorizationPolicy/default/"
                          "frontend-allow-get", params={"raw": ""}, timeout=10)
        assert kv.status_code == 200 and kv.content.decode() == policy.canonical_json()
        assert requests.get(url + "/v1/store", headers=headers, timeout=10).json()["state"] == "ok"
        assert served() == [str(policy.key)]
        again = requests.post(url + "/v1/store/restore", headers=headers, json={}, timeout=10)
        assert again.status_code == 409 and "not suspect" in again.json()["error"]  # nothing to restore
    finally:
        plane.stop()


def test_an_unusable_copy_does_not_stop_the_store(consul_http, tmp_path, kek, caplog):
    store = _store(consul_http, tmp_path, kek)
    store.apply([_policy("a")])
    (tmp_path / FILE_NAME).write_bytes(b"damaged")
    fresh = _store(consul_http, tmp_path, kek, prefix=store.prefix)
    with caplog.at_level(logging.ERROR, logger="meshcore.resources.consul"):
        assert fresh.list() == [_policy("a")]  # KV as it is, with an ERROR
    assert any("cannot use the control plane's copy" in r.getMessage() for r in caplog.records)
    assert fresh.health().held_generation >= 1  # rewritten from KV
    assert LastApplied(tmp_path / FILE_NAME, kek).load() is not None


def test_after_a_failed_watch_the_next_one_reads_at_once_instead_of_blocking_at_the_old_index(consul_http, tmp_path,
                                                                                              kek):
    """Consul restarted empty: its index starts again below ours, so a blocking query at our old index would hold
    for the whole wait and the loss would go unnoticed that long. The watch after a failed one reads at once."""
    double = consul_http.require_double("needs restart(empty=True)")
    store = _store(consul_http, tmp_path, kek)
    store.apply([_policy("allow-get")])
    _, index = store.watch(None, 0)
    double.stop()
    with pytest.raises(StoreError):
        store.watch(index, 1)  # refused: Consul is down
    double.restart(empty=True)
    started = time.monotonic()
    resources, _ = store.watch(index, 20)
    assert time.monotonic() - started < 10, "the watch blocked at the old index after Consul came back empty"
    assert [r.name for r in resources] == ["allow-get"] and store.health().state == "suspect"
