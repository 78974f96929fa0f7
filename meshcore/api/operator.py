"""The operator API's wire contract: request and response types shared by the control plane
(:mod:`meshcore.controlplane.operator_api`, the daemon's status view) and ``meshctl`` (:mod:`meshcore.cli`).

Each type is a frozen dataclass with ``to_json()`` and a checked ``from_json()`` (see :mod:`._wire`); the
JSON is what the API has always carried. Standard library only: ``meshctl`` imports this without the
control plane's dependencies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ..errors import BadRequest
from ._wire import Wire, omit_empty, omit_none

# --- GET /v1/status, GET /v1/proxies -------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus(Wire):
    """A mesh service instance on a node: its mTLS inbound listener is ``inbound`` (host:port)."""

    name: str
    id: str
    spiffe_id: str
    healthy: bool
    inbound: str = ""
    labels: dict = field(default_factory=dict, metadata={"omit_empty": True})  # workload labels: what subsets select
    datacenter: str = omit_empty()


@dataclass(frozen=True)
class GatewayStatus(Wire):
    """A gateway instance on a node (no inbound listener): its ``kind`` and the listeners it opens."""

    name: str
    id: str
    spiffe_id: str
    healthy: bool
    kind: str
    listeners: tuple[str, ...] = ()
    datacenter: str = omit_empty()
    addresses: tuple[str, ...] = omit_empty(())  # a mesh gateway's LAN and WAN host:port (what sidecars dial)


@dataclass(frozen=True)
class ProxyStatus(Wire):
    """One node's proxy as the control plane sees it."""

    node: str
    services: tuple[ServiceStatus, ...] = ()
    gateways: tuple[GatewayStatus, ...] = ()
    admin: str = ""  # Envoy admin host:port
    metrics: str = ""  # the agent's merged metrics URL
    connected: bool = False
    synced: bool = False  # ACKed every type's current version
    version: str = ""
    error: str = ""  # why its last build was not published
    access_log: str = ""  # "", "stdout" or a file
    envoy_version: str = omit_empty()  # from its ADS node (user_agent_build_version)
    agent_version: str = omit_empty()  # the meshcore agent that started it (its bootstrap's node metadata)

    @property
    def entries(self) -> tuple[ServiceStatus | GatewayStatus, ...]:
        return self.services + self.gateways


@dataclass(frozen=True)
class RejectedResource(Wire):
    """A stored document the control plane left out of the mesh: where it is, and why."""

    key: str  # kind/namespace/name and its file or Consul KV key
    error: str


@dataclass(frozen=True)
class SourceStatus(Wire):
    """One source the mesh is built from (``catalog``, ``resources``) and how it is doing.

    ``state``: ``ok``; ``error`` (its last read failed; the mesh keeps what it last read); ``holding`` (its
    answer looked like lost data, e.g. Consul restarted empty: the last good contents are held, ``detail``
    says until when); ``starting`` (nothing read yet)."""

    name: str
    kind: str = ""
    state: str = "starting"
    detail: str = omit_empty()
    index: int = 0
    error: str = omit_empty()
    error_at: str = omit_empty()  # RFC 3339 (UTC)
    rejected: tuple[RejectedResource, ...] = omit_empty(())


@dataclass(frozen=True)
class ThreadStatus(Wire):
    """A supervised background loop: restarted ``restarts`` times (each a bug: its error is kept)."""

    name: str
    alive: bool = True
    restarts: int = 0
    last_error: str = omit_empty()


@dataclass(frozen=True)
class ReplicaStatus(Wire):
    """One control plane replica as registered in Consul (service ``meshcore-control-plane``)."""

    id: str
    node: str = ""
    address: str = ""
    http_port: int = 0
    xds_port: int = 0
    api_port: int = 0
    version: str = ""
    healthy: bool = False
    output: str = omit_empty()  # the failing check's output
    leader: bool = False


@dataclass(frozen=True)
class ControlPlaneStatus(Wire):
    version: str = omit_empty()  # meshcore's version (``meshctl version``)
    xds: str = ""
    api: str = ""
    http: str = ""
    https: str = omit_empty()  # only when the operator API also serves TLS
    trust_domain: str = ""
    snapshot: str = ""  # the mesh snapshot's hash
    catalog_error: str = ""
    store_error: str = ""
    build_error: str = omit_empty()  # the last rebuild failed (retried with backoff; proxies keep their config)
    last_error: str = omit_empty()  # the most recent error of any source or the builder, with time and source
    sources: tuple[SourceStatus, ...] = ()
    threads: tuple[ThreadStatus, ...] = omit_empty(())
    replica: str = omit_empty()  # this replica's id (--replica-id)
    leader: str = omit_empty()  # the leading replica's id ("" while one is being elected)
    leadership: str = omit_empty()  # "single" (one replica, --store dir) or "consul" (a session lock)
    replicas: tuple[ReplicaStatus, ...] = omit_empty(())  # every registered replica (--store consul)
    replicas_error: str = omit_empty()  # listing them from Consul failed

    @property
    def healthy(self) -> bool:
        """Every source ``ok``, nothing rejected, no failed rebuild."""
        return not self.build_error and all(s.state == "ok" and not s.rejected for s in self.sources)


@dataclass(frozen=True)
class StatusResponse(Wire):
    control_plane: ControlPlaneStatus
    proxies: tuple[ProxyStatus, ...] = ()


# --- /v1/resources ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceFile(Wire):
    """One file of YAML documents as the operator wrote it (validated on the server with this name)."""

    name: str = "<api>"
    content: str = ""


@dataclass(frozen=True)
class ApplyRequest(Wire):
    """``POST /v1/resources`` (and ``/v1/resources/dry-run``): all or nothing."""

    files: tuple[ResourceFile, ...] = ()
    dry_run: bool = omit_empty(False)  # validate only

    def checked(self) -> ApplyRequest:
        if not self.files:
            raise BadRequest('body needs "files": [{"name": ..., "content": ...}]')
        return self


@dataclass(frozen=True)
class ApplyResult(Wire):
    resource: str  # Kind/namespace/name
    result: str  # created, configured, unchanged


@dataclass(frozen=True)
class ApplyResponse(Wire):
    applied: tuple[ApplyResult, ...] = ()
    valid: tuple[str, ...] = omit_empty(())  # with dry_run: the resources that would be applied
    dry_run: bool = omit_empty(False)


@dataclass(frozen=True)
class DeleteRequest(Wire):
    """``POST /v1/resources/delete``: by ``keys`` (Kind/namespace/name) or by the resources in ``files``."""

    keys: tuple[str, ...] = omit_empty(())
    files: tuple[ResourceFile, ...] = omit_empty(())

    def key_parts(self) -> list[tuple[str, str, str]]:
        out = []
        for k in self.keys:
            parts = k.split("/")
            if len(parts) != 3:
                raise BadRequest(f"key {k!r} must be Kind/namespace/name")
            out.append((parts[0], parts[1], parts[2]))
        return out


@dataclass(frozen=True)
class DeleteResponse(Wire):
    deleted: tuple[str, ...] = ()
    not_found: tuple[str, ...] = ()


@dataclass(frozen=True)
class ResourceQuery:
    """``GET /v1/resources?kind=&name=``: the stored documents, optionally of one kind (as typed: the
    server resolves plurals and case) and one name."""

    kind: str = ""
    name: str = ""

    def to_query(self) -> dict[str, str]:
        return {k: v for k, v in (("kind", self.kind), ("name", self.name)) if v}

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> ResourceQuery:
        return cls(kind=query.get("kind", ""), name=query.get("name", ""))


def resolve_kind(text: str, known: Iterable[str]) -> str:
    """The kind ``text`` names, case-insensitively and in the plural too (``virtualservices``);
    :class:`BadRequest` listing the known kinds otherwise."""
    names = list(known)
    wanted = text.lower()
    for kind in names:
        if kind.lower() in (wanted, wanted.rstrip("s")):
            return kind
    raise BadRequest(f"unknown kind {text!r}; known kinds: {', '.join(names)}")


# --- /v1/proxies/{node}/config, /v1/tokens, /v1/ca/rotate ------------------------------------------------


@dataclass(frozen=True)
class ProxyConfigResponse(Wire):
    node: str
    version: str | None = None
    resources: dict = field(default_factory=dict)  # short type name -> [resource as protobuf JSON]


@dataclass(frozen=True)
class TokenRequest(Wire):
    """``POST /v1/tokens``: a one-time join token scoped to ``node``, valid for ``ttl`` (1s..7d)."""

    node: str = ""
    ttl: str = "1h"


@dataclass(frozen=True)
class TokenResponse(Wire):
    node: str
    token: str
    ttl_seconds: int
    node_spiffe_id: str


@dataclass(frozen=True)
class CaRotateRequest(Wire):
    """``POST /v1/ca/rotate``: ``{}`` starts a root rotation, ``finish`` retires the old root; ``force``
    skips the safety wait; ``hold`` starts one that stays preparing until ``release`` lets it move on."""

    finish: bool = False
    force: bool = False
    hold: bool = False
    release: bool = False


@dataclass(frozen=True)
class IssuedCert(Wire):
    """``GET /v1/certs``: an unexpired leaf the CA signed (times RFC 3339, UTC)."""

    spiffe_id: str
    serial: str
    node: str | None
    not_before: str
    not_after: str


@dataclass(frozen=True)
class CaCert(IssuedCert):
    """``GET /v1/ca/certs``: an unexpired leaf (newest per identity and node) with its renewal point,
    whether it is ``expiring`` (past its latest renewal point) and the ``root`` it chains to
    (``current``, ``next``, ``previous`` or ``unknown``)."""

    renew_at: str
    expiring: bool
    root: str = "unknown"


@dataclass(frozen=True)
class CaCertInfo(Wire):
    """A CA certificate of ``GET /v1/ca``: subject, SHA-256 fingerprint, validity (RFC 3339)."""

    subject: str
    sha256: str
    not_before: str
    not_after: str


@dataclass(frozen=True)
class CaRoot(CaCertInfo):
    role: str = "current"  # current | next | previous


@dataclass(frozen=True)
class CaLeaf(Wire):
    """A leaf still chaining to the old root during a rotation."""

    spiffe_id: str
    serial: str
    not_after: str
    node: str | None = None


@dataclass(frozen=True)
class CaState(Wire):
    """``GET /v1/ca`` (and what ``POST /v1/ca/rotate`` answers): the CA's mode, rotation phase, roots,
    signing intermediate and, while rotating, what still depends on the old root."""

    trust_domain: str
    mode: str  # generated | upstream
    key_type: str
    phase: str  # idle | preparing | active
    roots: tuple[CaRoot, ...]
    intermediate: CaCertInfo
    signer_key_id: str = ""
    bundle_sha256: str = ""
    started_at: str | None = None
    activated_at: str | None = None
    old_root_certificates: tuple[CaLeaf, ...] = ()
    nodes_without_bundle: tuple[str, ...] = ()
    held: bool = False  # preparing until `meshctl ca rotate --resume` releases it
    forced_past: tuple[str, ...] | None = omit_none()  # finish --force: the leaves it retired the root under


@dataclass(frozen=True)
class JoinTokenInfo(Wire):
    """``GET /v1/tokens``: a join token the control plane knows (used and expired ones stay a week). Never the
    token itself: ``id`` is a prefix of its hash. Times RFC 3339; ``used`` is None until an agent joins with it."""

    id: str
    node: str
    created: str
    expires: str
    used: str | None
    state: str  # valid | used | expired | revoked


@dataclass(frozen=True)
class OperatorTokenInfo(Wire):
    """``GET /v1/operators/tokens`` (admin): an operator API token. Never the token: ``id`` is a prefix of its hash."""

    id: str
    name: str
    role: str
    created: str
    expires: str | None
    state: str  # valid | expired


@dataclass(frozen=True)
class TokenRevokeRequest(Wire):
    """``POST /v1/tokens/revoke`` (admin): revoke the one join or operator token whose id starts with ``id``
    (at least 4 hex digits). ``kind``: ``join``, ``operator`` or ``any``. An id that matches several tokens is
    refused (409, naming them); so is the last valid admin operator token unless ``force``."""

    id: str
    kind: str = "any"
    force: bool = False


@dataclass(frozen=True)
class RevokedToken(Wire):
    kind: str  # join | operator
    id: str
    owner: str  # the join token's node, the operator token's name
    role: str = omit_empty()  # operator tokens: admin | read-only


@dataclass(frozen=True)
class TokenRevokeResponse(Wire):
    revoked: tuple[RevokedToken, ...] = ()


@dataclass(frozen=True)
class Health(Wire):
    """``GET /healthz`` (open, no token): the operator API answers."""

    ok: bool = True


# --- dry runs: /v1/resources/dry-run (meshctl apply --dry-run) --------------------------------------------


@dataclass(frozen=True)
class ProxyDiff(Wire):
    """One connected proxy's change under a dry run: route/cluster names (``route/<name>``) added, removed and
    changed, a unified diff of their xDS JSON, and what its publish check would refuse (it would keep its config)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    diff: str = ""
    problems: tuple[str, ...] = ()
    note: str = omit_empty()  # why its current config could not be built (then everything shows as added)

    @property
    def unchanged(self) -> bool:
        return not (self.added or self.removed or self.changed or self.problems)


@dataclass(frozen=True)
class DryRunResponse(Wire):
    """``POST /v1/resources/dry-run`` (same body as apply): what each resource and each proxy would become."""

    resources: tuple[ApplyResult, ...] = ()
    nodes: dict[str, ProxyDiff] = field(default_factory=dict)  # node -> its change
    dry_run: bool = True


# --- authorization: /v1/authz/check, /v1/authz/dry-run ----------------------------------------------------


@dataclass(frozen=True)
class AuthzCaller(Wire):
    """Who calls: a mesh service (its first principal and address), a principal, or nobody (plaintext)."""

    service: str | None = None
    principal: str | None = None  # without spiffe://
    ip: str | None = None
    namespace: str | None = None  # the principal's namespace


@dataclass(frozen=True)
class AuthzTarget(Wire):
    service: str


@dataclass(frozen=True)
class AuthzRequestView(Wire):
    method: str
    path: str
    host: str
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AuthzVerdict(Wire):
    """A decision: ``action`` of the policy kind that decided (DENY/ALLOW, None: allowed by default), the
    matching rule (``policy`` ns/name and ``rule_index``, None when none matched) and why."""

    allowed: bool
    action: str | None
    policy: str | None
    rule_index: int | None
    reason: str


@dataclass(frozen=True)
class AuthzToken(Wire):
    """What the destination's proxy does with ``--jwt`` (:mod:`meshcore.authz.token`): ``status`` 0 (passes; its
    claims decide), 401/403 (refused before any AuthorizationPolicy); whether its signature was checked."""

    status: int = 0
    reason: str = ""
    issuer: str | None = None
    subject: str | None = None
    rule: str | None = None  # ns/name[i] of the RequestAuthentication rule for its issuer
    signature: str = "not checked"  # verified | not checked | failed
    signature_detail: str = ""


@dataclass(frozen=True)
class AuthzResult(AuthzVerdict):
    """The decision on one group of the destination's instances (same labels, namespace, port, protocol);
    ``audit`` lists the AUDIT rules (``ns/name[i]``) that matched (they never change the verdict)."""

    instances: tuple[str, ...] = ()
    namespace: str = ""
    port: int = 0
    protocol: str = "http"
    audit: tuple[str, ...] = ()
    dry_run: str | None = None  # what the dry-run policies selecting these instances would decide (not enforced)
    token: AuthzToken | None = omit_none()  # with --jwt


@dataclass(frozen=True)
class AuthzCheckRequest(Wire):
    """``POST /v1/authz/check``: :class:`AuthzCheckQuery` with a JWT (``token``, sent as ``Authorization: Bearer``),
    in the body so that no access log holds it; ``jwks``: a key set to check its signature with."""

    to: str
    source: str = ""
    method: str = "GET"
    path: str = "/"
    host: str = ""
    source_ip: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    token: str = ""
    jwks: str = ""
    remote_ip: str = ""  # the client as X-Forwarded-For names it (an ingress gateway's remoteIpBlocks)
    sni: str = ""  # the TLS server name the caller asks for (connection.sni); "": the destination's service name


@dataclass(frozen=True)
class AuthzCheckQuery:
    """``GET /v1/authz/check?to=&from=&method=&path=&host=&source_ip=&header=k=v...``."""

    to: str
    source: str = ""  # a service or a principal; "" for a plaintext caller
    method: str = "GET"
    path: str = "/"
    host: str = ""
    source_ip: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    sni: str = ""  # the TLS server name the caller asks for (connection.sni); "": the destination's service name

    def to_query(self) -> list[tuple[str, str]]:
        params = [("to", self.to), ("method", self.method), ("path", self.path)]
        params += [(k, v) for k, v in (("from", self.source), ("host", self.host), ("source_ip", self.source_ip),
                                       ("sni", self.sni)) if v]
        return params + [("header", f"{k}={v}") for k, v in self.headers]


@dataclass(frozen=True)
class AuthzCheckResponse(Wire):
    """``GET /v1/authz/check``: the decision on every instance group; ``allowed`` only when all allow."""

    caller: AuthzCaller = field(metadata={"json": "from"})
    to: AuthzTarget
    request: AuthzRequestView
    allowed: bool
    results: tuple[AuthzResult, ...] = ()


@dataclass(frozen=True)
class AuthzObservedCall(Wire):
    """An inbound call as the destination's Envoy logged it, and how often (``POST /v1/authz/dry-run``)."""

    service: str
    node: str | None = None
    source_principal: str | None = None  # None: a plaintext caller
    source_ip: str | None = None
    method: str | None = None  # None: a TCP connection
    path: str | None = None
    host: str | None = None
    count: int = 1
    destination_ip: str | None = None  # the address it connected to (destination.ip)
    sni: str | None = None  # the TLS server name it asked for (connection.sni)


@dataclass(frozen=True)
class AuthzDryRunRequest(Wire):
    """``POST /v1/authz/dry-run`` (read-only): decide ``calls`` under the policies in ``files``."""

    files: tuple[ResourceFile, ...] = ()
    calls: tuple[AuthzObservedCall, ...] = ()


@dataclass(frozen=True)
class AuthzFlip(Wire):
    """Observed calls whose verdict the new policies flip, grouped by caller, destination, method, path."""

    source: str  # the principal, or "(plaintext)"
    source_service: str | None
    destination: str
    method: str | None
    path: str | None
    count: int
    before: AuthzVerdict
    after: AuthzVerdict


@dataclass(frozen=True)
class AuthzDryRunResponse(Wire):
    """The calls that would be denied (allowed now) or allowed (denied now); totals; services not in the catalog.
    ``log_files`` and ``skipped_lines`` are added by ``meshctl`` (what it read), never sent by the server."""

    would_deny: tuple[AuthzFlip, ...] = ()
    would_allow: tuple[AuthzFlip, ...] = ()
    resources: tuple[str, ...] = ()
    observed: int = 0
    distinct: int = 0
    unchanged: int = 0
    unknown_destinations: dict[str, int] = field(default_factory=dict)  # service -> calls not evaluated
    caveats: tuple[str, ...] = ()
    log_files: int | None = omit_none()
    skipped_lines: int | None = omit_none()


# --- trust bundles and federation: /v1/trust-bundle, /v1/trust-bundle/spiffe, /v1/trust-bundles ---------


@dataclass(frozen=True)
class TrustBundle(Wire):
    """``GET /v1/trust-bundle``: this trust domain's roots (PEM)."""

    trust_domain: str
    bundle: str


@dataclass(frozen=True)
class SpiffeBundleExport(Wire):
    """``GET /v1/trust-bundle/spiffe``: the roots as PEM and in the SPIFFE bundle format (a JWK Set)."""

    trust_domain: str
    bundle: str
    spiffe_bundle: dict


@dataclass(frozen=True)
class TrustBundleImport(Wire):
    """``POST /v1/trust-bundles`` (admin): import or replace ``trust_domain``'s roots (SPIFFE JSON or PEM)."""

    trust_domain: str = ""
    bundle: str = ""

    def checked(self) -> TrustBundleImport:
        if not self.trust_domain or not self.bundle:
            raise BadRequest('body needs {"trust_domain": "other.example", "bundle": SPIFFE bundle JSON or PEM}')
        return self


@dataclass(frozen=True)
class RootInfo(Wire):
    subject: str
    sha256: str
    not_after: str


@dataclass(frozen=True)
class FederatedDomain(Wire):
    """An imported trust domain (``GET /v1/trust-bundles`` lists them; an import answers with one)."""

    trust_domain: str
    roots: tuple[RootInfo, ...]
    bundle: str
    imported_at: str | None = None
    spiffe_sequence: int | None = None
    # agents calling this replica (within a minute, or holding a call) that have not given Envoy these roots yet
    agents_without: tuple[str, ...] = ()


@dataclass(frozen=True)
class TrustBundleRemoved(Wire):
    removed: str  # the trust domain


# --- operator certificates: /v1/operators/certs ----------------------------------------------------------


@dataclass(frozen=True)
class OperatorCertRequest(Wire):
    """``POST /v1/operators/certs`` (admin): sign ``csr`` (PEM, key made by the operator) for ``name``."""

    name: str = ""
    role: str = "read-only"
    csr: str = ""
    ttl: str = "30d"


@dataclass(frozen=True)
class OperatorCertIssued(Wire):
    name: str
    role: str
    spiffe_id: str
    serial: str
    not_after: str
    chain: str  # PEM: the certificate and its intermediate
    bundle: str  # PEM: the roots to verify the control plane with
    https: str = ""  # the operator API's TLS address, "" when it serves none


@dataclass(frozen=True)
class OperatorCert(Wire):
    """An entry of the role table (``GET /v1/operators/certs``)."""

    name: str
    role: str
    serial: str
    not_after: str
    issued: str
    state: str  # valid | expired


@dataclass(frozen=True)
class OperatorCertRevoked(Wire):
    revoked: int  # how many certificates
    name: str


# --- canaries: /v1/canaries -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryRequest(Wire):
    """``POST /v1/canaries`` (admin). Values are checked by the control plane; numbers may be written as the
    CLI flags are (``steps`` "10,25,50,100" or [10, 25, 50, 100], ``interval`` "1m", ``max_error_rate`` "1%",
    ``max_p99`` "500ms"). ``from`` (the stable subset) defaults to the one subset served now."""

    service: str = ""
    to: str = ""
    stable: str | None = field(default=None, metadata={"json": "from", "omit_empty": True})
    steps: tuple[int, ...] | str | None = omit_empty(None)
    interval: str | float = "1m"
    max_error_rate: str | float = "1%"
    max_p99: str | float | None = omit_empty(None)
    min_requests: int | str | None = omit_empty(None)
    max_holds: int | str | None = omit_empty(None)
    label: str = omit_empty()
    namespace: str = omit_empty()


@dataclass(frozen=True)
class CanarySpecView(Wire):
    """What the operator asked for, as the control plane checked it (``interval_s`` seconds, rates 0..1)."""

    service: str
    canary: str
    stable: str
    steps: tuple[int, ...]
    interval_s: float
    max_error_rate: float
    max_p99_ms: float | None
    min_requests: int
    max_holds: int
    label: str
    namespace: str


@dataclass(frozen=True)
class CanaryDecision(Wire):
    at: float  # epoch seconds
    action: str  # start | advance | hold | promote | rollback | abort | resume
    weight: int  # canary weight while measured
    next_weight: int
    reason: str
    requests: int | None = None
    error_rate: float | None = None
    p99_ms: float | None = None


@dataclass(frozen=True)
class CanaryStatus(Wire):
    """A canary (``GET /v1/canaries[/{service}]``; a start or an abort answers with one)."""

    service: str
    phase: str  # progressing | promoted | failed | aborted
    step: int
    weight: int  # the canary subset's share now
    steps: tuple[int, ...]
    started_at: float
    step_started_at: float
    holds: int
    reason: str
    finished_at: float | None
    weights: dict  # subset -> weight
    spec: CanarySpecView
    decisions: tuple[CanaryDecision, ...] = ()


# --- alerts: /v1/alerts, /v1/alerts/rules -----------------------------------------------------------------


@dataclass(frozen=True)
class AlertView(Wire):
    """An active alert (``GET /v1/alerts[?state=pending|firing]``): times RFC 3339 UTC."""

    name: str
    severity: str
    state: str
    labels: dict
    annotations: dict
    value: float
    value_text: str
    signal: str
    active_since: str | None
    fired_at: str | None
    resolved_at: str | None
    fingerprint: str


@dataclass(frozen=True)
class AlertRuleView(Wire):
    """An effective alert rule (``GET /v1/alerts/rules[?name=]``): the defaults merged with AlertRules."""

    name: str
    alertname: str = ""
    signal: str = ""
    match: dict = field(default_factory=dict)
    op: str = ">"
    threshold: str = "0"  # as written
    threshold_value: float = 0.0
    for_text: str = field(default="0s", metadata={"json": "for"})
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    severity: str = ""
    summary: str = ""
    description: str = ""
    labels: dict = field(default_factory=dict)
    annotations: dict = field(default_factory=dict)
    disabled: bool = False
    origin: str = "default"
    overrides_default: bool = False


__all__ = [
    "AlertRuleView", "AlertView", "ApplyRequest", "AuthzCaller", "AuthzCheckQuery", "AuthzCheckRequest",
    "AuthzCheckResponse", "AuthzToken",
    "AuthzDryRunRequest", "AuthzDryRunResponse", "AuthzFlip", "AuthzObservedCall", "AuthzRequestView", "AuthzResult",
    "AuthzTarget", "AuthzVerdict", "DryRunResponse", "Health", "JoinTokenInfo", "ProxyDiff", "ApplyResponse", "ApplyResult", "CaCert", "CaCertInfo", "CaLeaf", "CaRoot", "CaRotateRequest", "CaState",
    "CanaryDecision", "CanaryRequest", "CanarySpecView", "CanaryStatus", "ControlPlaneStatus", "DeleteRequest",
    "DeleteResponse", "FederatedDomain", "GatewayStatus", "IssuedCert", "OperatorCert", "OperatorCertIssued",
    "OperatorCertRequest", "OperatorCertRevoked", "OperatorTokenInfo", "ProxyConfigResponse", "ProxyStatus", "RejectedResource", "ResourceFile",
    "ReplicaStatus", "ResourceQuery", "RootInfo", "ServiceStatus", "SourceStatus", "SpiffeBundleExport", "StatusResponse", "ThreadStatus", "TokenRequest",
    "RevokedToken", "TokenResponse", "TokenRevokeRequest", "TokenRevokeResponse", "TrustBundle", "TrustBundleImport", "TrustBundleRemoved", "resolve_kind",
]
