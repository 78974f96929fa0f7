"""The API VM agents call (HTTPS): join with a one-time token, get SVIDs signed, fetch the bundle.

Every call but ``join`` and ``recover`` is authenticated by the node's client certificate (URI SAN
``spiffe://<td>/meshcore/node/<node>``), and a node can only ask about itself. That certificate must
still be honoured by the CA on every call (:meth:`CertificateAuthority.node_certificate_refusal`: not
revoked with ``meshctl node revoke``, its intermediate not retired by a finished root rotation), also
on a connection opened before. ``renew-node`` and ``recover`` need the node in the catalog: a node
that left it gets no new certificate. ``recover`` (no client certificate: an expired one no longer
passes TLS) re-issues a node certificate to the holder of the last one's key (see ``meshcore.ca.recovery``).

Root rotation: ``/v1/agent/services`` carries ``ca`` (``bundle_sha256``: the bundle to hold;
``signer_key_id``: the intermediate signing now). Agents send the SHA-256 of the bundle they have
written for Envoy in the ``X-Meshcore-Bundle-SHA256`` header of every call; the control plane
starts signing from a new root only once every connected proxy's node holds the bundle with it.

Blocking queries (Consul's style): ``/v1/agent/services`` answers with ``index``, a hash of everything
the agent follows (its services, the CA state, the xDS address, the federated bundles). A call with
``?index=<that hash>&wait=60s`` is held until that hash changes or ``wait`` (plus up to 1/16 jitter,
at most :data:`MAX_WAIT_S`) passes, then answered; a differing or absent ``index`` is answered at once
(old agents keep today's behaviour). :meth:`AgentApi.changed` wakes the held calls (the control plane
calls it on every new mesh snapshot and CA step); they also re-check every :data:`RECHECK_S` seconds.
A held call occupies its connection's thread (the HTTP server has one per kept-alive connection
anyway); at most ``max_waiting`` are held at once, beyond that calls are answered at once and the
agents poll. :meth:`AgentApi.close` answers every held call at once (shutdown).
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import threading
import time
from functools import partial
from typing import Any, Callable

from cryptography import x509

from .. import naming
from ..api import agent as wire
from ..ca import CertificateAuthority, IssuedCertificate, JoinTokens, check_workload_request
from ..catalog.model import Catalog
from ..durations import parse_duration
from ..errors import BadRequest, CAError, Forbidden, JoinTokenError, SigningRefused, Unauthorized, Unavailable
from ._http import EncodedJson, Request, Response, Router

log = logging.getLogger("meshcore.controlplane.agent_api")

MAX_WAIT_S = 600.0  # the longest a blocking /v1/agent/services call is held
FEDERATED_ACK_WINDOW_S = 60.0  # an agent that called within this long (or holds a call) counts as connected
RECHECK_S = 30.0  # a held call re-checks its answer this often even when nothing woke it
DEFAULT_MAX_WAITING = 512  # held calls at once (each holds its connection's thread; the unit's TasksMax is 1024)
_dumps = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode  # as the router encodes answers


def _csr_uri(csr_pem: str) -> tuple[str, x509.CertificateSigningRequest]:
    """The one URI SAN of ``csr_pem`` and the parsed CSR (handed on to the CA: parsed once)."""
    try:
        csr = x509.load_pem_x509_csr(csr_pem.encode())
    except ValueError as exc:
        raise BadRequest(f"csr is not a PEM certificate signing request: {exc}") from exc
    try:
        sans = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound as exc:
        raise BadRequest("csr has no subjectAltName; put the SPIFFE ID in a URI SAN") from exc
    except ValueError as exc:  # duplicate or malformed extensions
        raise BadRequest(f"csr extensions cannot be parsed: {exc}") from exc
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise BadRequest(f"csr must carry exactly one URI SAN (the SPIFFE ID), found {len(uris)}")
    return uris[0], csr


class AgentApi:
    def __init__(self, ca: CertificateAuthority, tokens: JoinTokens, catalog: Callable[[], Catalog | None],
                 xds_address: str, metrics=None,
                 federated_bundles: Callable[[], tuple[tuple[str, str], ...]] = tuple,
                 on_bundle_ack: Callable[[], None] = lambda: None, max_waiting: int = DEFAULT_MAX_WAITING):
        """``federated_bundles``: other trust domains' roots ``(trust_domain, PEM)``, as agents get them;
        ``on_bundle_ack()`` runs when a node reports holding another bundle than before (root rotation);
        ``max_waiting``: blocking calls held at once (see the module docstring)."""
        self.ca = ca
        self.on_bundle_ack = on_bundle_ack
        self.max_waiting = max_waiting
        self._changes = threading.Condition()
        self._generation = 0  # bumped by changed(): held calls look again
        self._waiting = 0
        self._holding: dict[str, int] = {}  # node -> its blocking calls held now
        self._closed = False
        self.federated_bundles = federated_bundles
        self.tokens = tokens
        self.catalog = catalog
        self.xds_address = xds_address
        self.metrics = metrics
        self._acks: dict[str, tuple[str, float]] = {}  # node -> (bundle sha256 it holds, when reported)
        self._federated_acks: dict[str, tuple[str, float]] = {}  # node -> (its FEDERATED_HEADER, when seen)
        self._acks_lock = threading.Lock()
        self._answer_parts: tuple | None = None  # see _issued
        self._counters: dict[tuple[str, str], Any] = {}  # see _count

    BUNDLE_HEADER = wire.BUNDLE_HEADER
    FEDERATED_HEADER = wire.FEDERATED_HEADER

    def federated_acks(self, within: float = FEDERATED_ACK_WINDOW_S) -> dict[str, dict[str, str]]:
        """node -> {trust domain: SHA-256 of the roots it has given Envoy}, for the agents that called this replica
        within the last ``within`` seconds (an agent that stopped calling drops out: it holds nothing up)."""
        since = time.time() - within
        with self._changes:
            holding = {node for node, n in self._holding.items() if n > 0}  # a held call: alive, however long
        with self._acks_lock:
            return {node: wire.parse_federated_digest(value)
                    for node, (value, at) in self._federated_acks.items() if at >= since or node in holding}

    def bundle_acks(self) -> dict[str, str]:
        """node -> SHA-256 of the trust bundle it last reported holding (written to Envoy's SDS file)."""
        with self._acks_lock:
            return {node: sha for node, (sha, _) in self._acks.items()}

    def ca_info(self) -> dict:
        """What an agent needs to follow a root rotation: the bundle to hold and the signing intermediate."""
        return self._ca_info().to_json()

    def _ca_info(self) -> wire.CaInfo:
        return wire.CaInfo(bundle_sha256=self.ca.bundle_sha256(), signer_key_id=self.ca.signer_key_id(),
                           phase=self.ca.rotation_phase)

    def router(self) -> Router:
        r = Router(pretty=False)  # agents read it: compact JSON
        r.add("POST", wire.JOIN, self.join)
        r.add("POST", wire.RENEW_NODE, self.renew_node)
        r.add("POST", wire.RECOVER, self.recover)
        r.add("GET", wire.SERVICES, self.services)
        r.add("POST", wire.SIGN, self.sign)
        r.add("GET", wire.BUNDLE, self.bundle)
        return r

    # --- helpers ---------------------------------------------------------------------------
    def _issued(self, cert: IssuedCertificate) -> Response:
        """The :class:`wire.IssuedIdentity` of ``cert``, encoded as the router would (compact, sorted keys).
        What is the same for every certificate of one CA state (the bundle and CA info, the chain above the
        leaf, trust domain, xDS address) is encoded once per state; per certificate only its own fields."""
        bundle, bundle_sha, signer, tail = (self.ca.bundle_pem(), self.ca.bundle_sha256(), self.ca.signer_key_id(),
                                            self.ca.chain_tail_pem())
        state = (bundle, bundle_sha, signer, self.ca.rotation_phase, tail)
        cached = self._answer_parts
        if cached is None or cached[0] != state:
            ca = json.dumps(wire.CaInfo(bundle_sha256=bundle_sha, signer_key_id=signer, phase=state[3]).to_json(),
                            sort_keys=True, separators=(",", ":"))
            cached = self._answer_parts = (state, _dumps(bundle), ca, _dumps(tail)[1:],
                                           f"{_dumps(self.ca.trust_domain)},\"xds_address\":{_dumps(self.xds_address)}}}\n")
        _, bundle_json, ca_json, tail_json, trailer = cached
        leaf_json = _dumps(cert.cert_pem)
        if cert.chain_pem == cert.cert_pem + tail:
            chain_json = leaf_json[:-1] + tail_json
        else:  # signed by an intermediate that changed since: its own chain
            chain_json = _dumps(cert.chain_pem)
        not_after = cert.not_after.isoformat().replace("+00:00", "Z")
        return Response(EncodedJson(
            f'{{"bundle":{bundle_json},"ca":{ca_json},"certificate":{leaf_json},"chain":{chain_json},'
            f'"not_after":{_dumps(not_after)},"serial":{_dumps(cert.serial)},"spiffe_id":{_dumps(cert.spiffe_id)},'
            f'"trust_domain":{trailer}'.encode()))

    def _peer_node(self, req: Request) -> str:
        """The node named by the caller's TLS-verified client certificate; from here its bodies may be up to
        MAX_BODY. Whether the CA still honours that certificate is :meth:`_node_of`'s question."""
        for uri in req.peer_uri_sans():
            parsed = naming.parse_node_spiffe_id(uri)
            if parsed and parsed[0] == self.ca.trust_domain:
                req.authenticated()
                return parsed[1]
        raise Unauthorized("this call needs the node's client certificate (join first with a token)")

    def _node_of(self, req: Request) -> str:
        return self._honoured(req, self._peer_node(req))

    def _honoured(self, req: Request, node: str) -> str:
        """``node`` (named by the caller's certificate) once the CA still honours that certificate; records
        the bundle the node reports holding."""
        self._check_honoured(req, node)
        # an agent of this release sends the federated header on every call ("none" while it holds none); one of an
        # older release sends nothing and is not tracked (it holds nothing up)
        federated = req.headers.get(self.FEDERATED_HEADER)
        reported = (req.headers.get(self.BUNDLE_HEADER) or "").strip().lower()
        if federated is None and not reported:
            return node
        before = None
        now = time.time()
        with self._acks_lock:  # one acquisition per call for both records
            if federated is not None:
                self._federated_acks[node] = (federated.strip(), now)
            if reported:
                before = self._acks.get(node)
                self._acks[node] = (reported, now)
        if reported and (before is None or before[0] != reported):
            self.on_bundle_ack()
        return node

    def _node_and_csr(self, req: Request) -> tuple[str, str]:
        """For the calls with a body (renew-node, sign): the body is read once the certificate names a node
        and before the CA's verdict on it, so a refusal (revoked, root rotated away) reaches the agent on
        its kept-alive connection with the reason, instead of closing it over an unread body."""
        node = self._peer_node(req)
        csr = wire.CsrRequest.from_json(req.json()).csr
        return self._honoured(req, node), csr

    def _check_honoured(self, req: Request, node: str) -> None:
        """Refuse a node certificate the CA no longer honours (revoked, or its root rotated away)."""
        der = req.peer_certificate_der()
        if not der:
            raise Unauthorized("this call needs the node's client certificate (join first with a token)")
        refusal = self.ca.node_certificate_refusal(node, der)
        if refusal is not None:
            log.warning("node certificate refused node=%s: %s", node, refusal, extra={"node": node})
            raise Forbidden(refusal)

    def _require_in_catalog(self, node: str, what: str) -> None:
        catalog = self.catalog()
        if catalog is None:
            raise Unavailable("the control plane has not read the catalog yet; retry shortly")
        if catalog.node(node) is None and not catalog.on_node(node):
            self._count("node", "refused")
            log.warning("%s refused node=%s: not in the catalog", what, node, extra={"node": node})
            raise Forbidden(f"node {node!r} is not in the catalog; a node that left the mesh gets no new "
                            f"certificate. Register it in Consul again (or join it again with a new token)")

    def _count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            counter = self._counters.get((kind, outcome))
            if counter is None:  # the labelled child, looked up once (every signature counts)
                counter = self._counters[(kind, outcome)] = self.metrics.certs_issued.labels(kind=kind, outcome=outcome)
            counter.inc()

    # --- endpoints -------------------------------------------------------------------------
    def join(self, req: Request) -> Response:
        """Unauthenticated (64 KiB bodies): everything about the request is checked before the one-time
        token is used, so a refused CSR does not burn it."""
        body = wire.JoinRequest.from_json(req.json())
        node, token, csr = body.node, body.token, body.csr
        try:
            expected, parsed = self._check_join(node, token, csr)
        except (BadRequest, Forbidden) as exc:  # the token stays usable
            self._count("node", "refused")
            log.warning("join refused node=%s: %s", node, exc)  # the log formatter escapes the name
            raise
        try:
            self.tokens.consume(token, node)
        except JoinTokenError as exc:
            self._count("node", "refused")
            log.warning("join refused node=%s: %s", node, exc)
            raise JoinTokenError(f"join refused: {exc}") from exc  # 403, as every JoinTokenError
        cert = self.ca.sign_csr(parsed, spiffe_id=expected, node=node, ttl=self.ca.node_ttl)
        self._count("node", "issued")
        log.info("node joined node=%s serial=%s", node, cert.serial)
        return self._issued(cert)

    def _check_join(self, node: str, token: str, csr: str) -> tuple[str, x509.CertificateSigningRequest]:
        """The node's SPIFFE ID and its parsed CSR, once everything but the token checks out."""
        if not node or not token or not csr:
            raise BadRequest("join needs node, token and csr")
        naming.check_node_name(node, BadRequest)
        expected = naming.node_spiffe_id(self.ca.trust_domain, node)
        uri, parsed = _csr_uri(csr)
        if uri != expected:
            raise Forbidden(f"csr asks for {uri}, but a node joining as {node!r} may only ask for {expected}")
        try:
            self.ca.check_csr(parsed, spiffe_id=expected)
        except SigningRefused as exc:  # the request's fault: 400
            raise BadRequest(f"join refused, the token was not used: {exc}") from exc
        return expected, parsed

    def renew_node(self, req: Request) -> Response:
        node, csr = self._node_and_csr(req)
        expected = naming.node_spiffe_id(self.ca.trust_domain, node)
        uri, parsed = _csr_uri(csr)
        if uri != expected:
            raise Forbidden(f"node {node!r} may only renew {expected}")
        self._require_in_catalog(node, "node renewal")
        cert = self.ca.sign_csr(parsed, spiffe_id=expected, node=node, ttl=self.ca.node_ttl)
        self._count("node", "issued")
        return self._issued(cert)

    def recover(self, req: Request) -> Response:
        """An agent whose node certificate expired proves it holds that certificate's key (no token)."""
        body = wire.RecoverRequest.from_json(req.json())
        node = body.node
        if not node or not body.csr or not body.timestamp or not body.signature:
            raise BadRequest("recover needs node, csr, timestamp and signature")
        naming.check_node_name(node, BadRequest)
        expected = naming.node_spiffe_id(self.ca.trust_domain, node)
        uri, parsed = _csr_uri(body.csr)
        if uri != expected:
            raise Forbidden(f"csr asks for {uri}, but a node recovering as {node!r} may only ask for {expected}")
        self._require_in_catalog(node, "node recovery")
        try:
            cert = self.ca.recover_node(node, parsed, timestamp=body.timestamp, signature=body.signature)
        except SigningRefused as exc:
            self._count("node", "refused")
            log.warning("node recovery refused node=%s: %s", node, exc, extra={"node": node})
            raise
        self._count("node", "issued")
        return self._issued(cert)

    # --- blocking queries ------------------------------------------------------------------
    def changed(self) -> None:
        """Something an agent follows may have changed (catalog, CA, federation): held calls look again."""
        with self._changes:
            self._generation += 1
            self._changes.notify_all()

    def close(self) -> None:
        """Answer every held call now and hold no more (the control plane is stopping)."""
        with self._changes:
            self._closed = True
            self._changes.notify_all()

    @property
    def waiting(self) -> int:
        """Blocking calls held right now."""
        return self._waiting

    def _node_services(self, node: str) -> wire.NodeServices:
        catalog = self.catalog()
        if catalog is None:
            raise Unavailable("the control plane has not read the catalog yet; retry shortly")
        td = self.ca.trust_domain
        listing = wire.NodeServices(
            node=node, trust_domain=td, xds_address=self.xds_address, ca=self._ca_info(),
            services=tuple(
                wire.NodeService(name=i.service, id=i.id, kind=i.kind,
                                 spiffe_id=naming.workload_spiffe_id(td, i.namespace, i.service_account))
                for i in catalog.on_node(node)
            ),
        )
        digest = hashlib.sha256(json.dumps(listing.to_json(), sort_keys=True).encode())
        for trust_domain, pem in self.federated_bundles():  # their roots are fetched with /bundle
            digest.update(b"\0" + trust_domain.encode() + b"\0" + pem.encode())
        revoked = self.ca.node_revocation(node)
        if revoked is not None:  # a held call answers (and is refused) when its node is revoked
            digest.update(b"\0revoked\0" + revoked.revoked_at.isoformat().encode())
        return wire.NodeServices(node=listing.node, trust_domain=td, xds_address=listing.xds_address,
                                 ca=listing.ca, services=listing.services, index=digest.hexdigest()[:32])

    def services(self, req: Request) -> dict:
        node = self._node_of(req)
        held = req.query.get("index", "").strip().lower()
        current = self._node_services(node)
        if not held or held != current.index:
            return current.to_json()
        try:
            wait = min(parse_duration(req.query.get("wait") or "60s").total_seconds(), MAX_WAIT_S)
        except ValueError as exc:
            raise BadRequest(f"wait: {exc} (e.g. wait=60s)") from exc
        with self._changes:
            if self._closed or self._waiting >= self.max_waiting:
                return current.to_json()  # not held: the agent polls at its refresh interval
            self._waiting += 1
            self._holding[node] = self._holding.get(node, 0) + 1
        try:
            answer = self._wait_for_change(node, held, wait * (1 + random.random() / 16))
            self._check_honoured(req, node)  # revoked (or its root retired) while the call was held
            return answer.to_json()
        finally:
            with self._changes:
                self._waiting -= 1
                left = self._holding.pop(node) - 1
                if left:
                    self._holding[node] = left

    def _woken(self, generation: int) -> bool:
        return self._closed or self._generation != generation

    def _wait_for_change(self, node: str, held: str, wait: float) -> wire.NodeServices:
        deadline = time.monotonic() + wait
        while True:
            with self._changes:
                generation = self._generation
                left = deadline - time.monotonic()
                if not self._closed and left > 0:
                    self._changes.wait_for(partial(self._woken, generation), min(left, RECHECK_S))
            current = self._node_services(node)
            if current.index != held or self._closed or time.monotonic() >= deadline:
                return current

    def sign(self, req: Request) -> Response:
        node, csr = self._node_and_csr(req)
        spiffe_id, parsed = _csr_uri(csr)
        catalog = self.catalog()
        if catalog is None:
            raise Unavailable("the control plane has not read the catalog yet; retry shortly")
        try:
            check_workload_request(catalog, node, spiffe_id, self.ca.trust_domain)
            cert = self.ca.sign_csr(parsed, spiffe_id=spiffe_id, node=node)
        except SigningRefused as exc:  # answered 403 by the error map
            self._count("workload", "refused")
            log.warning("signing refused node=%s spiffe_id=%s: %s", node, spiffe_id, exc)
            raise
        except CAError:  # answered 400 by the error map
            self._count("workload", "refused")
            raise
        self._count("workload", "issued")
        log.info("svid issued node=%s spiffe_id=%s serial=%s", node, spiffe_id, cert.serial)
        return self._issued(cert)

    def bundle(self, req: Request) -> dict:
        self._node_of(req)
        return wire.TrustBundle(trust_domain=self.ca.trust_domain, bundle=self.ca.bundle_pem(),
                                bundle_sha256=self.ca.bundle_sha256(),
                                federated=tuple(self.federated_bundles())).to_json()
