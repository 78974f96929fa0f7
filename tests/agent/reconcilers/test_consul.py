"""ConsulReconciler alone: a sync calls ``prepare`` with the mesh services before registering them,
``registered``/``deregistered`` with what changed after; a file dropped in is synced within about a
second, without waiting for the refresh interval."""

from __future__ import annotations

import json
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from meshcore.agent.reconcilers.consul import ConsulReconciler


def _write(directory: Path, name: str, port: int, mesh: bool = True) -> None:
    svc: dict = {"name": name, "id": f"{name}-1", "port": port}
    if mesh:
        svc["connect"] = {"sidecar_service": {"port": port + 1000}}
    (directory / f"{name}.json").write_text(json.dumps({"service": svc}))


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, frozenset[str]]] = []
        self.changed = threading.Event()

    def hook(self, kind: str):
        def record(names: frozenset[str]) -> None:
            self.events.append((kind, names))
            self.changed.set()
        return record

    def syncer(self, payloads: list[dict]) -> None:
        self.events.append(("sync", frozenset(p["Name"] for p in payloads)))


def _reconciler(tmp_path: Path, rec: Recorder, interval: float = 3600.0) -> ConsulReconciler:
    return ConsulReconciler(tmp_path, "vm1", interval=lambda: interval, prepare=rec.hook("prepare"),
                            registered=rec.hook("registered"), deregistered=rec.hook("deregistered"),
                            syncer_factory=lambda: rec.syncer)


def test_prepare_comes_before_the_registration_and_changes_after(tmp_path):
    rec = Recorder()
    _write(tmp_path, "web", 18080)
    _write(tmp_path, "batch", 18081, mesh=False)  # not in the mesh: no SVID to prepare
    consul = _reconciler(tmp_path, rec)
    assert consul.sync.sync_now()
    assert rec.events == [("prepare", frozenset({"web"})), ("sync", frozenset({"web", "batch"})),
                          ("registered", frozenset({"web"}))]
    assert consul.mesh_services == {"web"} and consul.first_sync_done
    rec.events.clear()
    (tmp_path / "web.json").unlink()
    assert consul.sync.sync_now()
    assert rec.events == [("prepare", frozenset()), ("sync", frozenset({"batch"})),
                          ("deregistered", frozenset({"web"}))]


def test_a_new_definition_file_is_synced_without_waiting_for_the_interval(tmp_path):
    rec = Recorder()
    consul = _reconciler(tmp_path, rec)
    try:
        consul.reconcile(datetime.now(timezone.utc))  # first sync, then the next one in an hour
        deadline = time.monotonic() + 10
        while not consul.first_sync_done:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        rec.changed.clear()
        _write(tmp_path, "api", 18082)
        assert rec.changed.wait(10), rec.events
        assert ("registered", frozenset({"api"})) in rec.events
    finally:
        consul.stop()


def test_disabled_without_a_directory(tmp_path):
    consul = ConsulReconciler(None, "vm1", interval=lambda: 1.0)
    consul.reconcile(datetime.now(timezone.utc))
    assert not consul.enabled and consul.status() == {"enabled": False}
