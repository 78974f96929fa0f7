"""Golden tests of the Envoy configuration built for the bookinfo demo's proxies.

The snapshot comes through the real code path: the demo's Consul service-definition files,
read by the file catalog source, resources parsed by the resource loader. Run
``pytest tests/xds/test_build_golden.py --update-golden`` after an intended change and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from meshcore.catalog.files import FileCatalogSource
from meshcore.resources.loader import load_documents
from meshcore.snapshot import MeshSnapshot, ProxyInfo
from meshcore.compose import build_proxy
from meshcore.xds.validate import validate_snapshot

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"
CATALOG = ROOT / "examples" / "bookinfo" / "consul.d"

PERMISSIVE_DETAILS = """
apiVersion: security.mesh.io/v1beta1
kind: PeerAuthentication
metadata:
  name: details-permissive
spec:
  selector:
    matchLabels:
      app: details
  mtls:
    mode: PERMISSIVE
"""

# AuthorizationPolicy cases: the example policies, plus DENY and AUDIT policies on details.
POLICIES = ROOT / "examples" / "policies"
AUTHZ_DETAILS = (POLICIES / "details-from-productpage.yaml").read_text() + """
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: details-no-debug
spec:
  selector:
    matchLabels:
      app: details
  action: DENY
  rules:
  - when:
    - key: request.headers[x-debug]
      values: ["*"]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata:
  name: audit-writes
spec:
  action: AUDIT
  rules:
  - to:
    - operation:
        notMethods: ["GET", "HEAD"]
"""

# Traffic management cases: the examples in examples/traffic.
TRAFFIC = ROOT / "examples" / "traffic"
REVIEWS_CANARY = (TRAFFIC / "reviews-destination-rule.yaml").read_text() + "---\n" + (TRAFFIC / "reviews-canary.yaml").read_text()


def _snapshot(resources_text: str = "") -> MeshSnapshot:
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    resources = load_documents(resources_text, "inline.yaml") if resources_text else []
    return MeshSnapshot.build(catalog, resources)


def _render(resources: dict) -> dict:
    return {type_url.rsplit(".", 1)[-1]: [json_format.MessageToDict(m) for m in msgs]
            for type_url, msgs in sorted(resources.items())}


CASES = {
    "vm1": ("", "vm1"),
    "vm2": ("", "vm2"),
    "vm3": ("", "vm3"),
    "gateway": ("", "gateway"),
    "vm2-details-permissive": (PERMISSIVE_DETAILS, "vm2"),
    "vm1-authz-productpage-get-only": ((POLICIES / "productpage-get-only.yaml").read_text(), "vm1"),
    "vm2-authz-details": (PERMISSIVE_DETAILS + "---\n" + AUTHZ_DETAILS, "vm2"),
    "vm3-authz-deny-all": ((POLICIES / "deny-all.yaml").read_text(), "vm3"),
    "vm1-traffic-reviews-canary": (REVIEWS_CANARY, "vm1"),
    "vm2-traffic-ratings-abort": ((TRAFFIC / "ratings-abort.yaml").read_text(), "vm2"),
    "vm3-traffic-ratings-delay": ((TRAFFIC / "ratings-delay-for-jason.yaml").read_text(), "vm3"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, update_golden):
    resources_text, node = CASES[case]
    snap = _snapshot(resources_text)
    proxy = ProxyInfo(node=node, secrets_dir="/var/lib/meshcore-agent/secrets", admin="127.0.0.1:19000")
    built = build_proxy(snap, proxy)
    assert validate_snapshot(node, built) == []
    rendered = json.dumps(_render(built), indent=2, sort_keys=True) + "\n"
    path = GOLDEN / f"{case}.json"
    if update_golden or not path.exists():
        if not update_golden:
            pytest.fail(f"{path.name} does not exist; run with --update-golden to create it, then review it")
        path.write_text(rendered)
    assert rendered == path.read_text(), f"{path.name} differs; if intended, rerun with --update-golden and review"


def test_build_is_deterministic():
    snap = _snapshot()
    proxy = ProxyInfo(node="vm1", secrets_dir="/s")
    a = _render(build_proxy(snap, proxy))
    b = _render(build_proxy(_snapshot(), proxy))
    assert a == b


def test_only_own_node_config():
    """A proxy's listeners are exactly its own node's services and upstreams, nothing of other nodes."""
    snap = _snapshot()
    from meshcore.xds.generate import LISTENER

    names = {l.name for l in build_proxy(snap, ProxyInfo(node="vm3", secrets_dir="/s"))[LISTENER]}
    assert names == {"inbound:ratings-v1", "inbound:reviews-v3", "outbound:ratings:9093"}


def test_unhealthy_instances_are_not_endpoints():
    from dataclasses import replace

    from meshcore.catalog.model import Catalog
    from meshcore.xds.generate import ENDPOINT

    snap = _snapshot()
    instances = [replace(i, healthy=False) if i.id == "reviews-v2" else i for i in snap.catalog.instances]
    snap2 = MeshSnapshot.build(Catalog.of(snap.catalog.nodes, instances), ())
    cla = {c.cluster_name: c for c in build_proxy(snap2, ProxyInfo(node="vm1", secrets_dir="/s"))[ENDPOINT]}
    ports = sorted(
        ep.endpoint.address.socket_address.address for loc in cla["outbound:reviews"].endpoints for ep in loc.lb_endpoints
    )
    assert ports == ["127.0.0.11", "127.0.0.13"]
