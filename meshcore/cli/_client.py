"""How meshctl finds and calls the control plane's operator API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from ..api._wire import Wire
from ..api.operator import (
    AlertRuleView,
    AlertView,
    ApplyRequest,
    ApplyResponse,
    AuthzCheckQuery,
    AuthzCheckResponse,
    AuthzDryRunRequest,
    AuthzDryRunResponse,
    CaCert,
    CaRotateRequest,
    CaState,
    CanaryRequest,
    CanaryStatus,
    DeleteRequest,
    DeleteResponse,
    DryRunResponse,
    FederatedDomain,
    Health,
    IssuedCert,
    JoinTokenInfo,
    OperatorCert,
    OperatorCertIssued,
    OperatorCertRequest,
    OperatorCertRevoked,
    ProxyConfigResponse,
    ProxyStatus,
    ResourceQuery,
    SpiffeBundleExport,
    StatusResponse,
    TokenRequest,
    TokenResponse,
    TrustBundle,
    TrustBundleImport,
    TrustBundleRemoved,
)
from ..errors import ApiError, BadRequest, ControlPlaneUnavailable, MeshError
from ._state import ADMIN_TOKEN_FILE, DEMO_STATE_DIR, state_dirs  # noqa: F401 - DEMO_STATE_DIR re-exported



W = TypeVar("W", bound=Wire)


def discover_server(explicit: str | None = None, state_dir: str | None = None) -> str:
    """--server, then $MESHCORE_SERVER, then a demo in ./.meshcore-demo (or --state-dir), then the system one."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("MESHCORE_SERVER"):
        return os.environ["MESHCORE_SERVER"].rstrip("/")
    for d in state_dirs(state_dir):
        try:
            return json.loads((d / "controlplane.json").read_text())["http"].rstrip("/")
        except (OSError, ValueError, KeyError):
            continue
    return "http://127.0.0.1:15000"


def _read_token(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def discover_token(server: str, state_dir: str | None = None) -> str | None:
    """The operator token for ``server``: $MESHCORE_TOKEN, then the file named by $MESHCORE_TOKEN_FILE,
    then ``admin.token`` of a control plane state dir (--state-dir, ./.meshcore-demo/controlplane,
    /var/lib/meshcore) whose ``controlplane.json`` says it serves ``server``. A token found on disk is
    only ever sent to the control plane that wrote it."""
    if os.environ.get("MESHCORE_TOKEN"):
        return os.environ["MESHCORE_TOKEN"].strip()
    if os.environ.get("MESHCORE_TOKEN_FILE"):
        token = _read_token(Path(os.environ["MESHCORE_TOKEN_FILE"]))
        if token is None:
            raise MeshError(f"cannot read the operator token file $MESHCORE_TOKEN_FILE="
                            f"{os.environ['MESHCORE_TOKEN_FILE']}; fix the path or its permissions")
        return token
    for d in state_dirs(state_dir):
        try:
            serves = json.loads((d / "controlplane.json").read_text())["http"].rstrip("/")
        except (OSError, ValueError, KeyError, AttributeError):
            continue
        if serves == server.rstrip("/"):
            token = _read_token(d / ADMIN_TOKEN_FILE)
            if token:
                return token
    return None




class Client:
    def __init__(self, server: str, timeout: float = 10.0, token: str | None = None,
                 state_dir: str | None = None):
        """``token`` (``meshctl --token``) or, when None, :func:`discover_token` for ``server``."""
        self.server = server
        self.timeout = timeout
        from ._tls import client_tls  # an operator client certificate ($MESHCORE_CERT/$MESHCORE_KEY), if any

        self.server, self._tls = client_tls(server, state_dir)
        self.token = token or (None if self._tls else discover_token(server, state_dir))

    def call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.server + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._tls) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": raw.decode(errors="replace")}
            raise ApiError(exc.code, payload.get("error", f"HTTP {exc.code}"), payload) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ControlPlaneUnavailable(
                f"cannot reach the control plane at {self.server} ({getattr(exc, 'reason', exc)}); "
                "is it running? start the demo with `meshctl demo up`, or pass --server URL"
            ) from exc
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    def get(self, path: str):
        return self.call("GET", path)

    def post(self, path: str, body):
        return self.call("POST", path, body)

    # --- the operator API, typed (meshcore.api.operator: the same types the control plane answers with) --
    def _typed(self, cls: type[W], data: Any, path: str) -> W:
        try:
            return cls.from_json(data, path)
        except BadRequest as exc:
            raise MeshError(f"the control plane at {self.server} answered {path} with {exc}; is it a different "
                            "meshcore version than this meshctl?") from exc

    def status(self) -> StatusResponse:
        return self._typed(StatusResponse, self.get("/v1/status"), "/v1/status")

    def _typed_list(self, cls: type[W], data: Any, path: str) -> list[W]:
        if not isinstance(data, list):
            raise MeshError(f"the control plane at {self.server} answered {path} with no list")
        return [self._typed(cls, item, f"{path}[{i}]") for i, item in enumerate(data)]

    def proxies(self) -> list[ProxyStatus]:
        return self._typed_list(ProxyStatus, self.get("/v1/proxies"), "/v1/proxies")

    def apply(self, request: ApplyRequest) -> ApplyResponse:
        return self._typed(ApplyResponse, self.post("/v1/resources", request.to_json()), "/v1/resources")

    def delete_resources(self, request: DeleteRequest) -> DeleteResponse:
        return self._typed(DeleteResponse, self.post("/v1/resources/delete", request.to_json()),
                           "/v1/resources/delete")

    def resources(self, query: ResourceQuery) -> list[dict]:
        """The stored resources' documents (apiVersion, kind, metadata, spec), as the operator wrote them."""
        path = "/v1/resources" + (f"?{urlencode(query.to_query())}" if query.to_query() else "")
        data = self.get(path)
        if not isinstance(data, list):
            raise MeshError(f"the control plane at {self.server} answered {path} with no list")
        return data

    def proxy_config(self, node: str) -> ProxyConfigResponse:
        path = f"/v1/proxies/{quote(node, safe='')}/config"
        return self._typed(ProxyConfigResponse, self.get(path), path)

    def create_token(self, request: TokenRequest) -> TokenResponse:
        return self._typed(TokenResponse, self.post("/v1/tokens", request.to_json()), "/v1/tokens")

    def tokens(self) -> list[JoinTokenInfo]:
        return self._typed_list(JoinTokenInfo, self.get("/v1/tokens"), "/v1/tokens")

    def health(self) -> Health:
        return self._typed(Health, self.get("/healthz"), "/healthz")

    def dry_run(self, request: ApplyRequest) -> DryRunResponse:
        return self._typed(DryRunResponse, self.post("/v1/resources/dry-run", request.to_json()),
                           "/v1/resources/dry-run")

    # authorization
    def authz_check(self, query: AuthzCheckQuery) -> AuthzCheckResponse:
        path = "/v1/authz/check?" + urlencode(query.to_query())
        return self._typed(AuthzCheckResponse, self.get(path), "/v1/authz/check")

    def authz_dry_run(self, request: AuthzDryRunRequest) -> AuthzDryRunResponse:
        return self._typed(AuthzDryRunResponse, self.post("/v1/authz/dry-run", request.to_json()), "/v1/authz/dry-run")

    # certificates
    def certs(self) -> list[IssuedCert]:
        return self._typed_list(IssuedCert, self.get("/v1/certs"), "/v1/certs")

    def ca_state(self) -> CaState:
        return self._typed(CaState, self.get("/v1/ca"), "/v1/ca")

    def ca_rotate(self, request: CaRotateRequest) -> CaState:
        return self._typed(CaState, self.post("/v1/ca/rotate", request.to_json()), "/v1/ca/rotate")

    def ca_certs(self) -> list[CaCert]:
        return self._typed_list(CaCert, self.get("/v1/ca/certs"), "/v1/ca/certs")

    # trust bundles and federation
    def trust_bundle(self) -> TrustBundle:
        return self._typed(TrustBundle, self.get("/v1/trust-bundle"), "/v1/trust-bundle")

    def spiffe_bundle(self) -> SpiffeBundleExport:
        return self._typed(SpiffeBundleExport, self.get("/v1/trust-bundle/spiffe"), "/v1/trust-bundle/spiffe")

    def trust_bundles(self) -> list[FederatedDomain]:
        return self._typed_list(FederatedDomain, self.get("/v1/trust-bundles"), "/v1/trust-bundles")

    def import_trust_bundle(self, request: TrustBundleImport) -> FederatedDomain:
        return self._typed(FederatedDomain, self.post("/v1/trust-bundles", request.to_json()), "/v1/trust-bundles")

    def remove_trust_bundle(self, trust_domain: str) -> TrustBundleRemoved:
        path = f"/v1/trust-bundles/{quote(trust_domain, safe='')}"
        return self._typed(TrustBundleRemoved, self.call("DELETE", path), path)

    # operator certificates
    def issue_operator_cert(self, request: OperatorCertRequest) -> OperatorCertIssued:
        return self._typed(OperatorCertIssued, self.post("/v1/operators/certs", request.to_json()),
                           "/v1/operators/certs")

    def operator_certs(self) -> list[OperatorCert]:
        return self._typed_list(OperatorCert, self.get("/v1/operators/certs"), "/v1/operators/certs")

    def revoke_operator_cert(self, name: str) -> OperatorCertRevoked:
        path = f"/v1/operators/certs/{quote(name, safe='')}"
        return self._typed(OperatorCertRevoked, self.call("DELETE", path), path)

    # canaries
    def start_canary(self, request: CanaryRequest) -> CanaryStatus:
        return self._typed(CanaryStatus, self.post("/v1/canaries", request.to_json()), "/v1/canaries")

    def canary(self, service: str) -> CanaryStatus:
        path = f"/v1/canaries/{quote(service, safe='')}"
        return self._typed(CanaryStatus, self.get(path), path)

    def canaries(self) -> list[CanaryStatus]:
        return self._typed_list(CanaryStatus, self.get("/v1/canaries"), "/v1/canaries")

    def abort_canary(self, service: str) -> CanaryStatus:
        path = f"/v1/canaries/{quote(service, safe='')}/abort"
        return self._typed(CanaryStatus, self.post(path, {}), path)

    # alerts
    def alerts(self, state: str = "") -> list[AlertView]:
        path = "/v1/alerts" + (f"?{urlencode({'state': state})}" if state else "")
        return self._typed_list(AlertView, self.get(path), path)

    def alert_rules(self, name: str = "") -> list[AlertRuleView]:
        path = "/v1/alerts/rules" + (f"?{urlencode({'name': name})}" if name else "")
        return self._typed_list(AlertRuleView, self.get(path), path)


def client_for(args, timeout: float = 10.0) -> Client:
    """The client for a command's parsed ``args`` (``--server``, ``--token``, ``--state-dir`` when it has them)."""
    state_dir = getattr(args, "state_dir", None)
    return Client(discover_server(getattr(args, "server", None), state_dir), timeout=timeout,
                  token=getattr(args, "token", None), state_dir=state_dir)
