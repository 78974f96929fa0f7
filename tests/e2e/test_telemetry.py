"""End to end: Envoy traces and access logs, and the control plane's own spans, from a running mesh.

One bookinfo mesh (``_topology.py``) started with ``--tracing-otlp`` pointing at a real OTLP/gRPC collector
this test runs, 100% sampling, and JSON access logs per node. Requests through the ingress gateway must
arrive as ONE trace each across ingress-gateway, productpage, reviews and ratings (same trace id, every
parent inside the trace); the access log lines carry that trace id, the peers' SPIFFE IDs and, for a call
an AuthorizationPolicy denies, the policy and ``denied``.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

import pytest

from meshcore.demo.launcher import http_get, wait_until

from ._otlp import Collector
from ._topology import running_mesh

DENY_POST = """apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: productpage-no-post
spec:
  selector:
    matchLabels:
      app: productpage
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["POST"]
"""
HOPS = {"ingress-gateway", "productpage", "reviews", "ratings"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    state = tmp_path_factory.mktemp("telemetry-mesh")
    with Collector() as collector:
        with running_mesh(state, artifacts="telemetry", agent_refresh="2s", tracing_otlp=collector.address,
                          tracing_sampling=100.0, access_log=str(state / "logs" / "access-{node}.log")) as mesh:
            yield mesh, collector


def _log(mesh, node: str) -> list[dict]:
    path = Path(mesh.state) / "logs" / f"access-{node}.log"
    return [json.loads(l) for l in path.read_text().splitlines() if l.strip()] if path.exists() else []


def _traces(collector) -> dict[str, list]:
    out = defaultdict(list)
    for s in collector.spans():
        out[s.trace_id].append(s)
    return out


def _full(spans) -> bool:
    return HOPS <= {s.service for s in spans}


def test_one_trace_per_request_across_every_hop(world):
    mesh, collector = world
    sent = 0
    while sent < 6:  # reviews v1 does not call ratings: send until enough requests reached v2/v3
        status, body = http_get(mesh.url)
        assert status == 200, body
        sent += 1

    def full_traces():
        return [t for t, spans in _traces(collector).items() if _full(spans)]

    def problems() -> list:
        """What is still wrong with the traces received (Envoys export in batches, about every 5 s)."""
        traces, out = _traces(collector), []
        if len(full_traces()) < 2:
            out.append(f"{len(full_traces())} traces span every hop")
        for trace_id in full_traces():
            spans = traces[trace_id]
            ids = {s.span_id for s in spans}
            roots = [(s.service, s.name) for s in spans if not s.parent_span_id]
            if len(roots) != 1 or roots[0][0] != "ingress-gateway":
                out.append(f"trace {trace_id} roots {roots}")
            orphans = [(s.service, s.name) for s in spans if s.parent_span_id and s.parent_span_id not in ids]
            if orphans:
                out.append(f"trace {trace_id} spans without their parent {orphans}")
            if len(spans) < 6:  # gateway out, productpage in/out, reviews in/out, ratings in
                out.append(f"trace {trace_id} has {len(spans)} spans")
        envoy_traces = {t for t, spans in traces.items() if any(s.service == "ingress-gateway" for s in spans)}
        if len(envoy_traces) < sent:  # one trace per request, not one trace for all of them
            out.append(f"{len(envoy_traces)} gateway traces for {sent} requests")
        return out

    deadline = time.monotonic() + 60
    while problems() and time.monotonic() < deadline:
        time.sleep(1)
    assert problems() == []

    # the gateway's access log names the same trace ids
    def logged() -> set:
        return {l["trace_id"] for l in _log(mesh, "gw") if l["direction"] == "outbound"}

    wait_until(lambda: set(full_traces()) <= logged(), 15, "the gateway's access log to name the traces")


def test_control_plane_traces_its_own_work(world):
    mesh, collector = world
    before = mesh.status()["control_plane"]["snapshot"]
    mesh._post("/v1/resources", {"files": [{"name": "deny-post.yaml", "content": DENY_POST}]})
    wait_until(lambda: mesh.status()["control_plane"]["snapshot"] != before, 20, "a new snapshot")

    def rebuild_trace():
        for spans in _traces(collector).values():
            names = {s.name for s in spans if s.service == "meshcore-control-plane"}
            publishes = [s for s in spans if s.name == "proxy build+publish"]
            if "resources change" in names and "snapshot rebuild" in names and publishes:
                return spans
        return None

    wait_until(lambda: rebuild_trace() is not None, 30, "the control plane's spans of the policy change")
    spans = rebuild_trace()
    by_id = {s.span_id: s for s in spans}
    rebuild = next(s for s in spans if s.name == "snapshot rebuild")
    assert by_id[rebuild.parent_span_id].name == "resources change"
    # Each proxy's build hangs off the change that caused it (beside the snapshot update, which ends first).
    nodes = {s.attributes.get("meshcore.node") for s in spans if s.name == "proxy build+publish"
             and s.parent_span_id == rebuild.parent_span_id}
    # The policy selects productpage (on n1): the incremental engine rebuilds that proxy and no other.
    assert nodes == {"n1"}


def test_access_log_lines_name_peers_and_the_denying_policy(world):
    mesh, _ = world
    mesh.wait_synced(30)
    status, _ = _post_status(mesh.gateway + "/productpage")
    deadline = time.monotonic() + 15
    while status != 403 and time.monotonic() < deadline:  # the policy reaches n1's Envoy
        time.sleep(0.5)
        status, _ = _post_status(mesh.gateway + "/productpage")
    assert status == 403
    td = "spiffe://cluster.local/ns/default/sa"

    def denied_lines():
        return [l for l in _log(mesh, "n1") if l["direction"] == "inbound" and l["method"] == "POST"
                and l["response_code"] == 403]

    wait_until(lambda: denied_lines(), 15, "the denied POST in n1's access log")
    line = denied_lines()[-1]
    assert line["service"] == "productpage" and line["node"] == "n1"
    assert (line["rbac_result"], line["rbac_policy"]) == ("denied", "default/productpage-no-post[0]")
    assert line["source_spiffe_id"] == f"{td}/ingress-gateway"
    assert line["destination_spiffe_id"] == f"{td}/productpage"
    assert line["destination_port"] == mesh.defs["productpage-v1"]["connect"]["sidecar_service"]["port"]

    assert http_get(mesh.gateway + "/productpage")[0] == 200  # GET passes the DENY stage

    def allowed():
        return [l for l in _log(mesh, "n1") if l["direction"] == "inbound" and l["method"] == "GET"
                and l["service"] == "productpage" and l["rbac_result"] == "allowed"]

    wait_until(allowed, 15, "an allowed GET in n1's access log")
    assert allowed()[-1]["rbac_policy"] == ""  # no DENY rule matched, no ALLOW policy selects productpage
    outbound = [l for l in _log(mesh, "n1") if l["direction"] == "outbound" and l["response_code"] == 200]
    assert outbound, "productpage's calls to details/reviews are not logged"
    call = outbound[-1]
    assert call["source_spiffe_id"] == f"{td}/productpage"
    assert call["destination_spiffe_id"] in (f"{td}/details", f"{td}/reviews")
    assert call["upstream_host"] and call["upstream_cluster"].startswith("outbound:")
    assert call["trace_id"] and isinstance(call["duration_ms"], int)
    logs = {p["node"]: p["access_log"] for p in mesh.status()["proxies"]}
    assert logs["n1"] == str(Path(mesh.state) / "logs" / "access-n1.log")


def _post_status(url: str) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=b"{}", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
