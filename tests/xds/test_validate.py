"""validate_snapshot cross-checks and publish's all-or-nothing behaviour."""

from __future__ import annotations

import pytest

from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import secret_pb2, tls_pb2
from envoy.config.core.v3 import base_pb2

from meshcore.errors import SnapshotInvalid
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET
from meshcore.xds.cache import ProxySnapshot, SnapshotCache
from meshcore.xds.validate import publish, validate_snapshot
from tests.xds._snapshots import (
    ads_source, eds_cluster, endpoints, listener, pack, route_config, small_snapshot, socket,
)


def test_a_correct_small_snapshot_has_no_problems():
    assert validate_snapshot("vm1", small_snapshot()) == []


def test_route_pointing_at_a_missing_cluster():
    snap = small_snapshot()
    snap[ROUTE] = [route_config("inbound:web", "outbound:missing", "v1")]
    problems = validate_snapshot("vm1", snap)
    assert len(problems) == 1
    assert "route configuration 'inbound:web'" in problems[0]
    assert "virtual_hosts[0].routes[0].route.cluster" in problems[0]
    assert "cluster 'outbound:missing' is not in the snapshot" in problems[0]


def test_weighted_clusters_are_checked():
    snap = small_snapshot()
    rc = route_config("inbound:web", "outbound:backend", "v1")
    action = rc.virtual_hosts[0].routes[0].route
    action.ClearField("cluster")
    action.weighted_clusters.clusters.add(name="outbound:backend", weight={"value": 90})
    action.weighted_clusters.clusters.add(name="outbound:canary", weight={"value": 10})
    snap[ROUTE] = [rc]
    problems = validate_snapshot("vm1", snap)
    assert problems == [
        "route configuration 'inbound:web': virtual_hosts[0].routes[0].route.weighted_clusters.clusters[1].name: "
        "cluster 'outbound:canary' is not in the snapshot"
    ]


def test_listener_naming_a_missing_route_config():
    snap = small_snapshot()
    snap[LISTENER] = [listener("inbound:web", 15001, "inbound:nope")]
    problems = validate_snapshot("vm1", snap)
    assert len(problems) == 1
    assert "listener 'inbound:web': filter_chains[0].filters[0] (http_connection_manager).rds.route_config_name" in problems[0]
    assert "route configuration 'inbound:nope' is not in the snapshot" in problems[0]


def test_inline_route_config_clusters_are_checked():
    from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2

    hcm = hcm_pb2.HttpConnectionManager(stat_prefix="x", route_config=route_config("inline", "outbound:gone", "v1"))
    chain = listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(name="hcm", typed_config=pack(hcm))])
    snap = small_snapshot()
    snap[LISTENER] = [listener_pb2.Listener(name="inline", address=socket(1), default_filter_chain=chain)]
    problems = validate_snapshot("vm1", snap)
    assert len(problems) == 1
    assert "default_filter_chain.filters[0] (http_connection_manager).route_config" in problems[0]
    assert "'outbound:gone'" in problems[0]


def test_tcp_proxy_clusters_are_checked():
    tcp = tcp_proxy_pb2.TcpProxy(stat_prefix="t", cluster="outbound:db")
    weighted = tcp_proxy_pb2.TcpProxy(stat_prefix="t")
    weighted.weighted_clusters.clusters.add(name="outbound:backend", weight=1)
    weighted.weighted_clusters.clusters.add(name="outbound:db2", weight=1)
    chains = [
        listener_components_pb2.FilterChain(filters=[listener_components_pb2.Filter(name="tcp", typed_config=pack(t))])
        for t in (tcp, weighted)
    ]
    snap = small_snapshot()
    snap[LISTENER].append(listener_pb2.Listener(name="outbound:db:5432", address=socket(5432), filter_chains=chains))
    problems = validate_snapshot("vm1", snap)
    assert sorted(problems) == [
        "listener 'outbound:db:5432': filter_chains[0].filters[0] (tcp_proxy).cluster: cluster 'outbound:db' is not in the snapshot",
        "listener 'outbound:db:5432': filter_chains[1].filters[0] (tcp_proxy).weighted_clusters.clusters[1].name: "
        "cluster 'outbound:db2' is not in the snapshot",
    ]


def test_eds_cluster_without_endpoints():
    snap = small_snapshot()
    snap[CLUSTER].append(eds_cluster("outbound:lonely"))
    named = eds_cluster("outbound:named")
    named.eds_cluster_config.service_name = "svc-named"
    snap[CLUSTER].append(named)
    snap[ENDPOINT].append(endpoints("outbound:named", 1))  # wrong name: service_name wins
    problems = validate_snapshot("vm1", snap)
    assert sorted(problems) == [
        "cluster 'outbound:lonely' (type EDS): ClusterLoadAssignment 'outbound:lonely' is not in the snapshot",
        "cluster 'outbound:named' (type EDS): ClusterLoadAssignment 'svc-named' is not in the snapshot",
    ]


def test_eds_from_a_non_ads_source_is_not_checked():
    snap = small_snapshot()
    c = eds_cluster("outbound:file")
    c.eds_cluster_config.eds_config.CopyFrom(
        config_source_pb2.ConfigSource(path_config_source=config_source_pb2.PathConfigSource(path="/tmp/eds.yaml"))
    )
    snap[CLUSTER].append(c)
    assert validate_snapshot("vm1", snap) == []


def test_duplicate_and_empty_names():
    snap = small_snapshot()
    snap[CLUSTER].append(eds_cluster("outbound:backend"))
    snap[CLUSTER].append(cluster_pb2.Cluster(type=cluster_pb2.Cluster.STATIC))
    problems = validate_snapshot("vm1", snap)
    assert sorted(problems) == [
        "cluster #2: name is empty",
        "cluster 'outbound:backend': duplicate name (each cluster name must be unique per proxy)",
    ]


def test_wrong_message_type_and_unknown_type_url():
    snap = small_snapshot()
    snap[ROUTE].append(eds_cluster("x"))
    snap["type.googleapis.com/envoy.config.core.v3.Node"] = [base_pb2.Node(id="x")]
    problems = validate_snapshot("vm1", snap)
    assert any("route configuration #1: is a Cluster, expected RouteConfiguration" in p for p in problems)
    assert any("unsupported type URL 'type.googleapis.com/envoy.config.core.v3.Node'" in p for p in problems)


def _tls_cluster(name: str, secret: str, ads: bool) -> cluster_pb2.Cluster:
    sds = secret_pb2.SdsSecretConfig(name=secret)
    if ads:
        sds.sds_config.CopyFrom(ads_source())
    else:
        sds.sds_config.CopyFrom(config_source_pb2.ConfigSource(
            path_config_source=config_source_pb2.PathConfigSource(path=f"/etc/meshcore/{secret}.yaml")))
    tls = tls_pb2.UpstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds],
        validation_context_sds_secret_config=secret_pb2.SdsSecretConfig(name="bundle:cluster.local", sds_config=ads_source()),
    ))
    c = cluster_pb2.Cluster(name=name, type=cluster_pb2.Cluster.STATIC)
    c.transport_socket.name = "envoy.transport_sockets.tls"
    c.transport_socket.typed_config.CopyFrom(pack(tls))
    return c


def test_sds_secrets_over_ads_must_exist_file_based_are_not_checked():
    snap = small_snapshot()
    snap[CLUSTER] += [_tls_cluster("outbound:a", "svid:web", ads=True), _tls_cluster("outbound:b", "svid:file", ads=False)]
    snap[SECRET] = [secret_pb2.Secret(name="svid:web")]
    problems = validate_snapshot("vm1", snap)
    assert sorted(problems) == [
        "cluster 'outbound:a': transport_socket.common_tls_context.validation_context_sds_secret_config: "
        "secret 'bundle:cluster.local' is not in the snapshot",
        "cluster 'outbound:b': transport_socket.common_tls_context.validation_context_sds_secret_config: "
        "secret 'bundle:cluster.local' is not in the snapshot",
    ]
    snap[SECRET].append(secret_pb2.Secret(name="bundle:cluster.local"))
    assert validate_snapshot("vm1", snap) == []


def test_downstream_tls_secrets_are_checked():
    snap = small_snapshot()
    tls = tls_pb2.DownstreamTlsContext(common_tls_context=tls_pb2.CommonTlsContext(
        tls_certificate_sds_secret_configs=[secret_pb2.SdsSecretConfig(name="svid:web", sds_config=ads_source())]))
    chain = snap[LISTENER][0].filter_chains[0]
    chain.transport_socket.name = "envoy.transport_sockets.tls"
    chain.transport_socket.typed_config.CopyFrom(pack(tls))
    problems = validate_snapshot("vm1", snap)
    assert problems == [
        "listener 'inbound:web': filter_chains[0].transport_socket.common_tls_context."
        "tls_certificate_sds_secret_configs[0]: secret 'svid:web' is not in the snapshot"
    ]


def test_corrupt_typed_config_is_reported():
    snap = small_snapshot()
    snap[LISTENER][0].filter_chains[0].filters[0].typed_config.value = b"\xff\xff\xff"
    problems = validate_snapshot("vm1", snap)
    assert len(problems) == 1 and "cannot decode HttpConnectionManager" in problems[0]


def test_publish_refuses_a_bad_snapshot_and_keeps_the_last_good_one():
    cache = SnapshotCache()
    good = publish(cache, "vm1", small_snapshot())
    assert cache.get("vm1") is good
    bad = small_snapshot(body="v2")
    bad[ROUTE] = [route_config("inbound:web", "outbound:missing", "v2")]
    with pytest.raises(SnapshotInvalid) as info:
        publish(cache, "vm1", bad)
    assert info.value.node == "vm1"
    assert len(info.value.problems) == 1 and "outbound:missing" in info.value.problems[0]
    assert cache.get("vm1") is good and cache.generation("vm1") == 1


def test_publish_accepts_generators_and_unchanged_content_is_not_a_change():
    cache = SnapshotCache()
    first = publish(cache, "vm1", {t: iter(v) for t, v in small_snapshot().items()})
    assert len(first.resources[CLUSTER]) == 1
    second = publish(cache, "vm1", small_snapshot())
    assert second.version == first.version and cache.generation("vm1") == 1
    assert isinstance(cache.get("vm1"), ProxySnapshot)


def test_entries_give_the_same_problems_as_messages_and_are_analysed_once(monkeypatch):
    from meshcore.xds import validate
    from meshcore.xds.cache import Prepared

    broken = small_snapshot()
    broken[ROUTE] = [route_config("inbound:web", "outbound:missing", "v1")]
    as_entries = {t: [Prepared.of(m) for m in items] for t, items in broken.items()}
    assert validate_snapshot("vm1", as_entries) == validate_snapshot("vm1", broken) != []

    calls = []
    real = validate._analyse
    monkeypatch.setattr(validate, "_analyse", lambda m: calls.append(m) or real(m))
    shared = {t: [Prepared.of(m) for m in items] for t, items in small_snapshot().items()}
    for _ in range(3):  # three proxies holding the same entries
        assert validate_snapshot("vm1", shared) == []
    assert len(calls) == sum(len(v) for v in shared.values())  # each entry once, not once per snapshot


def test_publish_keeps_the_cached_entry_of_an_unchanged_resource():
    cache = SnapshotCache()
    first = publish(cache, "vm1", small_snapshot())
    changed = small_snapshot(upstream_port=18081)  # only the endpoints differ
    second = publish(cache, "vm1", changed)
    assert second.version != first.version
    assert second.entries(CLUSTER)["outbound:backend"] is first.entries(CLUSTER)["outbound:backend"]
    assert second.entries(ENDPOINT) != first.entries(ENDPOINT)
    assert [e.message for e in second.entries(ENDPOINT).values()] == list(changed[ENDPOINT])


def test_publish_checks_only_what_changed_since_the_snapshot_it_validated(monkeypatch):
    from meshcore.xds import validate

    full = []
    real = validate.validate_snapshot
    monkeypatch.setattr(validate, "validate_snapshot", lambda node, r: full.append(node) or real(node, r))
    cache = SnapshotCache()
    publish(cache, "vm1", small_snapshot())
    assert len(full) == 1
    publish(cache, "vm1", small_snapshot(upstream_port=18081))  # same names, new endpoints: checked alone
    assert len(full) == 1
    bad = small_snapshot(upstream_port=18082)
    bad[ROUTE] = [route_config("inbound:web", "outbound:missing", "v1")]  # same names, a dangling reference
    with pytest.raises(SnapshotInvalid) as info:
        publish(cache, "vm1", bad)
    assert list(info.value.problems) == real("vm1", bad) != []  # worded by the full check
    renamed = small_snapshot(upstream_port=18083)
    renamed[LISTENER] = [listener("other", 15001, "inbound:web")]
    publish(cache, "vm1", renamed)  # different names: the whole snapshot is checked
    assert len(full) == 3
    twice = small_snapshot(upstream_port=18084)
    twice[LISTENER] = [listener("other", 15001, "inbound:web"), listener("other", 15002, "inbound:web")]
    with pytest.raises(SnapshotInvalid) as info:
        publish(cache, "vm1", twice)
    assert any("duplicate name" in p for p in info.value.problems)
    cache.set("vm1", ProxySnapshot.of(small_snapshot(upstream_port=18085)))  # not one publish validated
    publish(cache, "vm1", small_snapshot(upstream_port=18086))
    assert len(full) == 5
