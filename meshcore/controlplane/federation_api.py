"""Operator API routes for trust-domain federation, and feeding imported bundles into the mesh.

* ``GET /v1/trust-bundle/spiffe``: this domain's roots in the SPIFFE bundle format (JWK Set).
* ``GET /v1/trust-bundles``: the imported domains with their roots, and the agents calling this replica that have
  not given Envoy a domain's current roots yet (``agents_without``: an import is in force on a node once it is
  not listed; with several replicas, ask each).
* ``POST /v1/trust-bundles`` (admin) ``{"trust_domain": ..., "bundle": SPIFFE JSON or PEM}``: import/replace.
* ``DELETE /v1/trust-bundles/{trust_domain}`` (admin): forget a domain; its peers are refused again.

Every change goes to ``MeshSettings.federated_bundles`` (the engine rebuilds every proxy: inbound
listeners accept the domain's SPIFFE IDs) and to the agents (``/v1/agent/bundle`` carries the
federated bundles; each agent writes them into Envoy's validation secret).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..api.operator import FederatedDomain, RootInfo, SpiffeBundleExport, TrustBundleImport, TrustBundleRemoved
from ..errors import ConfigError, NotFound, StoreError
from ..federation import FederatedBundleStore, to_spiffe_bundle
from ._http import Request, Router

if TYPE_CHECKING:
    from pathlib import Path

    from ..ca import CertificateAuthority
    from ._contexts import SettingsHandle

log = logging.getLogger("meshcore.controlplane.federation")

FEDERATION_DIR = "federation"


def open_federation(state_dir: "Path", trust_domain: str, mesh: "SettingsHandle", backend=None) -> FederatedBundleStore:
    """The control plane's store (``<state-dir>/federation``, or a shared ``backend``), its bundles published."""
    store = FederatedBundleStore(state_dir / FEDERATION_DIR, trust_domain, backend=backend)
    publish(mesh, store)
    store.follow(lambda: publish(mesh, store))  # shared state: other replicas' imports reach this one's proxies
    return store


def publish(mesh: "SettingsHandle", store: FederatedBundleStore) -> None:
    """Put the store's bundles into the mesh settings (keeping every other setting)."""
    bundles = store.bundles()
    mesh.update_settings(lambda s: s if s.federated_bundles == bundles else replace(s, federated_bundles=bundles))


def export_bundle(ca: "CertificateAuthority", federation: FederatedBundleStore) -> SpiffeBundleExport:
    pem = ca.bundle_pem()
    return SpiffeBundleExport(trust_domain=ca.trust_domain, bundle=pem,
                              spiffe_bundle=to_spiffe_bundle(pem, sequence=federation.local_sequence(pem)))


def _domain(entry: dict[str, Any], acks: Mapping[str, Mapping[str, str]] | None = None) -> FederatedDomain:
    """The wire form of one of :meth:`FederatedBundleStore.list`'s entries; with the agents' ``acks`` (node ->
    {trust domain: SHA-256 of the roots given to Envoy}), the nodes still without these roots."""
    td, pem = entry["trust_domain"], entry["bundle"]
    want = hashlib.sha256(pem.encode()).hexdigest()
    without = tuple(sorted(n for n, held in (acks or {}).items() if held.get(td) != want))
    return FederatedDomain(trust_domain=td, bundle=pem,
                           roots=tuple(RootInfo(**root) for root in entry["roots"]),
                           imported_at=entry.get("imported_at"), spiffe_sequence=entry.get("spiffe_sequence"),
                           agents_without=without)


def add_federation_routes(r: Router, *, ca: "CertificateAuthority", federation: FederatedBundleStore,
                          mesh: "SettingsHandle",
                          federated_acks: Callable[[], Mapping[str, Mapping[str, str]]] = dict) -> None:
    """``federated_acks()``: what the agents calling this replica reported holding (AgentApi.federated_acks)."""
    def list_bundles(req: Request) -> list[FederatedDomain]:
        try:
            acks = federated_acks()
            return [_domain(e, acks) for e in federation.list()]
        except ConfigError as exc:  # a stored bundle no longer reads: the server's trouble, not the request's
            raise StoreError(f"cannot read the imported trust bundles: {exc}") from exc

    def import_bundle(req: Request) -> FederatedDomain:
        body = TrustBundleImport.from_json(req.json()).checked()
        td = body.trust_domain
        try:
            entry = _domain(federation.put(td, body.bundle))
        except StoreError as exc:
            raise StoreError(f"nothing imported: {exc}") from exc
        publish(mesh, federation)
        who = getattr(req, "operator", None)
        log.warning("federated trust bundle imported trust_domain=%s roots=%d by=%s", td, len(entry.roots),
                    who.name if who else "?")
        return entry

    def remove_bundle(req: Request) -> TrustBundleRemoved:
        td = req.params["trust_domain"]
        if not federation.remove(td):
            raise NotFound(f"no bundle imported for {td!r}; see `meshctl trust-bundle list`")
        publish(mesh, federation)
        log.warning("federated trust bundle removed trust_domain=%s", td)
        return TrustBundleRemoved(removed=td)

    r.add("GET", "/v1/trust-bundle/spiffe", lambda req: export_bundle(ca, federation))
    r.add("GET", "/v1/trust-bundles", list_bundles)
    r.add("POST", "/v1/trust-bundles", import_bundle)
    r.add("DELETE", "/v1/trust-bundles/{trust_domain}", remove_bundle)


__all__ = ["FEDERATION_DIR", "add_federation_routes", "export_bundle", "open_federation", "publish"]
