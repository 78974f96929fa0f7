"""ConsulKVStore against the Consul double (or a real Consul when CONSUL_HTTP_ADDR is set)."""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest
import requests

from meshcore.catalog.consul import ConsulSettings
from meshcore.errors import StoreError
from meshcore.resources.consul_store import ConsulKVStore
from meshcore.resources.model import Resource, ResourceKey


def _policy(name: str, namespace: str = "default", methods=("GET",)) -> Resource:
    return Resource(
        api_version="security.mesh.io/v1beta1",
        kind="AuthorizationPolicy",
        name=name,
        namespace=namespace,
        spec={"selector": {"matchLabels": {"app": "frontend"}},
              "rules": [{"to": [{"operation": {"methods": list(methods)}}]}]},
        labels=(("team", "web"),),
    )


@pytest.fixture
def store(consul_http):
    s = ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "resources/")
    yield s
    s.close()


def _raw_get(consul_http, key: str, **params) -> requests.Response:
    return requests.get(f"{consul_http.address}/v1/kv/{key}", params=params, headers=consul_http._headers(), timeout=10)


def test_apply_stores_canonical_json_and_lists_it_back(consul_http, store):
    a, b = _policy("a"), _policy("b", namespace="shop")
    store.apply([a, b])
    raw = _raw_get(consul_http, store.prefix + "AuthorizationPolicy/default/a", raw="")
    assert raw.content.decode() == a.canonical_json()
    assert store.list() == [a, b]


def test_apply_overwrites_and_delete_reports_what_existed(store):
    store.apply([_policy("a"), _policy("b")])
    changed = _policy("a", methods=("GET", "POST"))
    store.apply([changed])
    assert store.list() == [changed, _policy("b")]
    gone = store.delete([ResourceKey("AuthorizationPolicy", "default", "b"),
                         ResourceKey("AuthorizationPolicy", "default", "never-existed")])
    assert gone == [ResourceKey("AuthorizationPolicy", "default", "b")]
    assert store.list() == [changed]
    assert store.delete([]) == [] and store.apply([]) is None


def test_watch_blocks_until_a_change(store):
    store.apply([_policy("a")])
    resources, index = store.watch(None, 0)
    assert resources == [_policy("a")]

    started = time.monotonic()
    same, same_index = store.watch(index, 0.5)
    assert time.monotonic() - started >= 0.45
    assert (same, same_index) == (resources, index)

    threading.Timer(0.3, lambda: store.apply([_policy("b")])).start()
    started = time.monotonic()
    updated, new_index = store.watch(index, 10)
    assert time.monotonic() - started < 2.0, "watch did not wake on apply"
    assert new_index > index and [r.name for r in updated] == ["a", "b"]

    threading.Timer(0.3, lambda: store.delete([_policy("a").key])).start()
    after_delete, last = store.watch(new_index, 10)
    assert last > new_index and [r.name for r in after_delete] == ["b"]


def test_apply_is_all_or_nothing(consul_http, store):
    store.apply([_policy("keep")])
    too_big = Resource("security.mesh.io/v1beta1", "AuthorizationPolicy", "huge", "default", {"blob": "x" * 600_000})
    with pytest.raises(StoreError):
        store.apply([_policy("new"), too_big])  # Consul refuses the whole transaction
    assert [r.name for r in store.list()] == ["keep"]


def test_a_large_apply_is_one_change(consul_http, store):
    """More than one transaction's worth (64 operations, 512 KB) goes through a committed journal."""
    many = [_policy(f"p{i:04d}") for i in range(1500)]
    store.apply(many)
    assert store.list() == sorted(many, key=lambda r: r.key.path)
    keys = requests.get(f"{consul_http.address}/v1/kv/{store.prefix}", params={"keys": ""},
                        headers=consul_http._headers(), timeout=10).json()
    assert [k for k in keys if "/.meshcore/" in k] == [store.prefix + ".meshcore/generation"]  # journal gone
    gone = store.delete([r.key for r in many[:1000]])
    assert len(gone) == 1000 and len(store.list()) == 500
    with pytest.raises(StoreError, match="twice"):
        store.apply([_policy("a"), _policy("a")])


CRASHER = """
import os, sys
from meshcore.catalog.consul import ConsulSettings
from meshcore.resources import consul_store
from meshcore.resources.model import Resource
prefix, after = sys.argv[1], int(sys.argv[2])
real, calls = consul_store.raw, [0]
def dying(client, method, path, **kw):
    if path == "/v1/txn":
        calls[0] += 1
        if calls[0] > after:
            os._exit(9)  # as abrupt as kill -9
    return real(client, method, path, **kw)
consul_store.raw = dying
store = consul_store.ConsulKVStore(ConsulSettings.from_env(), prefix=prefix)
store.apply([Resource("security.mesh.io/v1beta1", "AuthorizationPolicy", f"new-{i}", "default", {"n": i, "pad": "x" * 300})
             for i in range(1200)] + [Resource("security.mesh.io/v1beta1", "AuthorizationPolicy", "old-0", "default", {})])
os._exit(0)
"""


@pytest.mark.parametrize("after", [0, 1, 2, 3, 4, 6, 9, 100])
def test_a_writer_killed_at_any_transaction_leaves_all_or_nothing(consul_http, store, after):
    """Finding 1 for Consul KV: readers see the old set or the new set, and the next writer cleans up."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    old = [_policy(f"old-{i}") for i in range(3)]
    store.apply(old)
    env = dict(os.environ, **consul_http.env())
    proc = subprocess.run([sys.executable, "-c", CRASHER, store.prefix, str(after)], env=env, timeout=120,
                          cwd=Path(__file__).parents[2])
    fresh = ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=store.prefix)
    seen_before_recovery = fresh._decode(fresh._read().docs)  # a reader that does not write (read-only token)
    for resources in (seen_before_recovery, fresh.list()):  # list(): the first read also finishes/cleans up
        names = {r.name for r in resources}
        new = {n for n in names if n.startswith("new-")}
        assert new == set() and resources == old or len(new) == 1200 and \
            next(r for r in resources if r.name == "old-0").spec == {}, f"a mix: {len(new)} of 1200 new"
    keys = requests.get(f"{consul_http.address}/v1/kv/{store.prefix}.meshcore/", params={"keys": ""},
                        headers=consul_http._headers(), timeout=10)
    assert keys.json() == [store.prefix + ".meshcore/generation"], "journal or staged parts left behind"
    if after == 100:  # never killed: the apply must succeed (main refused it: more than 128 operations)
        assert proc.returncode == 0 and len(fresh.list()) == 1203
    fresh.apply([_policy("after")])  # the store is writable again
    assert "after" in {r.name for r in fresh.list()}


def test_cas_conflict_inside_a_transaction_writes_nothing(consul_http, store):
    """The guarantee apply/delete build on: one failing operation rolls back the whole /v1/txn."""
    store.apply([_policy("a")])
    key = store.prefix + "AuthorizationPolicy/default/a"
    stale = _raw_get(consul_http, key).json()[0]["ModifyIndex"] - 1
    ops = [{"KV": {"Verb": "set", "Key": store.prefix + "AuthorizationPolicy/default/b",
                   "Value": base64.b64encode(_policy("b").canonical_json().encode()).decode()}},
           {"KV": {"Verb": "delete-cas", "Key": key, "Index": stale}}]
    response = requests.put(f"{consul_http.address}/v1/txn", json=ops, headers=consul_http._headers(), timeout=10)
    assert response.status_code == 409
    assert [r.name for r in store.list()] == ["a"]


def test_an_unparseable_document_is_left_out_on_its_own_and_named(consul_http, store):
    store.apply([_policy("a")])
    bad_key = store.prefix + "AuthorizationPolicy/default/broken"
    requests.put(f"{consul_http.address}/v1/kv/{bad_key}", data=b"{not json", headers=consul_http._headers(), timeout=10)
    assert [r.name for r in store.list()] == ["a"], "the rest is served"
    ((where, why),) = store.unreadable().items()
    assert where == f"AuthorizationPolicy/default/broken ({bad_key})" and "broken" in why
    assert store.health().unreadable == ((where, why),)
    assert store.delete([ResourceKey("AuthorizationPolicy", "default", "broken")]) == [
        ResourceKey("AuthorizationPolicy", "default", "broken")]
    assert [r.name for r in store.list()] == ["a"] and store.unreadable() == {}


def test_a_document_at_the_wrong_key_is_left_out_and_named(consul_http, store):
    misplaced = store.prefix + "AuthorizationPolicy/default/other-name"
    requests.put(f"{consul_http.address}/v1/kv/{misplaced}", data=_policy("a").canonical_json().encode(),
                 headers=consul_http._headers(), timeout=10)
    assert store.list() == []
    (why,) = store.unreadable().values()
    assert "other-name" in why and "expected at" in why


def test_refused_token_is_a_store_error_naming_the_env_var(consul_acl):
    anonymous = ConsulKVStore(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address}))
    with pytest.raises(StoreError, match="CONSUL_HTTP_TOKEN"):
        anonymous.list()
    reader = ConsulKVStore(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                                    "CONSUL_HTTP_TOKEN": consul_acl.read_token}))
    assert reader.list() == []
    with pytest.raises(StoreError, match="refused the ACL token"):
        reader.apply([_policy("a")])
    writer = ConsulKVStore(ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                                    "CONSUL_HTTP_TOKEN": consul_acl.token}))
    writer.apply([_policy("a")])
    assert reader.list() == [_policy("a")]


def test_stored_value_is_the_documented_shape(consul_http, store):
    store.apply([_policy("a")])
    doc = json.loads(_raw_get(consul_http, store.prefix + "AuthorizationPolicy/default/a", raw="").content)
    assert doc["apiVersion"] == "security.mesh.io/v1beta1"
    assert doc["metadata"] == {"name": "a", "namespace": "default", "labels": {"team": "web"}}
