"""``MeshEngine.update_settings``: two writers of different mesh settings never lose each other's change."""

from __future__ import annotations

import threading
from dataclasses import replace

from meshcore.controlplane.engine import MeshEngine
from meshcore.controlplane.federation_api import publish as publish_bundles
from meshcore.controlplane.oidc_discovery import with_discovered
from meshcore.policies.request_authentication.trust import Discovered
from meshcore.snapshot import MeshSettings
from meshcore.xds.cache import SnapshotCache

FOUND = (Discovered(issuer="https://issuer.example", jwks_uri="https://issuer.example/jwks"),)
BUNDLES = (("other.example", "PEM"),)


def _engine() -> MeshEngine:
    return MeshEngine(None, None, SnapshotCache(), trust_domain="cluster.local")  # type: ignore[arg-type]


class _Bundles:
    def bundles(self):
        return BUNDLES


def _interleaved(engine: MeshEngine, second) -> None:
    """Run an OIDC-discovery update whose read-modify-write is held open while ``second`` (another writer,
    in another thread) runs: without the engine's lock around both, ``second``'s change is overwritten."""
    inside, second_done = threading.Event(), threading.Event()

    def slow_discovery(current: MeshSettings) -> MeshSettings:
        inside.set()
        second_done.wait(0.3)  # with the lock, the second writer waits for us: this wait times out
        return with_discovered(current, FOUND)

    def run_second() -> None:
        inside.wait(10)
        second()
        second_done.set()

    other = threading.Thread(target=run_second)
    other.start()
    engine.update_settings(slow_discovery)
    other.join(10)
    assert not other.is_alive()


def test_concurrent_updates_keep_both_changes():
    engine = _engine()
    _interleaved(engine, lambda: engine.update_settings(lambda s: replace(s, federated_bundles=BUNDLES)))
    assert engine.settings.federated_bundles == BUNDLES
    assert engine.settings.jwks is not None and engine.settings.jwks.discovered == FOUND


def test_federation_publish_does_not_lose_a_discovery_running_beside_it():
    engine = _engine()
    _interleaved(engine, lambda: publish_bundles(engine, _Bundles()))  # type: ignore[arg-type]
    assert engine.settings.federated_bundles == BUNDLES
    assert engine.settings.jwks is not None and engine.settings.jwks.discovered == FOUND


def test_an_update_that_changes_nothing_queues_no_rebuild():
    engine = _engine()
    engine.update_settings(lambda s: replace(s, federated_bundles=BUNDLES))
    engine._pending = type(engine._pending)()  # as if the builder took that change
    publish_bundles(engine, _Bundles())  # type: ignore[arg-type]  # same bundles: nothing to do
    assert not engine._pending
    engine.update_settings(lambda s: replace(s))  # an equal copy
    assert not engine._pending
