"""The API VM agents call (HTTPS): join with a one-time token, get SVIDs signed, fetch the bundle.

Every call but ``join`` is authenticated by the node's client certificate (URI SAN
``spiffe://<td>/meshcore/node/<node>``), and a node can only ask about itself.

Root rotation: ``/v1/agent/services`` carries ``ca`` (``bundle_sha256``: the bundle to hold;
``signer_key_id``: the intermediate signing now). Agents send the SHA-256 of the bundle they have
written for Envoy in the ``X-Meshcore-Bundle-SHA256`` header of every call; the control plane
starts signing from a new root only once every connected proxy's node holds the bundle with it.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable

from cryptography import x509

from .. import naming
from ..api import agent as wire
from ..ca import CertificateAuthority, JoinTokenStore, check_workload_request
from ..catalog.model import Catalog
from ..errors import BadRequest, CAError, Forbidden, JoinTokenError, SigningRefused, Unauthorized, Unavailable
from ._http import Request, Router

log = logging.getLogger("meshcore.controlplane.agent_api")


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
    uris = sans.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise BadRequest(f"csr must carry exactly one URI SAN (the SPIFFE ID), found {len(uris)}")
    return uris[0], csr


class AgentApi:
    def __init__(self, ca: CertificateAuthority, tokens: JoinTokenStore, catalog: Callable[[], Catalog | None],
                 xds_address: str, metrics=None,
                 federated_bundles: Callable[[], tuple[tuple[str, str], ...]] = tuple):
        """``federated_bundles``: other trust domains' roots ``(trust_domain, PEM)``, as agents get them."""
        self.ca = ca
        self.federated_bundles = federated_bundles
        self.tokens = tokens
        self.catalog = catalog
        self.xds_address = xds_address
        self.metrics = metrics
        self._acks: dict[str, tuple[str, float]] = {}  # node -> (bundle sha256 it holds, when reported)
        self._acks_lock = threading.Lock()

    BUNDLE_HEADER = wire.BUNDLE_HEADER

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
        r = Router()
        r.add("POST", wire.JOIN, self.join)
        r.add("POST", wire.RENEW_NODE, self.renew_node)
        r.add("GET", wire.SERVICES, self.services)
        r.add("POST", wire.SIGN, self.sign)
        r.add("GET", wire.BUNDLE, self.bundle)
        return r

    # --- helpers ---------------------------------------------------------------------------
    def _issued(self, cert) -> dict:
        return wire.IssuedIdentity(
            certificate=cert.cert_pem,
            chain=cert.chain_pem,
            bundle=self.ca.bundle_pem(),
            spiffe_id=cert.spiffe_id,
            serial=cert.serial,
            not_after=cert.not_after.isoformat().replace("+00:00", "Z"),
            trust_domain=self.ca.trust_domain,
            xds_address=self.xds_address,
            ca=self._ca_info(),
        ).to_json()

    def _node_of(self, req: Request) -> str:
        for uri in req.peer_uri_sans():
            parsed = naming.parse_node_spiffe_id(uri)
            if parsed and parsed[0] == self.ca.trust_domain:
                reported = (req.headers.get(self.BUNDLE_HEADER) or "").strip().lower()
                if reported:
                    with self._acks_lock:
                        self._acks[parsed[1]] = (reported, time.time())
                return parsed[1]
        raise Unauthorized("this call needs the node's client certificate (join first with a token)")

    def _count(self, kind: str, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.certs_issued.labels(kind=kind, outcome=outcome).inc()

    # --- endpoints -------------------------------------------------------------------------
    def join(self, req: Request) -> dict:
        body = wire.JoinRequest.from_json(req.json())
        node, token, csr = body.node, body.token, body.csr
        if not node or not token or not csr:
            raise BadRequest("join needs node, token and csr")
        expected = naming.node_spiffe_id(self.ca.trust_domain, node)
        uri, parsed = _csr_uri(csr)
        if uri != expected:
            raise Forbidden(f"csr asks for {uri}, but a node joining as {node!r} may only ask for {expected}")
        try:
            self.tokens.consume(token, node)
        except JoinTokenError as exc:
            self._count("node", "refused")
            log.warning("join refused node=%s: %s", node, exc)
            raise JoinTokenError(f"join refused: {exc}") from exc  # 403, as every JoinTokenError
        cert = self.ca.sign_csr(parsed, spiffe_id=expected, node=node)
        self._count("node", "issued")
        log.info("node joined node=%s serial=%s", node, cert.serial)
        return self._issued(cert)

    def renew_node(self, req: Request) -> dict:
        node = self._node_of(req)
        csr = wire.CsrRequest.from_json(req.json()).csr
        expected = naming.node_spiffe_id(self.ca.trust_domain, node)
        uri, parsed = _csr_uri(csr)
        if uri != expected:
            raise Forbidden(f"node {node!r} may only renew {expected}")
        cert = self.ca.sign_csr(parsed, spiffe_id=expected, node=node)
        self._count("node", "issued")
        return self._issued(cert)

    def services(self, req: Request) -> dict:
        node = self._node_of(req)
        catalog = self.catalog()
        if catalog is None:
            raise Unavailable("the control plane has not read the catalog yet; retry shortly")
        td = self.ca.trust_domain
        return wire.NodeServices(
            node=node, trust_domain=td, xds_address=self.xds_address, ca=self._ca_info(),
            services=tuple(
                wire.NodeService(name=i.service, id=i.id, kind=i.kind,
                                 spiffe_id=naming.workload_spiffe_id(td, i.namespace, i.service_account))
                for i in catalog.on_node(node)
            ),
        ).to_json()

    def sign(self, req: Request) -> dict:
        node = self._node_of(req)
        csr = wire.CsrRequest.from_json(req.json()).csr
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
