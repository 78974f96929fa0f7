"""Mesh gateways and gateway-routed sidecars: generated config from catalogs read by the real file source."""

from __future__ import annotations

import json
from pathlib import Path

from google.protobuf import json_format

from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshcore.catalog._consul_datacenters import merge_datacenters
from meshcore.catalog.files import FileCatalogSource
from meshcore.catalog.model import Catalog
from meshcore.compose import build_proxy
from meshcore.resources import load_documents
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo
from meshcore.xds.generate import CLUSTER, ENDPOINT, LISTENER, ROUTE
from meshcore.xds.validate import validate_snapshot

NODES = {"a1": ("10.1.0.1", "dc1"), "a2": ("10.1.0.2", "dc1"), "gw1": ("10.1.0.9", "dc1"),
         "b1": ("10.2.0.1", "dc2"), "gw2": ("10.2.0.9", "dc2")}
FAILOVER = """
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {localityLbSetting: {failover: [{from: dc1, to: dc2}]}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 2s}
"""


def _write(root: Path, mode: str, gateway_names: dict[str, str] | None = None) -> None:
    for node, (addr, dc) in NODES.items():
        (root / node).mkdir(parents=True, exist_ok=True)
        (root / node / "node.json").write_text(json.dumps({"node_name": node, "advertise_addr": addr,
                                                           "datacenter": dc}))

    def svc(node: str, name: str, upstreams=(), port: int = 21000) -> None:
        proxy = {"upstreams": [{"destination_name": u, "local_bind_port": 9000 + i, **({"datacenter": d} if d else {})}
                               for i, (u, d) in enumerate(upstreams)]}
        if mode:
            proxy["mesh_gateway"] = {"mode": mode}
        body = {"name": name, "id": f"{name}-{node}", "port": port - 13000,
                "connect": {"sidecar_service": {"port": port, "proxy": proxy}}}
        (root / node / f"{name}.json").write_text(json.dumps({"service": body}))

    def gateway(node: str, wan: str) -> None:
        name = (gateway_names or {}).get(node, "mesh-gateway")
        body = {"name": name, "id": f"mgw-{node}", "kind": "mesh-gateway", "port": 8443,
                "meta": {"envoy_mesh_gateway_bind_tagged_addresses": "true" if node == "gw2" else "false"},
                "tagged_addresses": {"lan": {"address": NODES[node][0], "port": 8443},
                                     "wan": {"address": wan, "port": 8443}}}
        (root / node / "mgw.json").write_text(json.dumps({"service": body}))

    svc("a1", "web", [("store", "dc2"), ("api", None)])
    svc("a2", "api")
    svc("b1", "api")
    svc("b1", "store", port=21001)
    gateway("gw1", "192.0.2.1")
    gateway("gw2", "192.0.2.2")


def _snapshot(root: Path, policies: str = "") -> MeshSnapshot:
    return MeshSnapshot.build(FileCatalogSource(root).poll(None, 0).catalog,
                              load_documents(policies, "p.yaml") if policies else [])


def _build(snap: MeshSnapshot, node: str) -> dict:
    out = build_proxy(snap, ProxyInfo(node=node, secrets_dir="/s"))
    assert validate_snapshot(node, out) == []  # what publishing checks (protos, cross-references)
    return out


def _json(resources: dict) -> str:
    return json.dumps([json_format.MessageToDict(r) for t in (LISTENER, CLUSTER, ENDPOINT) for r in resources[t]])


def _cla(resources: dict, name: str):
    return next(c for c in resources[ENDPOINT] if c.cluster_name == name)


def test_local_mode_sidecar_reaches_dc2_only_through_its_own_gateway(tmp_path):
    _write(tmp_path, "local")
    out = _build(_snapshot(tmp_path, FAILOVER), "a1")
    text = _json(out)
    assert "10.2.0." not in text and "192.0.2." not in text  # no dc2 address at all: the local gateway only
    store = _cla(out, "outbound:store.dc2")
    [group] = store.endpoints
    assert group.locality.region == "dc2"
    [ep] = group.lb_endpoints
    assert (ep.endpoint.address.socket_address.address, ep.endpoint.address.socket_address.port_value) == (
        "10.1.0.9", 8443)
    assert ep.metadata.filter_metadata["envoy.transport_socket_match"]["mesh-gateway-dc"] == "dc2"
    cluster = next(c for c in out[CLUSTER] if c.name == "outbound:store|web")
    [match] = cluster.transport_socket_matches
    tls = tls_pb2.UpstreamTlsContext()
    match.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "store.dc2.internal.meshcore" and dict(match.match)["mesh-gateway-dc"] == "dc2"
    sans = [m.matcher.exact for m in tls.common_tls_context.combined_validation_context
            .default_validation_context.match_typed_subject_alt_names]
    assert sans == ["spiffe://cluster.local/ns/default/sa/store"]  # end to end: the callee's identity
    # api in both: dc1 direct at priority 0, dc2 through the gateway at priority 1 (localityLbSetting)
    api = _cla(out, "outbound:api")
    assert [(g.locality.region, g.priority, [e.endpoint.address.socket_address.address for e in g.lb_endpoints])
            for g in api.endpoints] == [("dc1", 0, ["10.1.0.2"]), ("dc2", 1, ["10.1.0.9"])]


def test_remote_and_none_modes(tmp_path):
    _write(tmp_path, "remote")
    out = _build(_snapshot(tmp_path), "a1")
    [group] = _cla(out, "outbound:store.dc2").endpoints
    assert [e.endpoint.address.socket_address.address for e in group.lb_endpoints] == ["192.0.2.2"]  # dc2's WAN
    none = tmp_path / "none"
    _write(none, "")
    direct = _build(_snapshot(none), "a1")
    [group] = _cla(direct, "outbound:store.dc2").endpoints
    assert [e.endpoint.address.socket_address.address for e in group.lb_endpoints] == ["10.2.0.1"]
    assert not next(c for c in direct[CLUSTER] if c.name == "outbound:store|web").transport_socket_matches


def test_no_gateway_no_route(tmp_path):
    _write(tmp_path, "local")
    for f in (tmp_path / "gw1").glob("mgw.json"):
        f.unlink()
    out = _build(_snapshot(tmp_path), "a1")
    assert not _cla(out, "outbound:store.dc2").endpoints  # never directly behind the operator's back


def test_gateways_are_found_by_kind_whatever_their_name(tmp_path):
    _write(tmp_path / "default", "local")
    _write(tmp_path / "named", "local", {"gw1": "east-gateway", "gw2": "west-gateway"})
    default, named = _snapshot(tmp_path / "default", FAILOVER), _snapshot(tmp_path / "named", FAILOVER)
    assert named.catalog.services_of_kind("mesh-gateway") == ("east-gateway", "west-gateway")
    assert not named.catalog.instances_of("mesh-gateway")
    for node in ("a1", "gw1", "gw2"):  # the sidecar's gateway endpoints, and each gateway's routes, the same
        assert _json(_build(named, node)) == _json(_build(default, node)), node
    # the other gateway's name is no mesh service to route to
    assert "east-gateway" not in _json(_build(named, "gw2")) and "west-gateway" not in _json(_build(named, "gw1"))


def test_gateway_clusters_have_stat_names_without_dots(tmp_path):
    _write_versions(tmp_path, "local")
    snap = _snapshot(tmp_path, SUBSETS)
    stat_names = {c.name: c.alt_stat_name for node in ("gw1", "gw2") for c in _build(snap, node)[CLUSTER]
                  if c.name.startswith("mesh_gateway:")}
    assert stat_names["mesh_gateway:service:store.dc2"] == "mesh_gateway_service_store|dc2"
    assert stat_names["mesh_gateway:service:api.dc2|v2"] == "mesh_gateway_service_api|dc2|v2"
    assert stat_names["mesh_gateway:datacenter:dc2"] == "mesh_gateway_datacenter_dc2"
    assert all("." not in s for s in stat_names.values())


def _chains(listener) -> dict[str, tuple[list[str], str, bool]]:
    out = {}
    for chain in listener.filter_chains:
        proxy = tcp_proxy_pb2.TcpProxy()
        [f] = chain.filters
        f.typed_config.Unpack(proxy)
        out[chain.name] = (list(chain.filter_chain_match.server_names), proxy.cluster, chain.HasField("transport_socket"))
    return out


def test_gateway_routes_by_sni_without_terminating_tls(tmp_path):
    _write(tmp_path, "local")
    snap = _snapshot(tmp_path)
    gw2 = _build(snap, "gw2")
    lan, wan = sorted(gw2[LISTENER], key=lambda li: li.name)
    assert (lan.name, lan.address.socket_address.address) == ("mesh_gateway:mgw-gw2", "10.2.0.9")
    assert (wan.name, wan.address.socket_address.address) == ("mesh_gateway:mgw-gw2:wan", "192.0.2.2")
    assert [f.name for f in lan.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    assert _chains(lan) == {
        "service:api": (["api.dc2.internal.meshcore"], "mesh_gateway:service:api.dc2", False),
        "service:store": (["store.dc2.internal.meshcore"], "mesh_gateway:service:store.dc2", False),
        "datacenter:dc1": (["*.dc1.internal.meshcore"], "mesh_gateway:datacenter:dc1", False),
    }
    assert all(not c.HasField("transport_socket") and not c.transport_socket_matches for c in gw2[CLUSTER])
    store = _cla(gw2, "mesh_gateway:service:store.dc2")
    assert [e.endpoint.address.socket_address.address for e in store.endpoints[0].lb_endpoints] == ["10.2.0.1"]
    gw1 = _build(snap, "gw1")
    assert [li.name for li in gw1[LISTENER]] == ["mesh_gateway:mgw-gw1"]  # WAN not bound unless asked (NAT)
    to_dc2 = _cla(gw1, "mesh_gateway:datacenter:dc2")
    assert [(e.endpoint.address.socket_address.address, e.endpoint.address.socket_address.port_value)
            for e in to_dc2.endpoints[0].lb_endpoints] == [("192.0.2.2", 8443)]
    assert "10.2.0.1" not in _json(gw1)  # dc1's gateway knows dc2's gateways, not its VMs


SUBSETS = """
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer: {localityLbSetting: {failover: [{from: dc1, to: dc2}]}}
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 2s}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""


def _write_versions(root: Path, mode: str) -> None:
    """:func:`_write`, with api v1 in dc1 (a2) and dc2 (b2, a node of its own), api v2 in dc2 only (b1)."""
    _write(root, mode)
    (root / "b2").mkdir()
    (root / "b2" / "node.json").write_text(json.dumps({"node_name": "b2", "advertise_addr": "10.2.0.2",
                                                       "datacenter": "dc2"}))
    (root / "b2" / "api.json").write_text((root / "b1" / "api.json").read_text().replace("api-b1", "api-b2"))
    for node, version in (("a2", "v1"), ("b1", "v2"), ("b2", "v1")):
        path = root / node / "api.json"
        body = json.loads(path.read_text())
        body["service"]["meta"] = {"version": version}
        path.write_text(json.dumps(body))


def _sni(cluster) -> dict[str, str]:
    out = {}
    for match in cluster.transport_socket_matches:
        tls = tls_pb2.UpstreamTlsContext()
        match.transport_socket.typed_config.Unpack(tls)
        out[dict(match.match)["mesh-gateway-dc"]] = tls.sni
    return out


def _groups(cla) -> list[tuple[str, int, list[str]]]:
    return [(g.locality.region, g.priority, [e.endpoint.address.socket_address.address for e in g.lb_endpoints])
            for g in cla.endpoints]


def test_subset_clusters_reach_the_subsets_instances_of_other_datacenters_through_the_gateways(tmp_path):
    _write_versions(tmp_path, "local")
    snap = _snapshot(tmp_path, SUBSETS)
    a1 = _build(snap, "a1")
    clusters = {c.name: c for c in a1[CLUSTER]}
    assert _sni(clusters["outbound:api|web|v1"]) == {"dc2": "v1.api.dc2.internal.meshcore"}
    assert _sni(clusters["outbound:api|web|v2"]) == {"dc2": "v2.api.dc2.internal.meshcore"}
    assert "10.2.0." not in _json(a1)  # dc2's subset instances only through dc1's gateway
    # locality failover per subset: v1 has dc1's own instance first, dc2's (through gw1) next; v2 only dc2's
    assert _groups(_cla(a1, "outbound:api|v1")) == [("dc1", 0, ["10.1.0.2"]), ("dc2", 1, ["10.1.0.9"])]
    assert [(r, eps) for r, _, eps in _groups(_cla(a1, "outbound:api|v2"))] == [("dc2", ["10.1.0.9"])]
    [ep] = _cla(a1, "outbound:api|v2").endpoints[0].lb_endpoints
    assert ep.metadata.filter_metadata["envoy.transport_socket_match"]["mesh-gateway-dc"] == "dc2"

    gw2 = _build(snap, "gw2")  # dc2's gateway, its control plane holding the same DestinationRule
    lan = next(li for li in gw2[LISTENER] if li.name == "mesh_gateway:mgw-gw2")
    chains = _chains(lan)
    assert chains["subset:api|v1"] == (["v1.api.dc2.internal.meshcore"], "mesh_gateway:service:api.dc2|v1", False)
    assert chains["subset:api|v2"] == (["v2.api.dc2.internal.meshcore"], "mesh_gateway:service:api.dc2|v2", False)
    assert "subset:api|v1" in _chains(next(li for li in gw2[LISTENER] if li.name.endswith(":wan")))
    assert _groups(_cla(gw2, "mesh_gateway:service:api.dc2|v1")) == [("dc2", 0, ["10.2.0.2"])]
    assert _groups(_cla(gw2, "mesh_gateway:service:api.dc2|v2")) == [("dc2", 0, ["10.2.0.1"])]
    assert all(not c.HasField("transport_socket") for c in gw2[CLUSTER])  # still nothing terminated
    gw1 = _build(snap, "gw1")  # dc1's: v1 in dc1 routed here; dc2's subsets go on through *.dc2
    assert set(_chains(gw1[LISTENER][0])) == {"service:api", "service:web", "subset:api|v1", "datacenter:dc2"}
    plain = _build(_snapshot(tmp_path), "gw2")  # without the rule a subset SNI matches no chain: closed
    assert not [n for n in _chains(plain[LISTENER][0]) if n.startswith("subset:")]


def test_subset_clusters_go_direct_without_a_gateway_mode(tmp_path):
    _write_versions(tmp_path, "")
    a1 = _build(_snapshot(tmp_path, SUBSETS), "a1")
    assert not next(c for c in a1[CLUSTER] if c.name == "outbound:api|web|v1").transport_socket_matches
    assert _groups(_cla(a1, "outbound:api|v1")) == [("dc1", 0, ["10.1.0.2"]), ("dc2", 1, ["10.2.0.2"])]


TD1, TD2 = "dc1.example", "dc2.example"
DENY_WEB_OF_DC1 = f"""
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: store-deny-web}}
spec:
  selector: {{matchLabels: {{app: store}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: ["{TD1}/ns/default/sa/web"]}}}}]
"""


def _two_domains(root: Path, own_dc: str) -> Catalog:
    """The catalog as ``own_dc``'s control plane reads it with ``consul:<own>,<other>@<other's domain>``: through
    the Consul source's merge, the other datacenter's instances carry its trust domain."""
    whole = FileCatalogSource(root).poll(None, 0).catalog
    parts = []
    for dc in (own_dc, "dc2" if own_dc == "dc1" else "dc1"):
        parts.append((dc, Catalog.of([n for n in whole.nodes if n.datacenter == dc],
                                     [i for i in whole.instances if i.datacenter == dc]), ()))
    catalog, _ = merge_datacenters(parts, {"dc2": TD2} if own_dc == "dc1" else {"dc1": TD1})
    return catalog


def _sans(tls: tls_pb2.UpstreamTlsContext) -> list[str]:
    return [m.matcher.exact for m in tls.common_tls_context.combined_validation_context
            .default_validation_context.match_typed_subject_alt_names]


def test_callers_check_the_other_trust_domains_spiffe_ids_through_the_gateways(tmp_path):
    _write(tmp_path, "local")
    bundles = MeshSettings(federated_bundles=((TD2, "dc2 roots"),))
    snap = MeshSnapshot.build(_two_domains(tmp_path, "dc1"), load_documents(FAILOVER, "p.yaml"), trust_domain=TD1,
                              settings=bundles)
    a1 = _build(snap, "a1")
    clusters = {c.name: c for c in a1[CLUSTER]}
    [match] = clusters["outbound:store|web"].transport_socket_matches
    tls = tls_pb2.UpstreamTlsContext()
    match.transport_socket.typed_config.Unpack(tls)
    assert tls.sni == "store.dc2.internal.meshcore" and _sans(tls) == [f"spiffe://{TD2}/ns/default/sa/store"]
    assert tls.common_tls_context.tls_certificate_sds_secret_configs[0].name == "svid:web"  # web's own SVID
    api = clusters["outbound:api|web"]  # in both: dc1's instance checked in dc1's domain, dc2's in dc2's
    own = tls_pb2.UpstreamTlsContext()
    api.transport_socket.typed_config.Unpack(own)
    assert _sans(own) == [f"spiffe://{TD1}/ns/default/sa/api"]
    [match] = api.transport_socket_matches
    tls = tls_pb2.UpstreamTlsContext()
    match.transport_socket.typed_config.Unpack(tls)
    assert _sans(tls) == [f"spiffe://{TD2}/ns/default/sa/api"]
    assert "10.2.0." not in _json(a1)

    # dc2's side: store's sidecar accepts dc1's workloads (federated), and a policy names dc1's principal
    dc2 = MeshSnapshot.build(_two_domains(tmp_path, "dc2"), load_documents(DENY_WEB_OF_DC1, "p.yaml"),
                             trust_domain=TD2, settings=MeshSettings(federated_bundles=((TD1, "dc1 roots"),)))
    b1 = _build(dc2, "b1")
    inbound = json.dumps([json_format.MessageToDict(r) for r in b1[LISTENER]])
    assert r"spiffe://dc1\\.example/ns/[^/]+/sa/[^/]+" in inbound  # the inbound handshake takes dc1's workloads
    store = json.dumps([json_format.MessageToDict(r) for r in b1[ROUTE] if "store" in r.name])
    assert f"spiffe://{TD1}/ns/default/sa/web" in store  # the DENY rule's principal, in dc1's trust domain
    gw2 = _build(dc2, "gw2")
    assert all(not c.HasField("transport_socket") for c in gw2[CLUSTER])  # the gateways hold no key of either
    [web] = dc2.catalog.instances_of("web")  # what `meshctl authz check --from web` and the graph resolve it to
    assert dc2.spiffe_id(web) == f"spiffe://{TD1}/ns/default/sa/web"
    assert snap.spiffe_id(web) == f"spiffe://{TD1}/ns/default/sa/web"  # dc1's own: its control plane's domain


# --- failover targets and VirtualService routes to hosts that are no upstream: through the gateways too ------

LEDGER_FAILOVER = """
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: ledger
  failover: [{targets: [{host: backup}]}]
"""
TO_BACKUP = """
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: api-to-backup}
spec:
  hosts: [api]
  http: [{route: [{destination: {host: backup}}]}]
"""


def _write_ledger(root: Path, mode: str, gateway_names: dict[str, str] | None = None) -> None:
    """:func:`_write`, plus ``ledger`` in dc1 only (a2), an upstream of web, and ``backup`` in dc2 only (b1)."""
    _write(root, mode, gateway_names)
    web = json.loads((root / "a1" / "web.json").read_text())
    web["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"].append(
        {"destination_name": "ledger", "local_bind_port": 9100})
    (root / "a1" / "web.json").write_text(json.dumps(web))
    for node, name, port in (("a2", "ledger", 21002), ("b1", "backup", 21003)):
        body = {"name": name, "id": f"{name}-{node}", "port": port - 13000,
                "connect": {"sidecar_service": {"port": port, "proxy": {}}}}
        (root / node / f"{name}.json").write_text(json.dumps({"service": body}))


def _match_snis(cluster) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for match in cluster.transport_socket_matches:
        tls = tls_pb2.UpstreamTlsContext()
        match.transport_socket.typed_config.Unpack(tls)
        out[json.dumps(dict(match.match), sort_keys=True)] = (tls.sni, _sans(tls))
    return out


def _endpoints(cla) -> list[tuple[str, int, str, int, dict]]:
    return [(g.locality.region, g.priority, e.endpoint.address.socket_address.address,
             e.endpoint.address.socket_address.port_value,
             dict(e.metadata.filter_metadata["envoy.transport_socket_match"]))
            for g in cla.endpoints for e in g.lb_endpoints]


SNI_BACKUP = "backup.dc2.internal.meshcore"


def test_a_failover_target_of_another_datacenter_goes_through_the_gateways(tmp_path):
    _write_ledger(tmp_path, "local")
    a1 = _build(_snapshot(tmp_path, LEDGER_FAILOVER), "a1")
    assert "10.2.0." not in _json(a1) and "192.0.2." not in _json(a1)  # no dc2 address: dc1's gateway only
    # ledger's own instance (dc1) first, backup (dc2 only) next, through gw1 with backup's SNI
    assert _endpoints(_cla(a1, "outbound:ledger")) == [
        ("dc1", 0, "10.1.0.2", 21002, {}), ("dc2", 1, "10.1.0.9", 8443, {"mesh-gateway-sni": SNI_BACKUP})]
    cluster = next(c for c in a1[CLUSTER] if c.name == "outbound:ledger|web")
    assert _match_snis(cluster) == {json.dumps({"mesh-gateway-sni": SNI_BACKUP}): (
        SNI_BACKUP, ["spiffe://cluster.local/ns/default/sa/backup"])}
    # dc2's gateway routes backup's SNI to backup's sidecar (it is a service of its datacenter)
    chains = _chains(next(x for x in _build(_snapshot(tmp_path, LEDGER_FAILOVER), "gw2")[LISTENER]
                          if x.name.endswith(":wan") is False))
    assert chains["service:backup"] == ([SNI_BACKUP], "mesh_gateway:service:backup.dc2", False)


def test_failover_targets_follow_remote_and_none_modes(tmp_path):
    _write_ledger(tmp_path / "remote", "remote")
    remote = _build(_snapshot(tmp_path / "remote", LEDGER_FAILOVER), "a1")
    assert _endpoints(_cla(remote, "outbound:ledger"))[1] == (
        "dc2", 1, "192.0.2.2", 8443, {"mesh-gateway-sni": SNI_BACKUP})  # dc2's gateway, its WAN address
    _write_ledger(tmp_path / "none", "")
    direct = _build(_snapshot(tmp_path / "none", LEDGER_FAILOVER), "a1")
    assert _endpoints(_cla(direct, "outbound:ledger")) == [("dc1", 0, "10.1.0.2", 21002, {}),
                                                           ("dc2", 1, "10.2.0.1", 21003, {})]
    assert not next(c for c in direct[CLUSTER] if c.name == "outbound:ledger|web").transport_socket_matches


def test_a_failover_target_of_one_datacenter_keeps_only_that_datacenters_instances(tmp_path):
    # backup runs in dc1 (a2) and dc2 (b1); ledger fails over to backup in dc2 only (Consul's Targets[].Datacenter)
    rule = LEDGER_FAILOVER.replace("targets: [{host: backup}]", "targets: [{host: backup, datacenter: dc2}]")
    for mode, dc2_endpoint, matches in (("local", ("10.1.0.9", 8443, {"mesh-gateway-sni": SNI_BACKUP}), 1),
                                        ("", ("10.2.0.1", 21003, {}), 0)):
        root = tmp_path / (mode or "none")
        _write_ledger(root, mode)
        body = {"name": "backup", "id": "backup-a2", "port": 8004, "connect": {"sidecar_service": {"port": 21004}}}
        (root / "a2" / "backup.json").write_text(json.dumps({"service": body}))
        a1 = _build(_snapshot(root, rule), "a1")
        assert _endpoints(_cla(a1, "outbound:ledger")) == [("dc1", 0, "10.1.0.2", 21002, {}),
                                                           ("dc2", 1, *dc2_endpoint)], mode
        cluster = next(c for c in a1[CLUSTER] if c.name == "outbound:ledger|web")
        assert len(cluster.transport_socket_matches) == matches
        # without the datacenter, backup's dc1 instance is a failover endpoint too
        anywhere = _build(_snapshot(root, LEDGER_FAILOVER), "a1")
        assert ("dc1", 1, "10.1.0.2", 21004, {}) in _endpoints(_cla(anywhere, "outbound:ledger")), mode


def test_a_failover_target_at_an_address_an_earlier_priority_uses_gets_a_child_of_an_aggregate_cluster(tmp_path):
    # api (dc1 and dc2) fails over to backup (dc2): api's dc2 group already goes to gw1 with api's SNI, and Envoy
    # keeps one host per address in a cluster, so backup's gw1 endpoint (backup's SNI) goes in a second cluster,
    # after the first in an aggregate cluster of the same name: the priorities keep their order
    from envoy.extensions.clusters.aggregate.v3 import cluster_pb2 as aggregate_pb2

    _write_ledger(tmp_path, "local")
    rule = FAILOVER + "  failover: [{targets: [{host: backup}]}]\n"
    a1 = _build(_snapshot(tmp_path, rule), "a1")
    assert not [c for c in a1[ENDPOINT] if c.cluster_name == "outbound:api"]
    assert _endpoints(_cla(a1, "outbound:api~0")) == [
        ("dc1", 0, "10.1.0.2", 21000, {}), ("dc2", 1, "10.1.0.9", 8443, {"mesh-gateway-dc": "dc2"})]
    assert _endpoints(_cla(a1, "outbound:api~1")) == [
        ("dc2", 0, "10.1.0.9", 8443, {"mesh-gateway-sni": "backup.dc2.internal.meshcore"})]
    clusters = {c.name: c for c in a1[CLUSTER]}
    [name] = [n for n in clusters if n.startswith("outbound:api|") and "~" not in n]
    top = clusters[name]
    assert top.cluster_type.name == "envoy.clusters.aggregate" and top.lb_policy == top.CLUSTER_PROVIDED
    children = aggregate_pb2.ClusterConfig()
    top.cluster_type.typed_config.Unpack(children)
    assert list(children.clusters) == [f"{name}~0", f"{name}~1"]
    for n, child in enumerate(children.clusters):
        kid = clusters[child]
        assert kid.eds_cluster_config.service_name == f"outbound:api~{n}" and kid.alt_stat_name == name
        assert kid.outlier_detection.consecutive_5xx.value == 1  # the rule's policy is each child's
        assert _match_snis(kid) == _match_snis(clusters[children.clusters[0]])  # and both SNIs' matches
    # without the collision (mode none: direct addresses), no aggregate
    _write_ledger(tmp_path / "none", "")
    direct = _build(_snapshot(tmp_path / "none", rule), "a1")
    assert not [c for c in direct[CLUSTER] if c.cluster_type.name]
    assert {p for _, p, *_ in _endpoints(_cla(direct, "outbound:api"))} == {0, 1, 2}


def test_a_route_to_a_host_that_is_no_upstream_goes_through_the_gateways(tmp_path):
    _write_ledger(tmp_path, "local")  # web's proxy-wide mode local (its registration)
    a1 = _build(_snapshot(tmp_path, TO_BACKUP), "a1")
    assert "10.2.0." not in _json(a1)
    assert _endpoints(_cla(a1, "outbound:backup")) == [("dc2", 0, "10.1.0.9", 8443, {"mesh-gateway-dc": "dc2"})]
    cluster = next(c for c in a1[CLUSTER] if c.name == "outbound:backup|web")
    assert _match_snis(cluster) == {json.dumps({"mesh-gateway-dc": "dc2"}): (
        SNI_BACKUP, ["spiffe://cluster.local/ns/default/sa/backup"])}
    _write_ledger(tmp_path / "none", "")
    direct = _build(_snapshot(tmp_path / "none", TO_BACKUP), "a1")
    assert _endpoints(_cla(direct, "outbound:backup")) == [("dc2", 0, "10.2.0.1", 21003, {})]


def test_a_route_to_a_host_that_is_no_upstream_follows_the_config_entries(tmp_path):
    from meshcore.consul_entries import entries_from_text
    from meshcore.consul_entries.defaults import entry_defaults, with_defaults

    _write_ledger(tmp_path, "")  # no mode in any registration: the entries decide
    entries = entries_from_text(json.dumps([
        {"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}},
        {"Kind": "service-defaults", "Name": "web",
         "UpstreamConfig": {"Overrides": [{"Name": "backup", "MeshGateway": {"Mode": "remote"}}]}}]), "entries.json")
    catalog = with_defaults(FileCatalogSource(tmp_path).poll(None, 0).catalog, entry_defaults(entries))
    [web] = catalog.instances_of("web")
    assert web.mesh_gateway_defaults == (("", "local"), ("backup", "remote"))
    a1 = _build(MeshSnapshot.build(catalog, load_documents(TO_BACKUP + "---\n" + TO_BACKUP.replace(
        "api-to-backup", "ledger-to-store").replace("[api]", "[ledger]").replace("host: backup", "host: store"),
        "p.yaml")), "a1")
    # backup: the Overrides entry (remote: dc2's gateway, WAN); store is an upstream of web (in dc2) already
    assert _endpoints(_cla(a1, "outbound:backup"))[0][2:4] == ("192.0.2.2", 8443)
    assert _endpoints(_cla(a1, "outbound:store.dc2"))[0][2:4] == ("10.1.0.9", 8443)  # proxy-defaults: local


def test_a_subset_failover_target_of_another_datacenter_names_the_subset_in_its_sni(tmp_path):
    _write_versions(tmp_path, "local")
    (tmp_path / "b2" / "api.json").unlink()  # api v1 in dc1 only (a2), v2 in dc2 only (b1)
    rule = SUBSETS.replace("  subsets:", "  failover: [{subset: v1, targets: [{subset: v2}]}]\n  subsets:")
    snap = _snapshot(tmp_path, rule)
    a1 = _build(snap, "a1")
    v2_sni = "v2.api.dc2.internal.meshcore"
    assert _endpoints(_cla(a1, "outbound:api|v1")) == [
        ("dc1", 0, "10.1.0.2", 21000, {}), ("dc2", 1, "10.1.0.9", 8443, {"mesh-gateway-sni": v2_sni})]
    cluster = next(c for c in a1[CLUSTER] if c.name == "outbound:api|web|v1")
    assert _match_snis(cluster)[json.dumps({"mesh-gateway-sni": v2_sni})] == (
        v2_sni, ["spiffe://cluster.local/ns/default/sa/api"])
    gw2 = next(x for x in _build(snap, "gw2")[LISTENER] if not x.name.endswith(":wan"))
    assert _chains(gw2)["subset:api|v2"][:2] == ([v2_sni], "mesh_gateway:service:api.dc2|v2")
