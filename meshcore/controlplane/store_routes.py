"""``/v1/store`` on the operator API: the resource store's health, and restoring what Consul KV lost.

* ``GET /v1/store`` (read-only): :class:`~meshcore.resources.store.StoreHealth` as JSON;
* ``POST /v1/store/restore`` (admin): write the control plane's held generation back to the store
  (``{"force": true}`` also when the store is not suspect); answers the health afterwards. 409 when
  there is nothing to restore or the store cannot restore.
"""

from __future__ import annotations

from typing import Any

from ..errors import Conflict, StoreError
from ..resources.store import store_health
from ._http import Request
from .operators import AuthorizingRouter


def add_store_routes(r: AuthorizingRouter, *, store: object) -> None:
    def status(req: Request) -> dict[str, Any]:
        return store_health(store).to_json()

    def restore(req: Request) -> dict[str, Any]:
        body = req.json()
        force = bool(body.get("force")) if isinstance(body, dict) else False
        restore_fn = getattr(store, "restore", None)
        if restore_fn is None:
            raise Conflict(f"the {store_health(store).backend} resource store keeps no separate copy to restore "
                           "from: only the Consul KV store (--store consul) does")
        health = store_health(store)
        if health.ok and not force:
            raise Conflict(f"the resource store is not suspect (generation {health.generation}, "
                           f"{health.resources} resources): nothing to restore; add force to write the held "
                           f"generation {health.held_generation} back anyway")
        try:
            return restore_fn().to_json()
        except StoreError as exc:
            raise Conflict(f"restore failed, the store is unchanged: {exc}") from exc

    r.add("GET", "/v1/store", status)
    r.add("POST", "/v1/store/restore", restore)
