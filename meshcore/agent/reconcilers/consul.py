"""The Consul registration reconciler (``--consul-services-dir``): this VM's services and checks in
the local Consul agent, re-synced every refresh interval in a worker thread (:class:`ConsulSync`).

Registration does not depend on the control plane, so it runs from the start and during outages.
Before a mesh service is registered, ``prepare`` is called with the mesh services about to be
registered (the identity reconciler writes an SVID file for any that has none); after a sync that
registered new mesh services, ``registered`` is called with them (the identity reconciler polls the
control plane quickly until it lists them, and the loop is woken); ``deregistered`` with the mesh
services a sync removed (their pending files may go). See the NACK race in
:mod:`meshcore.agent.reconcilers.identity`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from meshcore.agent._consul import ConsulSync, Syncer, consul_syncer


class ConsulReconciler:
    def __init__(
        self,
        services_dir: Path | None,
        node: str,
        *,
        interval: Callable[[], float],
        own_payloads: Callable[[], list[dict[str, Any]]] | None = None,
        prepare: Callable[[frozenset[str]], None] | None = None,
        registered: Callable[[frozenset[str]], None] | None = None,
        deregistered: Callable[[frozenset[str]], None] | None = None,
        syncer_factory: Callable[[], Syncer] = consul_syncer,
        resync_on: Callable[[], object] | None = None,
    ):
        self._resync_on = resync_on
        self._node = node
        self._interval = interval
        self._own_payloads = own_payloads
        self._prepare = prepare
        self._registered = registered
        self._deregistered = deregistered
        self._syncer_factory = syncer_factory
        self.sync = self._make(services_dir)
        self._next: datetime | None = None

    def _make(self, services_dir: Path | None) -> ConsulSync:
        return ConsulSync(services_dir, self._node, syncer_factory=self._syncer_factory,
                          extra_payloads=self._own_payloads, before_register=self._prepare,
                          after_register=self._registered, after_deregister=self._deregistered,
                          resync_on=self._resync_on)

    @property
    def enabled(self) -> bool:
        return self.sync.enabled

    @property
    def mesh_services(self) -> frozenset[str]:
        return self.sync.mesh_services

    @property
    def first_sync_done(self) -> bool:
        """A first sync finished (successfully or not)."""
        return self.sync.last_sync is not None or self.sync.last_error is not None

    def reconcile(self, now: datetime) -> None:
        """Trigger a sync every refresh interval (non-blocking)."""
        if self.sync.enabled and (self._next is None or now >= self._next):
            self.sync.trigger()
            self._next = now + timedelta(seconds=self._interval())

    def trigger_now(self) -> None:
        """Sync at once (the agent's own registration changed, e.g. its metrics address)."""
        self._next = None

    def replace(self, services_dir: Path | None) -> None:
        """A reload changed ``--consul-services-dir``."""
        if services_dir == self.sync.services_dir:
            return
        self.sync.stop()
        self.sync = self._make(services_dir)
        self._next = None

    def stop(self) -> None:
        self.sync.stop()

    def status(self) -> dict[str, Any]:
        return self.sync.status()
