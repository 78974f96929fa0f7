"""A small, real HTTPS server speaking the control plane's agent API, for the agent's tests.

It signs with the real :class:`meshcore.ca.CertificateAuthority` and checks join tokens with the
real :class:`meshcore.ca.JoinTokenStore`; only the catalog is a plain dict (node -> services).
Bound to 127.0.0.1 on a free port; presents a certificate for the control plane's SPIFFE ID
with the IP 127.0.0.1 (and DNS ``localhost``), and asks for (optional) client certificates.
"""

from __future__ import annotations

import json
import ssl
import threading
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from cryptography import x509

from meshcore import naming
from meshcore.ca import CertificateAuthority, JoinTokenStore, generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.errors import MeshError

TD = naming.DEFAULT_TRUST_DOMAIN


@dataclass
class AgentApiServer:
    root: Path
    leaf_ttl: timedelta = timedelta(hours=1)
    xds_address: str = "127.0.0.1:15012"
    services: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    calls: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, node)
    peers: list[int] = field(default_factory=list)  # client port of each call: one per connection when kept alive
    drop_idle: bool = False  # close each connection after its answer without saying so (an idle timeout)
    fail_with: tuple[int, str] | None = None  # answer every request with this status and reason
    dns_names: tuple[str, ...] = ("localhost",)  # DNS SANs of the server certificate (IP 127.0.0.1 always)
    bundle_acks: dict[str, str] = field(default_factory=dict)  # node -> X-Meshcore-Bundle-SHA256 it sent

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        kek = generate_kek_file(self.root / "kek")
        self.ca = CertificateAuthority.open(self.root / "ca", trust_domain=TD, kek=kek, leaf_ttl=self.leaf_ttl)
        self.tokens = JoinTokenStore(self.root / "tokens.json", kek)
        self.ca_file = self.root / "bundle.pem"
        self.ca_file.write_text(self.ca.bundle_pem())
        key = new_private_key()
        cp_id = naming.control_plane_spiffe_id(TD)
        issued = self.ca.sign_csr(make_csr(key, cp_id), spiffe_id=cp_id, dns_names=list(self.dns_names),
                                  ip_addresses=["127.0.0.1"], ttl=timedelta(hours=1))
        (self.root / "server.crt").write_text(issued.chain_pem)
        (self.root / "server.key").write_text(key_to_pem(key))
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, port: int = 0) -> AgentApiServer:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.root / "server.crt"), str(self.root / "server.key"))
        context.load_verify_locations(cadata=self.ca.bundle_pem())
        context.verify_mode = ssl.CERT_OPTIONAL
        httpd = ThreadingHTTPServer(("127.0.0.1", port), _handler(self))
        httpd.daemon_threads = True
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
        self._context = context
        self._httpd = httpd
        threading.Thread(target=httpd.serve_forever, name="agent-api-test-server", daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self._httpd is not None
        return self._httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- helpers for tests -----------------------------------------------------------------

    def trust_current_bundle(self) -> None:
        """Add the CA's current roots (e.g. a rotation's new one) to the client-verification store."""
        self._context.load_verify_locations(cadata=self.ca.bundle_pem())

    def token(self, node: str) -> str:
        return self.tokens.create(node)

    def add_service(self, node: str, name: str, sid: str | None = None) -> str:
        spiffe_id = naming.workload_spiffe_id(TD, naming.DEFAULT_NAMESPACE, name)
        self.services.setdefault(node, []).append(
            {"name": name, "id": sid or f"{name}-1", "spiffe_id": spiffe_id, "kind": ""})
        return spiffe_id

    def count(self, path: str) -> int:
        return sum(1 for _, p, _ in self.calls if p == path)

    # -- the API ---------------------------------------------------------------------------

    def issued(self, csr: str, spiffe_id: str, node: str) -> dict[str, Any]:
        cert = self.ca.sign_csr(csr, spiffe_id=spiffe_id, node=node, ttl=self.leaf_ttl)
        return {"certificate": cert.cert_pem, "chain": cert.chain_pem, "bundle": self.ca.bundle_pem(),
                "spiffe_id": cert.spiffe_id, "serial": cert.serial,
                "not_after": cert.not_after.isoformat().replace("+00:00", "Z"),
                "trust_domain": TD, "xds_address": self.xds_address, "ca": self.ca_info()}

    def ca_info(self) -> dict[str, str]:
        return {"bundle_sha256": self.ca.bundle_sha256(), "signer_key_id": self.ca.signer_key_id(),
                "phase": self.ca.rotation_phase}

    def handle(self, method: str, path: str, node: str | None, body: dict[str, Any],
               bundle_sha256: str = "") -> tuple[int, dict[str, Any]]:
        self.calls.append((method, path, node))
        if node is not None and bundle_sha256:
            self.bundle_acks[node] = bundle_sha256
        if self.fail_with is not None:
            return self.fail_with[0], {"error": self.fail_with[1]}
        if (method, path) == ("POST", "/v1/agent/join"):
            name = body.get("node", "")
            expected = naming.node_spiffe_id(TD, name)
            if _csr_uri(body.get("csr", "")) != expected:
                return 403, {"error": f"csr must ask for {expected}"}
            try:
                self.tokens.consume(body.get("token", ""), name)
            except MeshError as exc:
                return 403, {"error": f"join refused: {exc}"}
            return 200, self.issued(body["csr"], expected, name)
        if node is None:
            return 401, {"error": "this call needs the node's client certificate (join first with a token)"}
        if (method, path) == ("POST", "/v1/agent/renew-node"):
            return 200, self.issued(body["csr"], naming.node_spiffe_id(TD, node), node)
        if (method, path) == ("GET", "/v1/agent/services"):
            return 200, {"node": node, "trust_domain": TD, "xds_address": self.xds_address,
                         "ca": self.ca_info(), "services": list(self.services.get(node, []))}
        if (method, path) == ("POST", "/v1/agent/sign"):
            uri = _csr_uri(body.get("csr", ""))
            allowed = {s["spiffe_id"] for s in self.services.get(node, [])}
            if uri not in allowed:
                return 403, {"error": f"node {node!r} runs no service with identity {uri}"}
            return 200, self.issued(body["csr"], uri, node)
        if (method, path) == ("GET", "/v1/agent/bundle"):
            return 200, {"trust_domain": TD, "bundle": self.ca.bundle_pem()}
        return 404, {"error": f"no such endpoint: {path}"}


def _csr_uri(csr_pem: str) -> str:
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return san.get_values_for_type(x509.UniformResourceIdentifier)[0]
    except (ValueError, IndexError, x509.ExtensionNotFound):
        return ""


def _handler(server: AgentApiServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}") if length else {}
            node = None
            peer = self.connection.getpeercert() or {}
            for kind, value in peer.get("subjectAltName", ()):
                parsed = naming.parse_node_spiffe_id(value) if kind == "URI" else None
                if parsed:
                    node = parsed[1]
            server.peers.append(self.client_address[1])
            status, payload = server.handle(self.command, self.path, node, body,
                                            self.headers.get("X-Meshcore-Bundle-SHA256") or "")
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)
            if server.drop_idle:
                self.close_connection = True

        do_GET = do_POST = _serve

        def log_message(self, *args: Any) -> None:
            pass

    return Handler
