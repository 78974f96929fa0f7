"""Operator API routes for trust-domain federation, and feeding imported bundles into the mesh.

* ``GET /v1/trust-bundle/spiffe``: this domain's roots in the SPIFFE bundle format (JWK Set).
* ``GET /v1/trust-bundles``: the imported domains with their roots.
* ``POST /v1/trust-bundles`` (admin) ``{"trust_domain": ..., "bundle": SPIFFE JSON or PEM}``: import/replace.
* ``DELETE /v1/trust-bundles/{trust_domain}`` (admin): forget a domain; its peers are refused again.

Every change goes to ``MeshSettings.federated_bundles`` (the engine rebuilds every proxy: inbound
listeners accept the domain's SPIFFE IDs) and to the agents (``/v1/agent/bundle`` carries the
federated bundles; each agent writes them into Envoy's validation secret).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from ..errors import BadRequest, ConfigError, NotFound, StoreError
from ..federation import FederatedBundleStore, to_spiffe_bundle
from ._http import Request, Router

if TYPE_CHECKING:
    from .daemon import ControlPlane

log = logging.getLogger("meshcore.controlplane.federation")

FEDERATION_DIR = "federation"


def open_federation(cp: "ControlPlane") -> FederatedBundleStore:
    """The control plane's store (``<state-dir>/federation``), its bundles published to the engine."""
    store = FederatedBundleStore(cp.settings.state_dir / FEDERATION_DIR, cp.settings.trust_domain)
    publish(cp.engine, store)
    return store


def publish(engine, store: FederatedBundleStore) -> None:
    """Put the store's bundles into the engine's settings (keeping every other setting)."""
    bundles = store.bundles()
    if engine.settings.federated_bundles != bundles:
        engine.set_settings(replace(engine.settings, federated_bundles=bundles))


def export_bundle(cp: "ControlPlane") -> dict:
    pem = cp.ca.bundle_pem()
    return {"trust_domain": cp.ca.trust_domain, "bundle": pem,
            "spiffe_bundle": to_spiffe_bundle(pem, sequence=cp.federation.local_sequence(pem))}


def add_federation_routes(r: Router, cp: "ControlPlane") -> None:
    def list_bundles(req: Request) -> list:
        try:
            return cp.federation.list()
        except ConfigError as exc:  # a stored bundle no longer reads: the server's trouble, not the request's
            raise StoreError(f"cannot read the imported trust bundles: {exc}") from exc

    def import_bundle(req: Request) -> dict:
        body = req.json()
        if not isinstance(body, dict) or not body.get("trust_domain") or not body.get("bundle"):
            raise BadRequest('body needs {"trust_domain": "other.example", "bundle": SPIFFE bundle JSON or PEM}')
        td = str(body["trust_domain"])
        try:
            entry = cp.federation.put(td, str(body["bundle"]))
        except StoreError as exc:
            raise StoreError(f"nothing imported: {exc}") from exc
        publish(cp.engine, cp.federation)
        who = getattr(req, "operator", None)
        log.warning("federated trust bundle imported trust_domain=%s roots=%d by=%s", td, len(entry["roots"]),
                    who.name if who else "?")
        return entry

    def remove_bundle(req: Request) -> dict:
        td = req.params["trust_domain"]
        if not cp.federation.remove(td):
            raise NotFound(f"no bundle imported for {td!r}; see `meshctl trust-bundle list`")
        publish(cp.engine, cp.federation)
        log.warning("federated trust bundle removed trust_domain=%s", td)
        return {"removed": td}

    r.add("GET", "/v1/trust-bundle/spiffe", lambda req: export_bundle(cp))
    r.add("GET", "/v1/trust-bundles", list_bundles)
    r.add("POST", "/v1/trust-bundles", import_bundle)
    r.add("DELETE", "/v1/trust-bundles/{trust_domain}", remove_bundle)


__all__ = ["FEDERATION_DIR", "add_federation_routes", "export_bundle", "open_federation", "publish"]
