"""Access logs and tracing in the built config, and a real Envoy writing the JSON lines.

The Envoy runs the inbound listeners ``build_proxy`` produced (PERMISSIVE plaintext chains, with the
RBAC filters of DENY, ALLOW and AUDIT policies) in front of a real HTTP app and a TCP echo server; the
lines it writes must carry the deciding policy and its result, the audit policy, and the constants.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import socketserver
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from envoy.extensions.access_loggers.file.v3 import file_pb2
from envoy.extensions.access_loggers.stream.v3 import stream_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import http_connection_manager_pb2 as hcm_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2

from meshcore.errors import ConfigError, SnapshotInvalid
from meshcore.observe.telemetry import JSON_KEYS, TRACING_CLUSTER, telemetry_settings, validate_settings
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo, TelemetrySettings
from meshcore.xds.generate import CLUSTER, LISTENER
from meshcore.compose import build_proxy
from meshcore.xds.validate import validate_snapshot
from tests.policies._catalog import snapshot, write_catalog
from tests.policies._envoy import StaticEnvoy, wait_listening

PERMISSIVE = ("apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
              "metadata: {name: mesh, namespace: meshcore-system}\nspec: {mtls: {mode: PERMISSIVE}}\n---\n")
POLICIES = PERMISSIVE + """
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web-allow, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web-deny, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin/*"]}}]}]
---
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: web-audit, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  action: AUDIT
  rules: [{to: [{operation: {paths: ["/audited"]}}]}]
"""


def _settings(**kw) -> MeshSettings:
    return MeshSettings(telemetry=TelemetrySettings(**kw))


def _with(snap: MeshSnapshot, settings: MeshSettings) -> MeshSnapshot:
    return MeshSnapshot.build(snap.catalog, snap.resources, snap.trust_domain, settings)


def _unpack(any_msg, cls):
    msg = cls()
    assert any_msg.Unpack(msg)
    return msg


def _network_filters(built):
    for listener in built[LISTENER]:
        for chain in listener.filter_chains:
            for f in chain.filters:
                yield listener, f


@pytest.fixture(scope="module")
def catalog_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("catalog")
    defs = write_catalog(root, [{"name": "web"}, {"name": "db", "protocol": "tcp"}])
    return root, defs


def test_off_by_default_adds_nothing(catalog_root):
    root, _ = catalog_root
    built = build_proxy(snapshot(root, POLICIES), ProxyInfo(node="n1", secrets_dir="/s"))
    for _listener, f in _network_filters(built):
        if f.name.endswith("http_connection_manager"):
            hcm = _unpack(f.typed_config, hcm_pb2.HttpConnectionManager)
            assert not hcm.access_log and not hcm.HasField("tracing")
        elif f.name.endswith("tcp_proxy"):
            assert not _unpack(f.typed_config, tcp_proxy_pb2.TcpProxy).access_log
    assert TRACING_CLUSTER not in {c.name for c in built[CLUSTER]}


def test_every_chain_gets_log_and_tracer(catalog_root):
    root, _ = catalog_root
    snap = _with(snapshot(root, POLICIES), _settings(access_log="/var/log/meshcore/{node}.log",
                                                     tracing_otlp="127.0.0.1:4317", tracing_sampling=25))
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))
    assert validate_snapshot("n1", built) == []
    seen = 0
    for listener, f in _network_filters(built):
        if f.name.endswith("http_connection_manager"):
            hcm = _unpack(f.typed_config, hcm_pb2.HttpConnectionManager)
            (log,) = hcm.access_log
            assert hcm.tracing.random_sampling.value == 25
            assert hcm.tracing.provider.name == "envoy.tracers.opentelemetry"
        elif f.name.endswith("tcp_proxy"):
            (log,) = _unpack(f.typed_config, tcp_proxy_pb2.TcpProxy).access_log
        else:
            continue
        seen += 1
        cfg = _unpack(log.typed_config, file_pb2.FileAccessLog)
        assert cfg.path == "/var/log/meshcore/n1.log"
        fmt = cfg.log_format.json_format.fields
        assert set(fmt) == set(JSON_KEYS)
        assert fmt["node"].string_value == "n1" and fmt["direction"].string_value == "inbound"
        assert fmt["destination_port"].number_value == listener.address.socket_address.port_value
    assert seen == 4  # web and db, each with an mTLS and a plaintext chain
    otlp = {c.name: c for c in built[CLUSTER]}[TRACING_CLUSTER]
    assert otlp.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value == 4317


def test_stdout_and_text_format(catalog_root):
    root, _ = catalog_root
    snap = _with(snapshot(root), _settings(access_log="stdout", access_log_format="text"))
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))
    assert validate_snapshot("n1", built) == []
    logs = [log for _l, f in _network_filters(built) if f.name.endswith("http_connection_manager")
            for log in _unpack(f.typed_config, hcm_pb2.HttpConnectionManager).access_log]
    assert logs and all(log.name == "envoy.access_loggers.stdout" for log in logs)
    text = _unpack(logs[0].typed_config, stream_pb2.StdoutAccessLog).log_format.text_format_source.inline_string
    assert "node=n1 service=web" in text and "%RESPONSE_CODE%" in text


def test_bad_settings_are_refused(catalog_root):
    root, _ = catalog_root
    assert validate_settings(TelemetrySettings()) == []
    problems = validate_settings(TelemetrySettings(access_log="relative.log", access_log_format="xml",
                                                   tracing_otlp="nohost", tracing_sampling=101))
    assert len(problems) == 4 and "--access-log" in problems[0]
    with pytest.raises(SnapshotInvalid):
        build_proxy(_with(snapshot(root), _settings(access_log="relative.log")), ProxyInfo(node="n1", secrets_dir="/s"))

    class Args:
        access_log, access_log_format, tracing_otlp, tracing_sampling = "", "json", "", "lots"

    with pytest.raises(ConfigError, match="--tracing-sampling"):
        telemetry_settings(Args())


# --- a real Envoy writing the lines ----------------------------------------------------------------

class _App(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self) -> None:
        body = b"ok\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer  # noqa: N815

    def log_message(self, *args) -> None:
        pass


class _Echo(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(data)


def _request(port: int, method: str, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers={"Connection": "close"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def _lines(path: Path, want: int, timeout: float = 20.0) -> list[dict]:
    deadline = time.monotonic() + timeout
    lines: list[dict] = []
    while time.monotonic() < deadline:
        if path.exists():
            lines = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
            if len(lines) >= want:
                return lines
        time.sleep(0.2)
    raise AssertionError(f"{path}: {len(lines)} access log lines after {timeout:.0f}s, wanted {want}: {lines}")


@contextlib.contextmanager
def _envoy_in_front(built, tmp_path: Path, *servers):
    """``servers`` serving in threads and a real Envoy on ``built`` (access log flushed every 200 ms)."""
    for server in servers:
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
    envoy = StaticEnvoy(built, tmp_path)
    envoy.argv += ["--file-flush-interval-msec", "200"]
    try:
        with envoy:
            yield envoy
    finally:
        for server in servers:
            server.shutdown()


def test_envoy_writes_json_lines_with_the_deciding_policy(catalog_root, tmp_path):
    root, defs = catalog_root
    log_path = tmp_path / "access-{node}.log"
    snap = _with(snapshot(root, POLICIES), _settings(access_log=str(log_path)))
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))
    web = ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App)
    echo = socketserver.ThreadingTCPServer(("127.0.0.1", defs["db"]["port"]), _Echo)
    web_port = defs["web"]["connect"]["sidecar_service"]["port"]
    db_port = defs["db"]["connect"]["sidecar_service"]["port"]
    with _envoy_in_front(built, tmp_path, web, echo):
        wait_listening("127.0.0.1", web_port)
        assert _request(web_port, "GET", "/ok") == 200
        assert _request(web_port, "GET", "/admin/users") == 403
        assert _request(web_port, "POST", "/ok") == 403
        assert _request(web_port, "GET", "/audited") == 200
        with socket.create_connection(("127.0.0.1", db_port), timeout=5) as s:
            s.sendall(b"ping\n")  # 5 bytes: the TLS inspector decides on a whole record header
            assert s.recv(16) == b"ping\n"
        lines = _lines(tmp_path / "access-n1.log", 5)
    for line in lines:
        assert set(line) == set(JSON_KEYS), line
        assert line["node"] == "n1" and line["direction"] == "inbound"
        assert isinstance(line["duration_ms"], int) and line["start_time"].endswith("Z")
        assert line["source_spiffe_id"] is None  # plaintext chain: no peer certificate
    http_lines = {(l["method"], l["path"]): l for l in lines if l["protocol"] != "tcp"}
    ok = http_lines[("GET", "/ok")]
    assert (ok["response_code"], ok["rbac_result"], ok["rbac_policy"], ok["audit_policy"]) == \
        (200, "allowed", "default/web-allow[0]", None)
    assert ok["service"] == "web" and ok["destination_port"] == web_port
    assert ok["upstream_cluster"] == "local_app:web-v1" and ok["route_name"]
    denied = http_lines[("GET", "/admin/users")]
    assert (denied["response_code"], denied["rbac_result"], denied["rbac_policy"]) == \
        (403, "denied", "default/web-deny[0]")
    assert "rbac_access_denied" in denied["response_code_details"]
    no_rule = http_lines[("POST", "/ok")]
    assert (no_rule["response_code"], no_rule["rbac_result"], no_rule["rbac_policy"]) == (403, "denied", "")
    audited = http_lines[("GET", "/audited")]
    assert (audited["rbac_result"], audited["audit_policy"]) == ("allowed", "default/web-audit[0]")
    (tcp,) = [l for l in lines if l["protocol"] == "tcp"]
    assert (tcp["service"], tcp["response_code"], tcp["method"], tcp["rbac_result"]) == ("db", 0, None, None)
    assert tcp["bytes_received"] == 5 and tcp["upstream_cluster"] == "local_app:db-v1"


def test_sampled_access_log_keeps_every_failure(catalog_root, tmp_path):
    """``--access-log-sampling 0``: a real Envoy logs the denied request and none of the successful ones."""
    root, defs = catalog_root
    assert validate_settings(TelemetrySettings(access_log_sampling=100.5))[0].startswith("--access-log-sampling")
    snap = _with(snapshot(root, POLICIES), _settings(access_log=str(tmp_path / "access-{node}.log"),
                                                     access_log_sampling=0.0))
    built = build_proxy(snap, ProxyInfo(node="n1", secrets_dir="/s"))
    assert validate_snapshot("n1", built) == []
    web_port = defs["web"]["connect"]["sidecar_service"]["port"]
    with _envoy_in_front(built, tmp_path, ThreadingHTTPServer(("127.0.0.1", defs["web"]["port"]), _App)):
        wait_listening("127.0.0.1", web_port)
        assert [_request(web_port, "GET", "/ok") for _ in range(5)] == [200] * 5
        assert _request(web_port, "GET", "/admin/users") == 403
        lines = _lines(tmp_path / "access-n1.log", 1)
    assert [(l["path"], l["response_code"]) for l in lines] == [("/admin/users", 403)]
