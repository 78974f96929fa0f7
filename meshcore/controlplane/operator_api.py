"""The operator-facing HTTP API that ``meshctl`` talks to: status, resources, proxies, tokens, metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from google.protobuf import json_format
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import naming
from ..durations import parse_duration
from ..errors import BadRequest, Conflict, FieldError, MeshError, NotFound, StoreError, Unavailable, ValidationError, map_exceptions
from ..api._wire import Wire
from ..api.operator import (
    ApplyRequest,
    ApplyResponse,
    ApplyResult,
    AuthzCheckResponse,
    CaCert,
    CaRotateRequest,
    CaState,
    DeleteRequest,
    DeleteResponse,
    Health,
    IssuedCert,
    JoinTokenInfo,
    ProxyConfigResponse,
    ResourceFile,
    ResourceQuery,
    StatusResponse,
    TokenRequest,
    TokenResponse,
    TrustBundle,
    resolve_kind,
)
from ..resources.loader import load_documents, validate_set
from ..resources.registry import KINDS
from ..resources.model import Resource, ResourceKey
from ._http import Request, Response, Router
from .operators import AuthorizingRouter

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from ..ca import CertificateAuthority, JoinTokens
    from ..resources.store import ResourceStore
    from ._contexts import CaControl, MeshView
    from .operator_certs import OperatorCertStore
    from .operators import OperatorTokenStore

log = logging.getLogger("meshcore.controlplane.api")

W = TypeVar("W", bound=Wire)


def _own(cls: type[W], data: object, what: str) -> W:
    """The server's own answer ``data`` (a dict from the CA, the token store, the evaluator) checked into
    ``cls``; a mismatch is a server error (500 naming the field), not the caller's fault (400)."""
    try:
        return cls.from_json(data, what)
    except BadRequest as exc:
        raise MeshError(f"cannot describe {what}: {exc}") from exc


@dataclass(frozen=True)
class OperatorContext:
    """What the operator API serves from (the daemon wires it; a test can hand in its own parts)."""

    store: ResourceStore
    mesh: MeshView
    ca: CertificateAuthority
    ca_control: CaControl
    tokens: JoinTokens
    operators: OperatorTokenStore
    status: Callable[[], StatusResponse]  # /v1/status
    registry: CollectorRegistry  # /metrics
    operator_certs: OperatorCertStore | None = None  # also accept operator client certificates (TLS)
    features: Sequence[Callable[[AuthorizingRouter], None]] = ()  # each adds its routes (canaries, dashboard, ...)


class OperatorApi:
    def __init__(self, ctx: OperatorContext):
        self.ctx = ctx

    def router(self) -> AuthorizingRouter:
        ctx = self.ctx
        r = AuthorizingRouter(ctx.operators)  # GET: read-only, other methods: admin; see operators.py
        if ctx.operator_certs is not None:  # also operator client certificates (TLS)
            from .operator_certs import CertAuthorizingRouter

            r = CertAuthorizingRouter(ctx.operators, ctx.operator_certs, ctx.ca.trust_domain)
        r.add("GET", "/v1/status", lambda req: ctx.status())
        r.add("GET", "/v1/proxies", lambda req: ctx.status().proxies)
        r.add("GET", "/v1/proxies/{node}/config", self.proxy_config)
        r.add("GET", "/v1/resources", self.list_resources)
        r.add("POST", "/v1/resources", self.apply)
        r.add("POST", "/v1/resources/delete", self.delete)
        r.add("POST", "/v1/tokens", self.create_token)
        r.add("GET", "/v1/tokens", self.list_tokens)
        r.add("GET", "/v1/certs", self.certs)
        r.add("GET", "/v1/trust-bundle", lambda req: TrustBundle(trust_domain=ctx.ca.trust_domain,
                                                                 bundle=ctx.ca.bundle_pem()))
        r.add("GET", "/v1/authz/check", self.authz_check)
        r.add("POST", "/v1/authz/check", self.authz_check_token)  # with a JWT: in the body, never in a URL
        r.add("GET", "/metrics", self.metrics)
        r.add("GET", "/healthz", lambda req: Health())
        self._add_ca_routes(r)
        from .authz_dry_run import authz_dry_run
        from .dry_run import dry_run

        r.add("POST", "/v1/resources/dry-run", lambda req: dry_run(ctx.store, ctx.mesh, self._parse(req)[1]),
              role="read-only")  # changes nothing: a preview for any operator
        r.add("POST", "/v1/authz/dry-run", lambda req: authz_dry_run(ctx.mesh.snapshot, req, self._parse),
              role="read-only")
        for add_routes in ctx.features:
            add_routes(r)
        return r

    # --- /v1/ca: certificate lifecycle (root rotation, certificate listing with expiry) -----
    def _add_ca_routes(self, r: Router) -> None:
        r.add("GET", "/v1/ca", lambda req: self._ca_state(self.ctx.ca_control.status()))
        r.add("POST", "/v1/ca/rotate", self.ca_rotate)
        r.add("GET", "/v1/ca/certs", self.ca_certs)

    @staticmethod
    def _ca_state(state: dict) -> CaState:
        return _own(CaState, state, "the CA")

    def ca_rotate(self, req: Request) -> CaState:
        """``{}`` starts a root rotation; ``{"finish": true}`` retires the old root; ``force`` skips the
        safety wait (start: sign from the new root at once; finish: even with leaves on the old root);
        ``{"hold": true}`` starts one that stays preparing until ``{"release": true}``."""
        from ..errors import CAError

        body = CaRotateRequest.from_json(req.json())
        steps = [name for name, on in (("finish", body.finish), ("hold", body.hold), ("release", body.release)) if on]
        if len(steps) > 1:
            raise BadRequest(f"{' and '.join(steps)} are separate steps of a rotation: ask for one at a time")
        try:
            if body.finish:
                return self._ca_state(self.ctx.ca_control.finish(body.force))
            if body.release:
                return self._ca_state(self.ctx.ca_control.release())
            if body.hold:
                return self._ca_state(self.ctx.ca_control.rotate(body.force, hold=True))
            return self._ca_state(self.ctx.ca_control.rotate(body.force))
        except CAError as exc:  # the rotation's state does not allow that step now
            raise Conflict(str(exc)) from exc

    def ca_certs(self, req: Request) -> list[CaCert]:
        """Every unexpired leaf (newest per identity and node) with its renewal point and whether it is
        ``expiring`` (past its latest renewal point: half life plus the agents' jitter) and which root it
        chains to (``current``, ``next``, ``previous``)."""
        from datetime import datetime, timezone

        from cryptography.hazmat.primitives import hashes

        from ..ca.authority import CLOCK_SKEW
        from ..ca.model import rfc3339

        now = datetime.now(timezone.utc)
        ca = self.ctx.ca
        roles = {}
        state = ca.state()
        for root in state["roots"]:
            roles[root["sha256"]] = root["role"]
        out = []
        for c in ca.issued():
            start = c.not_before + CLOCK_SKEW if c.not_before + CLOCK_SKEW < c.not_after else c.not_before
            life = c.not_after - start
            renew_at = start + life * 0.5
            latest = start + life * 0.55  # agents renew at half life +-10% of it
            anchor = ca.anchor_of(c)
            out.append(CaCert(
                spiffe_id=c.spiffe_id, serial=c.serial, node=c.node,
                not_before=rfc3339(c.not_before), not_after=rfc3339(c.not_after),
                renew_at=rfc3339(renew_at), expiring=now >= latest,
                root=roles.get(anchor.fingerprint(hashes.SHA256()).hex(), "unknown") if anchor else "unknown",
            ))
        return out

    def _parse(self, req: Request) -> tuple[dict, list[Resource]]:
        """The request's body and the resources of its ``files`` (422 with every error when one is invalid)."""
        body = req.json()
        return body, self._load(ApplyRequest.from_json(body).checked().files)

    @staticmethod
    def _load(files: Sequence[ResourceFile]) -> list[Resource]:
        resources: list[Resource] = []
        errors: list[FieldError] = []
        for f in files:
            try:
                resources.extend(load_documents(f.content, f.name))
            except ValidationError as exc:
                errors.extend(exc.errors)
        if errors:
            raise ValidationError(errors, "nothing applied")
        return resources

    def apply(self, req: Request) -> ApplyResponse:
        body = ApplyRequest.from_json(req.json()).checked()
        resources = self._load(body.files)
        keys = [str(r.key) for r in resources]
        if body.dry_run:
            return ApplyResponse(valid=tuple(keys), dry_run=True)
        existing = {r.key: r for r in self.ctx.store.list()}
        # Checks across resources (a VirtualService's subsets exist, one resource per host...) run on
        # what the store would hold afterwards, so nothing inconsistent is ever applied.
        merged = {**existing, **{r.key: r for r in resources}}
        problems = validate_set(list(merged.values()))
        if problems:
            raise ValidationError(problems, "nothing applied")
        result = []
        for r in resources:
            old = existing.get(r.key)
            state = "created" if old is None else ("unchanged" if old.canonical_json() == r.canonical_json() else "configured")
            result.append(ApplyResult(resource=str(r.key), result=state))
        try:
            self.ctx.store.apply(resources)
        except StoreError as exc:
            raise StoreError(f"nothing applied: {exc}") from exc
        log.info("applied %d resource(s): %s", len(resources), ", ".join(keys))
        return ApplyResponse(applied=tuple(result))

    def delete(self, req: Request) -> DeleteResponse:
        body = DeleteRequest.from_json(req.json())
        if body.keys:
            keys = [ResourceKey(*parts) for parts in body.key_parts()]
        else:
            keys = [r.key for r in self._load(ApplyRequest(files=body.files).checked().files)]
        remaining = [r for r in self.ctx.store.list() if r.key not in set(keys)]
        problems = validate_set(remaining)
        if problems:  # e.g. deleting a DestinationRule whose subsets a VirtualService still routes to
            raise ValidationError(problems, "nothing deleted")
        try:
            removed = self.ctx.store.delete(keys)
        except StoreError as exc:
            raise StoreError(f"nothing deleted: {exc}") from exc
        return DeleteResponse(deleted=tuple(str(k) for k in removed),
                              not_found=tuple(str(k) for k in keys if k not in removed))

    def list_resources(self, req: Request) -> list:
        query = ResourceQuery.from_query(req.query)
        kind = resolve_kind(query.kind, KINDS) if query.kind else None
        name = query.name
        out = []
        for r in sorted(self.ctx.store.list(), key=lambda r: (r.kind, r.namespace, r.name)):
            if kind and r.kind.lower() != kind.lower():
                continue
            if name and r.name != name:
                continue
            out.append(r.to_document())
        return out

    def proxy_config(self, req: Request) -> ProxyConfigResponse:
        node = req.params["node"]
        built = self.ctx.mesh.build_for(node)
        if built is None:
            raise NotFound(f"no proxy for node {node!r} is connected; see `meshctl get proxies`")
        return ProxyConfigResponse(
            node=node, version=self.ctx.mesh.cache_status(node).get("version"),
            resources={type_url.rsplit(".", 1)[-1]: [json_format.MessageToDict(m) for m in msgs]
                       for type_url, msgs in built.items()})

    def create_token(self, req: Request) -> TokenResponse:
        body = TokenRequest.from_json(req.json())
        node = body.node
        if not node:
            raise BadRequest("token create needs a node name")
        naming.check_node_name(node, BadRequest)  # it becomes the node's SPIFFE ID and its log field
        with map_exceptions({ValueError: BadRequest}):
            ttl = parse_duration(body.ttl)
        if ttl <= timedelta(0) or ttl > timedelta(days=7):
            raise BadRequest("ttl must be between 1s and 7d")
        token = self.ctx.tokens.create(node, ttl=ttl)
        return TokenResponse(node=node, token=token, ttl_seconds=int(ttl.total_seconds()),
                             node_spiffe_id=naming.node_spiffe_id(self.ctx.ca.trust_domain, node))

    def list_tokens(self, req: Request) -> list[JoinTokenInfo]:
        return [_own(JoinTokenInfo, e, f"join token {i}") for i, e in enumerate(self.ctx.tokens.list())]

    def certs(self, req: Request) -> list[IssuedCert]:
        return [IssuedCert(spiffe_id=c.spiffe_id, serial=c.serial, node=c.node,
                           not_before=c.not_before.isoformat().replace("+00:00", "Z"),
                           not_after=c.not_after.isoformat().replace("+00:00", "Z"))
                for c in self.ctx.ca.issued()]

    def authz_check(self, req: Request) -> AuthzCheckResponse:
        """``meshctl authz check``: ?to=SVC[&from=SVC|PRINCIPAL][&method=&path=&host=&source_ip=][&header=k=v...]."""
        from urllib.parse import parse_qs, urlsplit

        from ..authz import CheckQuery, check
        from ..errors import ConfigError

        query = parse_qs(urlsplit(req.handler.path).query, keep_blank_values=True)
        one = lambda key, default=None: query.get(key, [default])[-1]  # noqa: E731
        if not one("to"):
            raise BadRequest("authz check needs ?to=SERVICE (and usually from=SERVICE)")
        headers = {}
        for item in query.get("header", []):
            name, sep, value = item.partition("=")
            if not sep or not name:
                raise BadRequest(f"header {item!r} must be NAME=VALUE")
            headers[name.lower()] = value
        snapshot = self.ctx.mesh.snapshot()
        if snapshot is None:
            raise Unavailable("the control plane has no mesh snapshot yet (catalog or store not read); retry shortly")
        try:
            answer = check(snapshot, CheckQuery(
                destination=one("to"), source=one("from") or None, method=one("method", "GET"),
                path=one("path", "/"), host=one("host"), headers=headers, source_ip=one("source_ip") or None,
                sni=one("sni") or None))
        except ConfigError as exc:  # the service named is not in the mesh
            raise NotFound(str(exc)) from exc
        return _own(AuthzCheckResponse, answer, "the authz check")

    def authz_check_token(self, req: Request) -> AuthzCheckResponse:
        """``meshctl authz check --token``: :class:`AuthzCheckRequest` in the body (meshcore.authz.token)."""
        from ..api.operator import AuthzCheckRequest
        from ..authz import CheckQuery, check
        from ..errors import ConfigError

        body = AuthzCheckRequest.from_json(req.json())
        snapshot = self.ctx.mesh.snapshot()
        if snapshot is None:
            raise Unavailable("the control plane has no mesh snapshot yet (catalog or store not read); retry shortly")
        try:
            answer = check(snapshot, CheckQuery(
                destination=body.to, source=body.source or None, method=body.method, path=body.path,
                host=body.host or None, headers={k.lower(): v for k, v in body.headers},
                source_ip=body.source_ip or None, token=body.token or None, jwks=body.jwks or None,
                remote_ip=body.remote_ip or None, sni=body.sni or None))
        except ConfigError as exc:  # the service named is not in the mesh
            raise NotFound(str(exc)) from exc
        return _own(AuthzCheckResponse, answer, "the authz check")

    def metrics(self, req: Request) -> Response:
        return Response(generate_latest(self.ctx.registry), content_type=CONTENT_TYPE_LATEST)
