"""RateLimit: validation with field paths, the built local rate limit filters, Envoy accepting them,
and a real Envoy refusing requests beyond the bucket with 429 + retry-after and counting them.
"""

from __future__ import annotations

import http.client
import json
import re
import textwrap
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envoy.extensions.filters.http.local_ratelimit.v3 import local_rate_limit_pb2 as http_rl_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.local_ratelimit.v3 import local_rate_limit_pb2 as net_rl_pb2

from meshcore.errors import ValidationError
from meshcore.policies.rate_limit.filters import method_regex, path_regex, source_regex
from meshcore.resources import load_documents
from meshcore.xds.generate import LISTENER, ROUTE
from meshcore.xds.generate.policy_filters import POLICY_FILTER_NAMES, per_filter_config

from tests.traffic.test_build import _build as build_bookinfo
from tests.traffic.test_build import _validate_with_envoy

from .._catalog import build, write_catalog
from .._envoy import StaticEnvoy, wait_listening

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = (ROOT / "examples" / "traffic" / "ratings-rate-limit.yaml").read_text()
HEAD = "apiVersion: networking.mesh.io/v1beta1\nkind: RateLimit\n"
PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")


def rl(name: str, spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return HEAD + f"metadata: {{name: {name}, namespace: default}}\nspec:\n{body}\n---\n"


def _errors(text: str) -> dict[str, str]:
    with pytest.raises(ValidationError) as info:
        load_documents(text, "rl.yaml")
    return {e.path: e.message for e in info.value.errors}


# --- validation -----------------------------------------------------------------------------------------


def test_the_example_loads():
    [res] = load_documents(EXAMPLE, "rl.yaml")
    assert res.kind == "RateLimit" and [l["name"] for l in res.spec["limits"]] == ["reviews-get", "overall"]


def test_every_error_is_reported_with_its_field_path():
    errors = _errors(rl("bad", """
        selector: {matchLabels: {app: ratings}}
        limits:
        - {maxTokens: 0, fillInterval: 1s}
        - {maxTokens: 5, tokensPerFill: 6, fillInterval: 10ms}
        - {maxTokens: 5, fillInterval: 1}
        - {name: a, maxTokens: 5, fillInterval: 1s, match: {}}
        - {name: a, maxTokens: 5, fillInterval: 1s, match: {paths: ["ratings", "/a*b*"], methods: [get], sources: ["spiffe://cluster.local/ns/default/sa/x"]}}
        - {fillInterval: 1s}
        """))
    assert set(errors) == {
        "spec.limits[0].maxTokens", "spec.limits[1].fillInterval", "spec.limits[2].fillInterval",
        "spec.limits[3].match", "spec.limits[4].match.paths[0]", "spec.limits[4].match.paths[1]",
        "spec.limits[4].match.methods[0]", "spec.limits[4].match.sources[0]", "spec.limits[5].maxTokens",
    }, errors
    assert "50ms" in errors["spec.limits[1].fillInterval"]
    assert 'write "1s"' in errors["spec.limits[2].fillInterval"]
    assert "GET" in errors["spec.limits[4].match.methods[0]"]
    assert "without the spiffe:// scheme" in errors["spec.limits[4].match.sources[0]"]


def test_cross_field_rules():
    errors = _errors(rl("bad", "limits: [{name: a, maxTokens: 5, tokensPerFill: 6, fillInterval: 1s}]"))
    assert set(errors) == {"spec.limits[0].tokensPerFill"}
    errors = _errors(rl("bad", """
        limits:
        - {name: a, maxTokens: 5, fillInterval: 1s}
        - {name: a, maxTokens: 5, fillInterval: 1s}
        """))
    assert set(errors) == {"spec.limits[1].name"}
    assert "limits[0]" in errors["spec.limits[1].name"]
    assert set(_errors(rl("empty", "limits: []"))) == {"spec.limits"}


# --- the built config -----------------------------------------------------------------------------------


def _hcm(listener, chain: str = "mtls") -> hcm_pb2.HttpConnectionManager:
    hcm = hcm_pb2.HttpConnectionManager()
    [c] = [c for c in listener.filter_chains if c.name == chain]
    assert c.filters[0].typed_config.Unpack(hcm)
    return hcm


def _route_limit(built, instance_id: str) -> http_rl_pb2.LocalRateLimit | None:
    """The ``meshcore.ratelimit`` per-route config on the instance's inbound route, None without one."""
    [route] = [r for r in built[ROUTE] if r.name == f"inbound:{instance_id}"]
    [vhost] = route.virtual_hosts
    if "meshcore.ratelimit" not in vhost.typed_per_filter_config:
        return None
    cfg = per_filter_config(vhost.typed_per_filter_config["meshcore.ratelimit"], http_rl_pb2.LocalRateLimit)
    assert cfg is not None
    return cfg


def test_limits_on_the_selected_inbound_route_only(tmp_path):
    built = build_bookinfo(EXAMPLE, node="vm3", secrets=str(tmp_path))
    plain = build_bookinfo("", node="vm3", secrets=str(tmp_path))
    listeners = {l.name: l for l in built[LISTENER]}
    # the listeners are the same with or without limits: a change is a route (RDS) update only
    assert [l.SerializeToString(deterministic=True) for l in built[LISTENER]] == \
        [l.SerializeToString(deterministic=True) for l in plain[LISTENER]]
    ratings = _hcm(listeners["inbound:ratings-v1"])
    assert [f.name for f in ratings.http_filters] == [*POLICY_FILTER_NAMES, "envoy.filters.http.router"]
    off = http_rl_pb2.LocalRateLimit()
    assert ratings.http_filters[3].typed_config.Unpack(off)
    assert not off.HasField("token_bucket") and not off.HasField("filter_enabled")  # disabled: passes everything
    assert _route_limit(built, "reviews-v3") is None
    cfg = _route_limit(built, "ratings-v1")
    assert cfg.stat_prefix == "ratelimit.default.ratings"
    buckets = {d.entries[0].value: (d.token_bucket.max_tokens, d.token_bucket.tokens_per_fill.value,
                                     d.token_bucket.fill_interval.seconds) for d in cfg.descriptors}
    assert buckets == {"reviews-get": (10, 10, 1), "overall": (50, 50, 1)}
    assert [(h.header.key, h.header.value) for h in cfg.response_headers_to_add] == [("retry-after", "1")]
    assert not cfg.always_consume_default_token_bucket.value
    assert cfg.filter_enforced.default_value.numerator == 100
    # the outbound side of vm3 is untouched
    assert all(f.name not in POLICY_FILTER_NAMES for l in listeners.values() if l.name.startswith("outbound")
               for f in _hcm(l, "").http_filters)
    assert all(not vh.typed_per_filter_config for r in built[ROUTE] if r.name.startswith("outbound")
               for vh in r.virtual_hosts)


def test_several_rate_limits_share_the_filter_and_retry_after_is_the_slowest_refill(tmp_path):
    text = EXAMPLE + "\n---\n" + rl("slow", """
        selector: {matchLabels: {app: ratings}}
        limits: [{maxTokens: 2, tokensPerFill: 2, fillInterval: 5s}, {maxTokens: 1, fillInterval: 250ms}]
        """) + """apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ratings, namespace: default}
spec: {selector: {matchLabels: {app: ratings}}, rules: [{to: [{operation: {methods: [GET]}}]}]}
"""
    built = build_bookinfo(text, node="vm3", secrets=str(tmp_path))
    [route] = [r for r in built[ROUTE] if r.name == "inbound:ratings-v1"]
    # RBAC (meshcore.authz.*) runs before the rate limit in the listener; both take their config from the route
    assert sorted(route.virtual_hosts[0].typed_per_filter_config) == ["meshcore.authz.allow", "meshcore.ratelimit"]
    cfg = _route_limit(built, "ratings-v1")
    assert cfg.stat_prefix == "ratelimit.default.ratings+slow"
    assert cfg.response_headers_to_add[0].header.value == "3"  # 5s / 2 tokens -> a token every 2.5s
    assert [d.entries[0].value for d in cfg.descriptors] == [
        "default/ratings/reviews-get", "default/ratings/overall", "default/slow/limits[0]", "default/slow/limits[1]"]
    assert [a.actions[0].WhichOneof("action_specifier") for a in cfg.rate_limits] == [
        "header_value_match", "generic_key", "generic_key", "generic_key"]
    assert cfg.rate_limits[3].actions[0].generic_key.descriptor_value == "default/slow/limits[1]"
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_envoy_accepts_the_example(tmp_path):
    result = _validate_with_envoy(build_bookinfo(EXAMPLE, node="vm3", secrets=str(tmp_path)), tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_tcp_workloads_limit_connections(tmp_path):
    write_catalog(tmp_path, [{"name": "db", "protocol": "tcp"}])
    built = build(tmp_path, rl("db", """
        selector: {matchLabels: {app: db}}
        limits: [{maxTokens: 3, fillInterval: 1s}, {maxTokens: 1, fillInterval: 1s, match: {methods: [GET]}}]
        """))
    [listener] = [l for l in built[LISTENER] if l.name.startswith("inbound:")]
    filters = listener.filter_chains[0].filters
    assert [f.name for f in filters] == ["envoy.filters.network.local_ratelimit", "envoy.filters.network.tcp_proxy"]
    cfg = net_rl_pb2.LocalRateLimit()
    assert filters[0].typed_config.Unpack(cfg)
    assert (cfg.stat_prefix, cfg.token_bucket.max_tokens) == ("ratelimit.default.db", 3)


# --- the regular expressions (the subset Python's re and Envoy's RE2 read alike) -------------------------


def test_path_method_and_source_patterns():
    paths = re.compile(path_regex(["/ratings*", "/health", "*.js", "*"][:3]))
    assert all(paths.fullmatch(p) for p in ["/ratings", "/ratings/1?x=2", "/health", "/health?probe=1", "/a/b.js?v=1"])
    assert not any(paths.fullmatch(p) for p in ["/healthz", "/other", "/a.json", "/x?y=.js"])
    assert re.fullmatch(path_regex(["*"]), "/anything?q") and not re.fullmatch(path_regex(["*"]), "")
    methods = re.compile(method_regex(["GET", "PO*"]))
    assert methods.fullmatch("GET") and methods.fullmatch("POST") and not methods.fullmatch("GETX")
    xfcc = "By=spiffe://cluster.local/ns/default/sa/ratings;Hash=ab12;URI=spiffe://cluster.local/ns/default/sa/reviews"
    assert re.fullmatch(source_regex(["cluster.local/ns/default/sa/reviews"]), xfcc)
    assert re.fullmatch(source_regex(["cluster.local/ns/default/*"]), xfcc)
    assert re.fullmatch(source_regex(["*/sa/reviews"]), xfcc)
    assert not re.fullmatch(source_regex(["cluster.local/ns/default/sa/review"]), xfcc)
    assert not re.fullmatch(source_regex(["cluster.local/ns/default/sa/ratings"]), xfcc)  # By= is us, not the caller


# --- a real Envoy ---------------------------------------------------------------------------------------


class _App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    hits = 0

    def do_GET(self) -> None:
        type(self).hits += 1
        self.send_response(200)
        self.send_header("Content-Length", "3")
        self.end_headers()
        self.wfile.write(b"ok\n")

    do_POST = do_GET

    def log_message(self, *args) -> None:
        pass


def _call(port: int, method: str, path: str) -> tuple[int, str | None]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, body=b"" if method == "POST" else None)
        resp = conn.getresponse()
        resp.read()
        return resp.status, resp.getheader("retry-after")
    finally:
        conn.close()


def _stats(envoy: StaticEnvoy, prefix: str) -> dict[str, int]:
    with urllib.request.urlopen(f"http://{envoy.admin}/stats?format=json&filter=^{prefix}", timeout=5) as resp:
        return {s["name"]: s["value"] for s in json.load(resp)["stats"] if "value" in s}


def test_envoy_refuses_beyond_the_bucket_with_429_and_retry_after(tmp_path):
    defs = write_catalog(tmp_path / "catalog", [{"name": "web"}])
    text = PERMISSIVE + rl("web", """
        selector: {matchLabels: {app: web}}
        limits:
        - {name: api-get, maxTokens: 3, tokensPerFill: 1, fillInterval: 60s, match: {paths: ["/api/*"], methods: [GET]}}
        - {name: overall, maxTokens: 8, fillInterval: 60s}
        """)
    built = build(tmp_path / "catalog", text)
    server = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = defs["web"]["connect"]["sidecar_service"]["port"]
    try:
        with StaticEnvoy(built, tmp_path) as envoy:
            wait_listening("127.0.0.1", port)
            api = [_call(port, "GET", f"/api/items?n={i}") for i in range(5)]
            assert [s for s, _ in api] == [200, 200, 200, 429, 429]
            assert api[3][1] == "60" and api[0][1] is None  # 60s per token; only refused answers carry it
            assert _call(port, "POST", "/api/items")[0] == 200  # another method: only "overall" applies
            others = [_call(port, "GET", "/other")[0] for _ in range(6)]
            # overall: 8 tokens, 3 taken by the allowed GETs, 1 by the POST (refused requests take none)
            assert others == [200, 200, 200, 200, 429, 429]
            assert _App.hits == 3 + 1 + 4
            deadline = time.monotonic() + 10
            while _stats(envoy, "ratelimit").get("ratelimit.default.web.http_local_rate_limit.rate_limited") != 4:
                assert time.monotonic() < deadline, _stats(envoy, "ratelimit")
                time.sleep(0.1)
            assert _stats(envoy, "ratelimit")["ratelimit.default.web.http_local_rate_limit.ok"] == 8
    finally:
        server.shutdown()
        server.server_close()
