"""The engine's quiet-moment garbage collection (``controlplane/_gc.py``)."""

from __future__ import annotations

import gc
import time
import weakref

import pytest

from meshcore.catalog.model import Catalog, CatalogUpdate
from meshcore.controlplane import _gc
from meshcore.controlplane.engine import MeshEngine
from meshcore.snapshot import ProxyInfo
from meshcore.xds.cache import SnapshotCache

from ._mesh import generated_catalog, instance
from .test_engine_incremental import _QuietSources


@pytest.fixture(autouse=True)
def _unfrozen_after():
    yield
    gc.unfreeze()  # leave the test process's collector as it was


class _Cycle:
    def __init__(self) -> None:
        self.me = self


def test_quiet_freezes_and_the_full_collection_reclaims_frozen_cycles():
    collector = _gc.QuietCollector()
    cycle = _Cycle()
    gone = weakref.ref(cycle)
    collector.quiet()
    assert gc.get_freeze_count() > 0 and collector.freezes == 1
    del cycle
    collector.quiet()  # a collection now walks only what is not frozen: the frozen cycle stays
    assert gone() is not None
    collector.full()
    assert gone() is None and collector.full_collections == 1
    assert gc.get_freeze_count() > 0  # frozen again after it


def test_the_periodic_full_collection_runs_at_a_quiet_moment():
    now = [0.0]
    collector = _gc.QuietCollector(clock=lambda: now[0])
    collector.quiet()
    assert collector.full_collections == 0
    now[0] = _gc.FULL_EVERY_S
    collector.quiet()
    assert collector.full_collections == 1
    assert collector.due_in() == _gc.FULL_AT_MOST_S


def test_the_builder_freezes_the_heap_once_changes_go_quiet(monkeypatch):
    monkeypatch.delenv("MESHCORE_GC", raising=False)
    monkeypatch.setattr(_gc, "FREEZE_AFTER", 0)  # this small mesh makes fewer new objects than a real one
    catalog = generated_catalog()
    quiet = _QuietSources()
    engine = MeshEngine(quiet, quiet, SnapshotCache(), trust_domain="cluster.local",  # type: ignore[arg-type]
                        collect_garbage=True)
    assert engine.gc is not None
    for n in catalog.nodes:
        engine.proxy_connected(ProxyInfo(node=n.name, secrets_dir=f"/var/lib/meshcore/{n.name}/secrets"))
    engine.catalog_changed(CatalogUpdate(catalog, 1))
    engine.resources_changed([])
    engine.start()
    try:
        deadline = time.monotonic() + 30
        while engine.gc.freezes < 1:
            assert time.monotonic() < deadline, "no quiet-moment collection after the first snapshot"
            time.sleep(0.05)
        frozen = engine.gc.freezes
        insts = [*catalog.instances, instance("s3", 1, 70, ("s0",))]
        engine.catalog_changed(CatalogUpdate(Catalog.of(catalog.nodes, insts), 2))
        while engine.gc.freezes == frozen:  # the change was built, then the builder went quiet again
            assert time.monotonic() < deadline, "no quiet-moment collection after a change"
            time.sleep(0.05)
        assert engine.snapshot is not None and engine.snapshot.catalog.instances == Catalog.of(catalog.nodes, insts).instances
    finally:
        quiet.close()
        engine.stop()


def test_gc_default_in_the_environment_leaves_the_collector_alone(monkeypatch):
    monkeypatch.setenv("MESHCORE_GC", "default")
    quiet = _QuietSources()
    engine = MeshEngine(quiet, quiet, SnapshotCache(), trust_domain="cluster.local",  # type: ignore[arg-type]
                        collect_garbage=True)
    assert engine.gc is None
