"""No watcher or background loop dies (issue 12, finding 9).

A well-formed document with a nonsense spec written into the store behind meshctl's back (a store file, a
Consul KV key) is left out, with its key and error kept for status; the rest of the mesh stays applied and
catalog changes keep reaching the proxies. A loop that still dies is restarted by the supervisor, counted in
``meshcore_thread_restarts_total`` and logged as one ERROR line. After a restart with the bad document
present, a reconnecting proxy gets its config.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from dataclasses import replace


from meshcore import naming
from meshcore.ca import generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.catalog.model import Catalog, CatalogUpdate
from meshcore.catalog.consul import ConsulSettings
from meshcore.controlplane._supervise import Supervisor
from meshcore.controlplane.daemon import ControlPlane
from meshcore.controlplane.engine import MeshEngine
from meshcore.controlplane.metrics import ControlPlaneMetrics
from meshcore.resources.consul_store import ConsulKVStore
from meshcore.resources.dir_store import DirectoryStore
from meshcore.resources.loader import load_documents
from meshcore.snapshot import ProxyInfo
from meshcore.xds._typeurls import CLUSTER, LISTENER
from meshcore.xds.cache import SnapshotCache

from ..e2e._topology import free_port, write_catalog
from ._mesh import generated_catalog
from .test_restart import AgentDeltaClient, _channel, _settings, _subscribe

WAIT = 30.0

GOOD = """
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: s1-get-only, namespace: default}
spec:
  selector: {matchLabels: {app: s1}}
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""
BAD = {"apiVersion": "security.mesh.io/v1beta1", "kind": "AuthorizationPolicy",
       "metadata": {"name": "nonsense", "namespace": "default"}, "spec": {"selector": "x"}}


def _wait(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextlib.contextmanager
def _connected(plane: ControlPlane, node: str = "n1"):
    """An agent-like delta stream for ``node`` on ``plane`` (a node certificate signed by its CA)."""
    key = new_private_key()
    spiffe_id = naming.node_spiffe_id(plane.ca.trust_domain, node)
    issued = plane.ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id, node=node)
    channel = _channel(plane, key_to_pem(key), issued.chain_pem)
    client = AgentDeltaClient(channel, node)
    try:
        yield client
    finally:
        client.close()
        channel.close()


def _proxy(plane: ControlPlane, node: str = "n1"):
    return next((p for p in plane.status_view().proxies if p.node == node), None)


class SteppedCatalog:
    """A catalog source the test moves on: ``set(catalog)`` is the next update a blocked poll returns."""

    def __init__(self, catalog: Catalog):
        self.catalog, self.index = catalog, 1
        self._changed = threading.Condition()
        self.closed = False

    def set(self, catalog: Catalog) -> None:
        with self._changed:
            self.catalog, self.index = catalog, self.index + 1
            self._changed.notify_all()

    def poll(self, index, wait):
        with self._changed:
            self._changed.wait_for(lambda: index != self.index or self.closed, timeout=wait)
            return CatalogUpdate(self.catalog, self.index)

    def close(self) -> None:
        with self._changed:
            self.closed = True
            self._changed.notify_all()


def _without_an_instance(catalog: Catalog) -> tuple[Catalog, str]:
    """The catalog with one instance of s1 turned unhealthy (as when its app is killed)."""
    victim = next(i for i in catalog.instances if i.service == "s1")
    others = [i for i in catalog.instances if i is not victim]
    return Catalog.of(catalog.nodes, others + [replace(victim, healthy=False)]), victim.id


def _run_engine(store) -> tuple[MeshEngine, SteppedCatalog, ControlPlaneMetrics]:
    source = SteppedCatalog(generated_catalog())
    metrics = ControlPlaneMetrics()
    engine = MeshEngine(source, store, SnapshotCache(), trust_domain="cluster.local", metrics=metrics)
    engine.start()
    for n in ("vm0", "vm1", "vm2"):
        engine.proxy_connected(ProxyInfo(node=n, secrets_dir="/var/lib/meshcore/secrets"))
    assert engine.ready.wait(WAIT)
    return engine, source, metrics


def _check_bad_document_is_skipped(engine: MeshEngine, source: SteppedCatalog, write_bad, where: str) -> None:
    good = load_documents(GOOD, "good.yaml")[0]
    _wait(lambda: engine.snapshot is not None and good.key in engine.snapshot.resource_hashes, "the good policy")
    write_bad()
    _wait(lambda: engine.rejected, "the bad document to be rejected")
    ((key, error),) = engine.rejected.items()
    assert key.startswith("AuthorizationPolicy/default/nonsense") and where in key
    assert "spec.selector" in error

    # A catalog change after it still reaches the proxies: the snapshot moves, built without the bad document.
    changed, victim = _without_an_instance(engine.snapshot.catalog)
    source.set(changed)
    _wait(lambda: not next(i for i in engine.snapshot.catalog.instances if i.id == victim).healthy,
          "the catalog change to reach the snapshot")
    snap = engine.snapshot
    assert good.key in snap.resource_hashes, "the good resources stay applied"
    assert not any(r.name == "nonsense" for r in snap.resources)
    _wait(lambda: all(s.built_hash == engine.snapshot.hash for s in engine.proxies.values()),
          "every proxy to be built from the new snapshot")
    assert not any(s.error for s in engine.proxies.values())
    assert engine.build_error == ""
    assert all(t.is_alive() for t in engine._threads), [t.name for t in engine._threads if not t.is_alive()]
    health = {h.name: h for h in engine.health()}
    assert health["catalog"].state == "ok"
    assert health["resources"].state == "ok" and dict(health["resources"].rejected) == engine.rejected


def test_bad_document_in_a_store_file_is_skipped_and_the_mesh_keeps_converging(tmp_path):
    store = DirectoryStore(tmp_path / "resources")
    store.apply(load_documents(GOOD, "good.yaml"))
    engine, source, _ = _run_engine(store)
    try:
        def write_bad():
            folder = tmp_path / "resources" / "AuthorizationPolicy" / "default"
            (folder / "nonsense.json").write_text(json.dumps(BAD))  # behind meshctl's back

        _check_bad_document_is_skipped(engine, source, write_bad, "nonsense.json")
        # Fixing it (removing the file) clears the rejection.
        (tmp_path / "resources" / "AuthorizationPolicy" / "default" / "nonsense.json").unlink()
        _wait(lambda: not engine.rejected, "the rejection to clear")
    finally:
        engine.stop()
        source.close()


def test_bad_document_in_consul_kv_is_skipped_and_the_mesh_keeps_converging(consul_http):
    store = ConsulKVStore(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "resources/")
    store.apply(load_documents(GOOD, "good.yaml"))
    engine, source, _ = _run_engine(store)
    try:
        def write_bad():
            key = f"{store.prefix}AuthorizationPolicy/default/nonsense"
            consul_http.put(f"/v1/kv/{key}", BAD)  # the document as JSON, behind meshctl's back

        _check_bad_document_is_skipped(engine, source, write_bad, "AuthorizationPolicy/default/nonsense")
    finally:
        engine.stop()
        source.close()


def test_a_build_that_fails_with_a_bug_fails_that_proxy_only(tmp_path, monkeypatch):
    import meshcore.controlplane.engine as engine_module

    real = engine_module.generate_proxy  # the first step of a build

    def build(snap, info, session=None):
        if info.node == "vm1":
            raise AttributeError("'str' object has no attribute 'get'")
        return real(snap, info, session)

    monkeypatch.setattr(engine_module, "generate_proxy", build)
    engine, source, metrics = _run_engine(DirectoryStore(tmp_path / "resources"))
    try:
        changed, _ = _without_an_instance(engine.snapshot.catalog)
        source.set(changed)
        _wait(lambda: engine.proxies["vm0"].built_hash == engine.snapshot.hash, "vm0 to be rebuilt")
        assert "AttributeError" in engine.proxies["vm1"].error
        assert engine.proxies["vm1"].built_hash != engine.snapshot.hash
        assert engine.cache.get("vm0") is not None
        assert all(t.is_alive() for t in engine._threads)
    finally:
        engine.stop()
        source.close()


def test_supervisor_restarts_a_loop_that_dies_counts_it_and_logs_one_line(caplog):
    stop = threading.Event()
    metrics = ControlPlaneMetrics()
    runs = []

    def loop():
        runs.append(time.monotonic())
        if len(runs) < 3:
            raise KeyError("catalog index 42")
        stop.wait()

    supervisor = Supervisor(stop, on_restart=lambda t: metrics.thread_restarts.labels(thread=t).inc(),
                            first_backoff_s=0.05)
    with caplog.at_level(logging.DEBUG, logger="meshcore.controlplane.supervisor"):
        thread = supervisor.start("catalog-watch", loop)
        _wait(lambda: len(runs) == 3, "the loop to be restarted twice")
        assert thread.is_alive()
    stop.set()
    thread.join(5)
    assert metrics.registry.get_sample_value("meshcore_thread_restarts_total", {"thread": "catalog-watch"}) == 2
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2 and all(r.exc_info is None for r in errors), "one line each, no traceback at ERROR"
    assert "thread=catalog-watch" in errors[0].getMessage() and "KeyError" in errors[0].getMessage()
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records), "the traceback at DEBUG"
    health = supervisor.threads["catalog-watch"]
    assert health.restarts == 2 and "catalog index 42" in health.last_error and not health.alive


def test_restart_with_a_bad_document_serves_reconnecting_proxies_and_status_names_it(tmp_path, capsys, monkeypatch):
    write_catalog(tmp_path / "catalog")
    store_dir = tmp_path / "state" / "resources"
    DirectoryStore(store_dir).apply(load_documents(GOOD.replace("s1", "details"), "good.yaml"))
    folder = store_dir / "AuthorizationPolicy" / "default"
    (folder / "nonsense.json").write_text(json.dumps(BAD))
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    kek = generate_kek_file(tmp_path / "kek")
    plane = ControlPlane(_settings(tmp_path, ports), kek)
    plane.start()
    try:
        assert plane.engine.ready.wait(WAIT)
        with _connected(plane) as client:
            got = _subscribe(client)
            assert got[CLUSTER] and got[LISTENER], "a reconnecting Envoy gets the rest of the mesh"
            _wait(lambda: (p := _proxy(plane)) is not None and p.synced, "the proxy to be synced")
        status = plane.status_view().control_plane
        sources = {s.name: s for s in status.sources}
        assert sources["resources"].state == "ok"
        (rejected,) = sources["resources"].rejected
        assert "AuthorizationPolicy/default/nonsense" in rejected.key and "nonsense.json" in rejected.key
        assert "spec.selector" in rejected.error
        assert not status.healthy
        assert {t.name for t in status.threads} >= {"mesh-build", "catalog-watch", "resource-watch",
                                                    "serving-cert", "ca-rotation"}
        assert status.to_json()["sources"][1]["rejected"][0]["key"] == rejected.key
        # meshctl status names the source, the key and the error.
        from meshcore.cli.main import main as meshctl

        token = (tmp_path / "state" / "admin.token").read_text().strip()
        monkeypatch.setenv("MESHCORE_TOKEN", token)
        assert meshctl(["status", "--server", plane.addresses["http"]]) == 0
        out = capsys.readouterr().out
        assert "resources  ok" in out and f"rejected {rejected.key}: spec.selector" in out
    finally:
        plane.stop()


def test_a_proxy_whose_build_failed_is_not_synced(tmp_path, monkeypatch):
    write_catalog(tmp_path / "catalog")
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    plane = ControlPlane(_settings(tmp_path, ports), generate_kek_file(tmp_path / "kek"))
    plane.start()
    node = "n1"
    try:
        assert plane.engine.ready.wait(WAIT)
        with _connected(plane, node) as client:
            _subscribe(client)
            _wait(lambda: (p := _proxy(plane, node)) is not None and p.synced, "first sync")

            import meshcore.controlplane.engine as engine_module

            def failing(snap, info, session=None):
                raise RuntimeError("generation bug")

            monkeypatch.setattr(engine_module, "generate_proxy", failing)  # the first step of a build
            (tmp_path / "catalog" / "n2" / "details-v1.json").unlink()  # a catalog change reaching n1
            _wait(lambda: plane.engine.proxies[node].error, "the failed build")
            mine = _proxy(plane, node)
            assert mine is not None and not mine.synced and "generation bug" in mine.error
            assert plane.cache.synced(node), "the cache still holds its last good config, ACKed"
    finally:
        plane.stop()


class FlakyCatalog(SteppedCatalog):
    """Raises an unexpected error (not a meshcore one) on its second poll, as a bug in a source would."""

    def __init__(self, catalog: Catalog):
        super().__init__(catalog)
        self.polls = 0

    def poll(self, index, wait):
        self.polls += 1
        if self.polls == 2:
            raise KeyError("Node")
        return super().poll(index, wait)


def test_a_catalog_read_that_raises_anything_is_reported_with_its_index_and_retried(tmp_path, caplog):
    source = FlakyCatalog(generated_catalog())
    metrics = ControlPlaneMetrics()
    engine = MeshEngine(source, DirectoryStore(tmp_path / "resources"), SnapshotCache(), trust_domain="cluster.local",
                        metrics=metrics)
    with caplog.at_level(logging.WARNING, logger="meshcore.controlplane"):
        engine.start()
        try:
            assert engine.ready.wait(WAIT)
            source.set(source.catalog)  # wakes the first blocking poll; the second one raises
            _wait(lambda: source.polls >= 3, "the catalog watch to retry")
            assert any("catalog watch failed unexpectedly" in r.getMessage() and "KeyError" in r.getMessage()
                       and r.exc_info is None for r in caplog.records if r.levelno == logging.ERROR)
            assert "catalog watch at index" in engine.last_error and "KeyError" in engine.last_error
            assert metrics.registry.get_sample_value("meshcore_catalog_watch_errors_total") == 1
            changed, victim = _without_an_instance(source.catalog)
            source.set(changed)
            _wait(lambda: not next(i for i in engine.snapshot.catalog.instances if i.id == victim).healthy,
                  "later changes to arrive")
            _wait(lambda: engine.source_error == "", "the error to clear after a good read")
            assert all(t.is_alive() for t in engine._threads)
            assert metrics.registry.get_sample_value("meshcore_thread_restarts_total", {"thread": "catalog-watch"}) is None
        finally:
            engine.stop()
            source.close()


def test_an_unsupervised_thread_that_dies_is_one_error_line(caplog, capsys, monkeypatch):
    from meshcore.controlplane._supervise import install_thread_excepthook

    monkeypatch.setattr(threading, "excepthook", threading.excepthook)  # restored after the test
    install_thread_excepthook()

    def boom():
        raise ValueError("bad index")

    with caplog.at_level(logging.DEBUG, logger="meshcore.controlplane.supervisor"):
        t = threading.Thread(target=boom, name="some-worker")
        t.start()
        t.join(5)
    (line,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "thread=some-worker" in line.getMessage() and "ValueError: bad index" in line.getMessage()
    assert line.exc_info is None and "Traceback" not in capsys.readouterr().err


def test_a_suspect_store_shows_as_holding_in_the_engines_source_health(tmp_path):
    """A store that reports its own health (Consul KV lost resources: it serves the held generation) is shown
    by status as the resources source ``holding``, with the store's message; a healthy one as ``ok``."""
    from meshcore.resources.store import StoreHealth

    class ReportingStore(DirectoryStore):
        report = StoreHealth(backend="consul", location="meshcore/resources/ @ http://127.0.0.1:8500",
                             generation=3, resources=10)

        def health(self) -> StoreHealth:
            return self.report

    store = ReportingStore(tmp_path / "resources")
    engine = MeshEngine(SteppedCatalog(generated_catalog()), store, SnapshotCache(), trust_domain="cluster.local")
    health = {h.name: h for h in engine.health()}["resources"]
    assert health.state == "ok" and health.kind.startswith("consul meshcore/resources/") and health.index == 3
    store.report = replace(store.report, state="suspect", generation=0, held_generation=7, held_resources=12,
                           message="Consul KV lost 12 resources; run meshctl store restore")
    health = {h.name: h for h in engine.health()}["resources"]
    assert health.state == "holding" and "meshctl store restore" in health.detail
