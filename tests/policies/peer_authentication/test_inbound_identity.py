"""Who may call a service over mTLS, as generated: workload SVIDs of the local and federated trust domains only.

The CA signs node (``/meshcore/node/<node>``), control plane and operator certificates under the same roots as
workload SVIDs; none of them is a workload, so every inbound TLS context refuses them in the handshake, in
STRICT and PERMISSIVE modes alike. The upstream side: a sidecar's cluster accepts only the exact workload
identities of the destination, so a node certificate cannot serve as a service either.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace

import pytest

from envoy.extensions.transport_sockets.tls.v3 import tls_pb2

from meshcore import naming
from meshcore.compose import build_proxy
from meshcore.snapshot import MeshSettings, ProxyInfo
from meshcore.xds.generate import CLUSTER, LISTENER
from meshcore.xds.generate.vocab import workload_san_regex

from .._catalog import snapshot, write_catalog

TD, OTHER = "cluster.local", "other.example"
PERMISSIVE = """\
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata: {name: mesh, namespace: meshcore-system}
spec: {mtls: {mode: PERMISSIVE}}
"""

ACCEPTED = [
    naming.workload_spiffe_id(TD, "default", "productpage"),
    naming.workload_spiffe_id(TD, "shop", "cart-2"),
    naming.workload_spiffe_id(OTHER, "default", "client"),
]
REFUSED = [
    naming.node_spiffe_id(TD, "n1"),
    naming.node_spiffe_id(OTHER, "n1"),
    naming.control_plane_spiffe_id(TD),
    naming.operator_spiffe_id(TD, "alice"),
    f"spiffe://{TD}",  # a CA's own URI SAN
    f"spiffe://{TD}/ns/default/sa/x/extra",
    f"spiffe://{TD}/ns/default/node/n1",
    f"spiffe://{TD}/ns//sa/x",
    "spiffe://clusterXlocal/ns/default/sa/x",  # the dot is literal
    f"spiffe://{TD}.evil/ns/default/sa/x",
    "spiffe://unfederated.example/ns/default/sa/x",
    f"xspiffe://{TD}/ns/default/sa/x",
]


def _proxy_resources(tmp_path, policies: str = "", federated: bool = True) -> dict:
    write_catalog(tmp_path / "catalog", [{"name": "details"}, {"name": "ratings", "protocol": "tcp"},
                                         {"name": "reviews", "meta": {}}])
    snap = snapshot(tmp_path / "catalog", policies)
    if federated:
        snap = replace(snap, settings=MeshSettings(federated_bundles=((OTHER, "-----PEM-----"),)))
    return build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))


def _tls_chains(listener) -> list[tuple[str, tls_pb2.DownstreamTlsContext]]:
    out = []
    for chain in listener.filter_chains:
        if chain.HasField("transport_socket"):
            ctx = tls_pb2.DownstreamTlsContext()
            assert chain.transport_socket.typed_config.Unpack(ctx)
            out.append((chain.name, ctx))
    return out


def _accepts(ctx: tls_pb2.DownstreamTlsContext, uri: str) -> bool:
    """Envoy's decision on a client certificate with the one URI SAN ``uri`` (its chain verified): some matcher
    matches the SAN (a ``safe_regex`` matches the whole string; no matchers at all would accept anything)."""
    matchers = ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert matchers, "no SAN matcher: every certificate of the roots would be accepted"
    for m in matchers:
        assert m.san_type == m.URI
        kind = m.matcher.WhichOneof("match_pattern")
        if kind == "safe_regex" and re.fullmatch(m.matcher.safe_regex.regex, uri):
            return True
        if kind == "exact" and m.matcher.exact == uri:
            return True
        if kind == "prefix" and uri.startswith(m.matcher.prefix):
            return True
    return False


@pytest.mark.parametrize("mode", ["STRICT", "PERMISSIVE"])
def test_every_inbound_tls_chain_accepts_workloads_only(tmp_path, mode):
    built = _proxy_resources(tmp_path, PERMISSIVE if mode == "PERMISSIVE" else "")
    inbound = [l for l in built[LISTENER] if l.name.startswith("inbound:")]
    assert len(inbound) == 3
    for listener in inbound:
        chains = _tls_chains(listener)
        assert [name for name, _ in chains] == ["mtls"], listener.name
        plaintext = [c for c in listener.filter_chains if c.name == "plaintext"]
        assert len(plaintext) == (1 if mode == "PERMISSIVE" else 0)
        [(_, ctx)] = chains
        assert ctx.require_client_certificate.value is True
        for uri in ACCEPTED:
            assert _accepts(ctx, uri), (listener.name, uri)
        for uri in REFUSED:
            assert not _accepts(ctx, uri), (listener.name, uri)


def test_matchers_are_one_workload_regex_per_trust_domain(tmp_path):
    built = _proxy_resources(tmp_path)
    listener = next(l for l in built[LISTENER] if l.name.startswith("inbound:details"))
    [(_, ctx)] = _tls_chains(listener)
    matchers = ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
    assert [m.matcher.safe_regex.regex for m in matchers] == [workload_san_regex(TD), workload_san_regex(OTHER)]
    assert workload_san_regex(TD) == r"spiffe://cluster\.local/ns/[^/]+/sa/[^/]+"


def test_without_federation_other_domains_workloads_are_refused(tmp_path):
    built = _proxy_resources(tmp_path, federated=False)
    for listener in (l for l in built[LISTENER] if l.name.startswith("inbound:")):
        [(_, ctx)] = _tls_chains(listener)
        assert _accepts(ctx, naming.workload_spiffe_id(TD, "default", "productpage"))
        assert not _accepts(ctx, naming.workload_spiffe_id(OTHER, "default", "client"))


def test_upstream_clusters_accept_only_the_destinations_workload_identities(tmp_path):
    """A node certificate cannot serve as a service: mTLS upstream clusters match exact workload SVIDs."""
    catalog = tmp_path / "catalog"
    write_catalog(catalog, [{"name": "details"}], node="n2")
    write_catalog(catalog, [{"name": "productpage"}], node="n1")
    # productpage declares details as an upstream
    path = catalog / "n1" / "productpage.json"
    definition = json.loads(path.read_text())
    definition["service"]["connect"]["sidecar_service"]["proxy"]["upstreams"] = [
        {"destination_name": "details", "local_bind_port": 19001}]
    path.write_text(json.dumps(definition))
    built = build_proxy(snapshot(catalog), ProxyInfo(node="n1", secrets_dir="/s"))
    upstream = [cl for cl in built[CLUSTER] if cl.HasField("transport_socket")]
    assert upstream, "no mTLS upstream cluster was built"
    for cluster in upstream:
        ctx = tls_pb2.UpstreamTlsContext()
        assert cluster.transport_socket.typed_config.Unpack(ctx)
        matchers = ctx.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names
        assert [(m.matcher.WhichOneof("match_pattern"), m.matcher.exact) for m in matchers] == [
            ("exact", naming.workload_spiffe_id(TD, "default", "details"))], cluster.name
        assert naming.node_spiffe_id(TD, "n2") not in {m.matcher.exact for m in matchers}
