"""End to end: policy denials and audits per caller in the agent's /metrics, counted from Envoy's access log.

A bookinfo mesh (``_topology.py``) with JSON access logs per node; a DENY policy refuses POST to
productpage and an AUDIT policy watches GET. A POST through the ingress gateway must show up on
productpage's node (n1) as ``meshcore_policy_denied_total{source_service="ingress-gateway",
destination_service="productpage", policy="default/productpage-no-post"}``, with no ``unknown`` series
beside it (the log replaces the RBAC-counter totals), and the GETs as ``meshcore_policy_audited_total``.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from meshcore.demo.launcher import http_get, wait_until

from ._topology import running_mesh

POLICIES = """apiVersion: security.mesh.io/v1beta1
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
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: productpage-watch-get
spec:
  selector:
    matchLabels:
      app: productpage
  action: AUDIT
  rules:
  - to:
    - operation:
        methods: ["GET"]
"""
EDGE = {"source_service": "ingress-gateway", "destination_service": "productpage"}


@pytest.fixture(scope="module")
def mesh(tmp_path_factory):
    state = tmp_path_factory.mktemp("denials-mesh")
    with running_mesh(state, artifacts="policy-denials", agent_refresh="2s",
                      access_log=str(state / "logs" / "access-{node}.log")) as m:
        yield m


def _post_status(url: str) -> int:
    req = urllib.request.Request(url, data=b"x", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _samples(mesh, node: str) -> list:
    with urllib.request.urlopen(f"http://{mesh.layout.metrics[node]}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return [s for f in text_string_to_metric_families(text) for s in f.samples]


def _value(samples, name: str, **labels) -> float | None:
    hits = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(hits) if hits else None


def test_denied_post_from_the_gateway_is_counted_per_caller(mesh):
    mesh.wait_synced(60)
    wait_until(lambda: _value(_samples(mesh, "n1"), "meshcore_agent_access_log_following") == 1, 30,
               "n1's agent to follow its Envoy's access log")
    mesh._post("/v1/resources", {"files": [{"name": "policies.yaml", "content": POLICIES}]})
    deadline = time.monotonic() + 30
    while _post_status(mesh.gateway + "/productpage") != 403:  # the policy reaches n1's Envoy
        assert time.monotonic() < deadline, "POST /productpage was never refused"
        time.sleep(0.5)
    for _ in range(2):
        assert _post_status(mesh.gateway + "/productpage") == 403
    status, body = http_get(mesh.url)
    assert status == 200, body

    policy = "default/productpage-no-post"

    def denied() -> float:
        return _value(_samples(mesh, "n1"), "meshcore_policy_denied_total", policy=policy, **EDGE) or 0.0

    wait_until(lambda: denied() >= 3, 30, "the denied POSTs in n1's meshcore_policy_denied_total per caller")
    samples = _samples(mesh, "n1")
    series = [s for s in samples if s.name == "meshcore_policy_denied_total"]
    assert all(s.labels["source_service"] != "unknown" for s in series), series  # the log replaces the totals
    assert {s.labels["destination_service"] for s in series} == {"productpage"}

    def audited() -> float:
        # The one GET above is audited: policies are route (RDS) config, so pooled connections get them too.
        return _value(_samples(mesh, "n1"), "meshcore_policy_audited_total",
                      policy="default/productpage-watch-get", **EDGE) or 0.0

    wait_until(lambda: audited() >= 1, 30, "the audited GET in n1's meshcore_policy_audited_total")
    # the other nodes denied nothing
    assert _value(_samples(mesh, "n2"), "meshcore_policy_denied_total") is None
