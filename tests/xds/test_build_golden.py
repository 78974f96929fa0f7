"""Golden tests of the Envoy configuration built for the bookinfo demo's proxies.

The snapshot comes through the real code path: the demo's Consul service-definition files,
read by the file catalog source, resources parsed by the resource loader, the composer's build.
Each case is kept twice, as Consul keeps ``agent/xds/testdata/<type>/<case>.golden``:

* ``golden/<case>.json``: the whole proxy, every type;
* ``golden/<type>/<case>.golden``: one xDS type (listeners, routes, clusters, endpoints; secrets are
  always empty, private keys never leave the VM), so a change shows up in the type it touches.

Every policy plugin has at least one case of its own (:data:`POLICY_CASES`). A policy kind with its own
folder keeps its cases there, as Kuma does: ``meshcore/policies/<kind>/testdata/<case>.input.yaml`` (first
line ``# node: <node>``) beside ``<case>.<type>.golden``. Run
``pytest tests/xds/test_build_golden.py --update-golden`` after an intended change and review the diff.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from google.protobuf import json_format

from meshcore.authz.providers import parse_mesh_config, parse_mesh_settings
from meshcore.policies.request_authentication.trust import Discovered
from meshcore.catalog.files import FileCatalogSource
from meshcore.resources.loader import load_documents
from meshcore.policies import PLUGINS
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo, TelemetrySettings
from meshcore.xds._typeurls import CLUSTER, ENDPOINT, LISTENER, ROUTE
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
# Istio's bookinfo delay sample as Istio writes it: the deprecated integer ``percent`` (honoured, as by Istio).
RATINGS_DELAY_PERCENT = """\
apiVersion: networking.mesh.io/v1beta1
kind: VirtualService
metadata: {name: ratings}
spec:
  hosts: [ratings]
  http:
  - match:
    - headers: {end-user: {exact: jason}}
    fault: {delay: {percent: 30, fixedDelay: 7s}}
    route:
    - destination: {host: ratings}
  - route:
    - destination: {host: ratings}
"""


def _snapshot(resources_text: str = "", settings: MeshSettings | None = None) -> MeshSnapshot:
    catalog = FileCatalogSource(CATALOG).poll(None, 0).catalog
    resources = load_documents(resources_text, "inline.yaml") if resources_text else []
    if settings is None:
        return MeshSnapshot.build(catalog, resources)
    base = MeshSnapshot.build(catalog, resources)
    return MeshSnapshot.build(catalog, resources, base.trust_domain, settings)


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
    "vm3-traffic-ratings-delay-percent": (RATINGS_DELAY_PERCENT, "vm3"),
    "vm1-traffic-reviews-destination-rule": ((TRAFFIC / "reviews-destination-rule.yaml").read_text(), "vm1"),
    "vm3-ratelimit-ratings": ((TRAFFIC / "ratings-rate-limit.yaml").read_text(), "vm3"),
    "vm1-telemetry": ("", "vm1"),
    "vm2-jwt-details": ((POLICIES / "details-jwt.yaml").read_text(), "vm2"),
    "gateway-bookinfo-gateway": ((POLICIES / "bookinfo-gateway.yaml").read_text(), "gateway"),
    "vm1-authz-ext-authz": ((POLICIES / "productpage-ext-authz.yaml").read_text(), "vm1"),
    "vm1-egress-service-entry": ((ROOT / "meshcore" / "policies" / "service_entry" / "testdata"
                                  / "vm1-egress-tls-allow-any.input.yaml").read_text(), "vm1"),
    "vm1-sidecar-scoped": ((ROOT / "meshcore" / "policies" / "sidecar" / "testdata"
                            / "vm1-scoped-registry-only.input.yaml").read_text(), "vm1"),
    "vm2-jwt-discovered": ((ROOT / "meshcore" / "policies" / "request_authentication" / "testdata"
                            / "discovered.yaml").read_text(), "vm2"),
}

SETTINGS = {
    # JSON access logs to a per-node file, and tracing to an OTLP collector (adds its cluster).
    "vm1-telemetry": MeshSettings(telemetry=TelemetrySettings(
        tracing_otlp="127.0.0.1:4317", tracing_sampling=10.0, access_log="/var/log/envoy/{node}.log")),
    # CUSTOM authorization: the external authorizers of the example mesh config.
    "vm1-authz-ext-authz": MeshSettings(ext_authz_providers=parse_mesh_config((POLICIES / "mesh-config.yaml").read_text())),
    # JWKS trust from the mesh config (a CA for one server, the mesh-wide one for the rest) and an OIDC discovery result.
    "vm2-jwt-discovered": MeshSettings(jwks=dataclasses.replace(parse_mesh_settings(
        "jwks: {caCertificates: /etc/meshcore/jwks-ca.pem, servers: [{host: login.example.com, caCertificates: "
        "/etc/pki/login-ca.pem}]}").jwks, discovered=(Discovered("https://login.example.com/realms/shop",
                                                                 "https://login.example.com/realms/shop/certs"),))),
}

POLICY_CASES = {
    "PeerAuthentication": "vm2-details-permissive",
    "AuthorizationPolicy": "vm1-authz-productpage-get-only",
    "DestinationRule": "vm1-traffic-reviews-destination-rule",
    "VirtualService": "vm2-traffic-ratings-abort",
    "RateLimit": "vm3-ratelimit-ratings",
    "Telemetry": "vm1-telemetry",
    "RequestAuthentication": "vm2-jwt-details",
    "Gateway": "gateway-bookinfo-gateway",
    "ServiceEntry": "vm1-egress-service-entry",
    "Sidecar": "vm1-sidecar-scoped",
}
"""One case per policy plugin that exercises it (with that policy, and only it, on a plain node)."""

TYPE_DIRS = {LISTENER: "listeners", ROUTE: "routes", CLUSTER: "clusters", ENDPOINT: "endpoints"}

POLICY_TESTDATA = sorted((ROOT / "meshcore" / "policies").glob("*/testdata/*.input.yaml"))
"""The cases kept in policy folders."""


def _folder_case(path: Path) -> tuple[str, str]:
    """(resources text, node) of a policy folder's case; the node is named on its first line."""
    text = path.read_text()
    first = text.splitlines()[0] if text else ""
    if not first.startswith("# node: "):
        pytest.fail(f"{path}: the first line must name the proxy's node, e.g. '# node: vm1'")
    return text, first.removeprefix("# node: ").strip()


def _built(case: str) -> dict:
    resources_text, node = CASES[case]
    proxy = ProxyInfo(node=node, secrets_dir="/var/lib/meshcore-agent/secrets", admin="127.0.0.1:19000")
    built = build_proxy(_snapshot(resources_text, SETTINGS.get(case)), proxy)
    assert validate_snapshot(node, built) == []
    return built


def _compare(path: Path, rendered: str, update: bool) -> None:
    if update or not path.exists():
        if not update:
            pytest.fail(f"{path.relative_to(ROOT)} does not exist; run with --update-golden to create it, then review it")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rendered)
    assert rendered == path.read_text(), (f"{path.relative_to(ROOT)} differs; if intended, rerun with "
                                          "--update-golden and review")


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case, update_golden):
    rendered = json.dumps(_render(_built(case)), indent=2, sort_keys=True) + "\n"
    _compare(GOLDEN / f"{case}.json", rendered, update_golden)


@pytest.mark.parametrize("type_url", sorted(TYPE_DIRS), ids=lambda t: TYPE_DIRS[t])
@pytest.mark.parametrize("case", sorted(CASES))
def test_golden_per_type(case, type_url, update_golden):
    messages = _built(case)[type_url]
    rendered = json.dumps([json_format.MessageToDict(m) for m in messages], indent=2, sort_keys=True) + "\n"
    _compare(GOLDEN / TYPE_DIRS[type_url] / f"{case}.golden", rendered, update_golden)


@pytest.mark.parametrize("type_url", sorted(TYPE_DIRS), ids=lambda t: TYPE_DIRS[t])
@pytest.mark.parametrize("path", POLICY_TESTDATA, ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_policy_folder_golden(path, type_url, update_golden):
    text, node = _folder_case(path)
    proxy = ProxyInfo(node=node, secrets_dir="/var/lib/meshcore-agent/secrets", admin="127.0.0.1:19000")
    built = build_proxy(_snapshot(text), proxy)
    assert validate_snapshot(node, built) == []
    rendered = json.dumps([json_format.MessageToDict(m) for m in built[type_url]], indent=2, sort_keys=True) + "\n"
    case = path.name.removesuffix(".input.yaml")
    _compare(path.with_name(f"{case}.{TYPE_DIRS[type_url]}.golden"), rendered, update_golden)


def test_every_policy_kind_keeps_its_cases_in_its_folder():
    """Every plugin of a resource kind has a folder (``CamelCase`` -> ``snake_case``) with a case in ``testdata/``."""
    folders = {p.parent.parent.name for p in POLICY_TESTDATA}
    kinds = {name for name, _plugin in PLUGINS if name != "Telemetry"}  # Telemetry reads settings, not a kind
    expected = {"".join("_" + ch.lower() if ch.isupper() else ch for ch in kind).lstrip("_") for kind in kinds}
    assert "destination_rule" in expected and "rate_limit" in expected  # the name mapping itself
    assert expected <= folders, f"policy kinds without a golden case in their folder: {sorted(expected - folders)}"


def test_every_policy_plugin_has_a_golden_case():
    assert set(POLICY_CASES) == {name for name, _plugin in PLUGINS}
    assert set(POLICY_CASES.values()) <= set(CASES)


@pytest.mark.parametrize("kind", sorted(POLICY_CASES))
def test_policy_case_exercises_its_plugin(kind):
    """The case holds that kind (or, for Telemetry, its settings) and its output differs from the plain node's."""
    case = POLICY_CASES[kind]
    text, node = CASES[case]
    snap = _snapshot(text, SETTINGS.get(case))
    if kind == "Telemetry":
        assert snap.settings.telemetry != TelemetrySettings()
    else:
        assert {r.kind for r in snap.resources_of(kind)} == {kind}
    assert _render(_built(case)) != _render(_built(node))


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
