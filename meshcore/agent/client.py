"""HTTPS client for the control plane's agent API (``/v1/agent/...``).

The server is verified against the trust bundle given with ``--ca-file`` (host name or IP
checked). Every call except :meth:`AgentClient.join` presents the node certificate; its files
are re-read per request so a renewed certificate is used at once. Network failures raise
:class:`ControlPlaneUnavailable` (retry later); a non-2xx answer raises
:class:`AgentRequestError` carrying the server's ``{"error": ...}`` reason verbatim.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from meshcore.errors import AgentError, AgentRequestError, ControlPlaneUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
BUNDLE_HEADER = "X-Meshcore-Bundle-SHA256"




@dataclass(frozen=True)
class IssuedIdentity:
    """A certificate the control plane issued (join, renew-node, sign)."""

    certificate: str
    chain: str
    bundle: str
    spiffe_id: str
    not_after: str
    trust_domain: str
    xds_address: str

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> IssuedIdentity:
        values = {name: _require_str(data, name, where) for name in
                  ("certificate", "chain", "bundle", "spiffe_id", "not_after", "trust_domain")}
        return cls(xds_address=str(data.get("xds_address") or ""), **values)


@dataclass(frozen=True)
class NodeService:
    """One service registered on this node, as the control plane sees it."""

    name: str
    id: str
    spiffe_id: str
    kind: str = ""


@dataclass(frozen=True)
class NodeServices:
    node: str
    trust_domain: str
    xds_address: str
    services: tuple[NodeService, ...]
    bundle_sha256: str = ""  # the trust bundle the control plane wants every node to hold
    signer_key_id: str = ""  # key id of the intermediate signing now: certificates from another renew early

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str) -> NodeServices:
        raw = data.get("services")
        if not isinstance(raw, list):
            raise AgentError(f"{where}: response has no 'services' list")
        services = []
        for index, item in enumerate(raw):
            if not isinstance(item, dict):
                raise AgentError(f"{where}: services[{index}] is not an object")
            name = _require_str(item, "name", f"{where} services[{index}]")
            services.append(NodeService(
                name=name,
                id=str(item.get("id") or name),
                spiffe_id=_require_str(item, "spiffe_id", f"{where} services[{index}]"),
                kind=str(item.get("kind") or ""),
            ))
        ca = data.get("ca") if isinstance(data.get("ca"), dict) else {}
        return cls(
            node=_require_str(data, "node", where),
            trust_domain=_require_str(data, "trust_domain", where),
            xds_address=str(data.get("xds_address") or ""),
            services=tuple(services),
            bundle_sha256=str(ca.get("bundle_sha256") or "").lower(),
            signer_key_id=str(ca.get("signer_key_id") or "").lower(),
        )


@dataclass(frozen=True)
class TrustBundle:
    trust_domain: str
    bundle: str
    federated: tuple[tuple[str, str], ...] = ()  # other trust domains' roots: (trust_domain, PEM)


class AgentClient:
    """Client of one control plane. Cheap to create; holds no connection between calls."""

    def __init__(
        self,
        base_url: str,
        ca_file: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        extra_ca_files: tuple[Path, ...] = (),
        timeout: float = DEFAULT_TIMEOUT,
        bundle_sha256: str = "",
    ):
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise AgentError(f"control plane URL {base_url!r} must be https://host:port")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self.ca_file = Path(ca_file)
        self.cert_file = cert_file
        self.key_file = key_file
        self.extra_ca_files = extra_ca_files
        self.timeout = timeout
        self.bundle_sha256 = bundle_sha256  # reported on every call: the bundle this node has given Envoy

    # -- API -------------------------------------------------------------------------------

    def join(self, node: str, token: str, csr_pem: str) -> IssuedIdentity:
        data = self._request("POST", "/v1/agent/join", {"node": node, "token": token, "csr": csr_pem},
                             authenticated=False)
        return IssuedIdentity.from_json(data, "join")

    def renew_node(self, csr_pem: str) -> IssuedIdentity:
        data = self._request("POST", "/v1/agent/renew-node", {"csr": csr_pem})
        return IssuedIdentity.from_json(data, "renew-node")

    def services(self) -> NodeServices:
        return NodeServices.from_json(self._request("GET", "/v1/agent/services"), "services")

    def sign(self, csr_pem: str) -> IssuedIdentity:
        return IssuedIdentity.from_json(self._request("POST", "/v1/agent/sign", {"csr": csr_pem}), "sign")

    def bundle(self) -> TrustBundle:
        data = self._request("GET", "/v1/agent/bundle")
        federated = tuple((_require_str(f, "trust_domain", "bundle federated_bundles"),
                           _require_str(f, "bundle", "bundle federated_bundles"))
                          for f in data.get("federated_bundles") or [] if isinstance(f, dict))
        return TrustBundle(trust_domain=_require_str(data, "trust_domain", "bundle"),
                           bundle=_require_str(data, "bundle", "bundle"), federated=federated)

    # -- transport -------------------------------------------------------------------------

    def _context(self, authenticated: bool) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cafile=str(self.ca_file))
            for extra in self.extra_ca_files:
                if extra.is_file():
                    context.load_verify_locations(cafile=str(extra))
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"cannot load the trust bundle {self.ca_file}: {exc}; check --ca-file") from exc
        if authenticated:
            if self.cert_file is None or self.key_file is None:
                raise AgentError("this request needs the node certificate, but the agent has not joined yet")
            try:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise AgentError(
                    f"cannot load the node certificate {self.cert_file} / key {self.key_file}: {exc}"
                ) from exc
        return context

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 authenticated: bool = True) -> dict[str, Any]:
        context = self._context(authenticated)
        conn = http.client.HTTPSConnection(self._host, self._port, context=context, timeout=self.timeout)
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": "meshcore-agent"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.bundle_sha256:
            headers[BUNDLE_HEADER] = self.bundle_sha256
        target = f"{self.base_url}{path}"
        try:
            conn.request(method, self._prefix + path, body=payload, headers=headers)
            response = conn.getresponse()
            status = response.status
            raw = response.read()
        except ssl.SSLCertVerificationError as exc:
            raise ControlPlaneUnavailable(
                f"{method} {target}: the control plane's certificate did not verify ({exc.verify_message}); "
                f"check that --ca-file holds the mesh trust bundle and that {self._host} is in the server certificate"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            raise ControlPlaneUnavailable(f"{method} {target}: {exc.__class__.__name__}: {exc}") from exc
        finally:
            conn.close()
        data = _decode(raw)
        if not 200 <= status < 300:
            reason = ""
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                reason = data["error"]
            if not reason:
                reason = f"HTTP {status}: " + raw[:200].decode(errors="replace").strip()
            raise AgentRequestError(method, path, status, reason)
        if not isinstance(data, dict):
            raise AgentError(f"{method} {target}: expected a JSON object, got {raw[:200]!r}")
        return data


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _require_str(data: dict[str, Any], name: str, where: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise AgentError(f"control plane {where} response: field {name!r} missing or not a string")
    return value
