"""The control plane's own health as signals and default alerts (issue 12): a restarted loop, rejected stored
documents, a catalog holding its last good endpoints, a suspect resource store, a proxy whose metrics cannot be
read. Each goes signal -> default rule -> alert through the control plane's :class:`Alerting`."""

from __future__ import annotations

import threading

from meshcore.catalog.source import SourceHealth
from meshcore.controlplane._supervise import ThreadHealth
from meshcore.controlplane.alerting import Alerting
from meshcore.observe.collector import ControlPlaneSignals, MeshCollector, ScrapeTarget
from meshcore.observe.signals import Signals, labels
from meshcore.resources.store import StoreHealth

from .test_collector import envoy_text

STORE = "consul http://127.0.0.1:8500 meshcore/resources"
CATALOG = "consul http://127.0.0.1:8500"


class _Supervisor:
    def __init__(self, **restarts: int):
        self.threads = {name: ThreadHealth(name, restarts=n) for name, n in restarts.items()}


class _Store:
    def __init__(self):
        self.state = "ok"

    def health(self) -> StoreHealth:
        return StoreHealth(backend="consul", location="http://127.0.0.1:8500 meshcore/resources", state=self.state)


class _Catalog:
    def __init__(self):
        self.state = "ok"

    def health(self) -> SourceHealth:
        return SourceHealth(name="catalog", kind=CATALOG, state=self.state)


def test_control_plane_signals_count_restarts_per_interval_and_read_each_source():
    engine, daemon = _Supervisor(**{"resource-watch": 0, "mesh-build": 0}), _Supervisor(**{"serving-cert": 0})
    store, catalog, rejected = _Store(), _Catalog(), {}
    health = ControlPlaneSignals(catalog=catalog, store=store, rejected=lambda: rejected, supervisors=(engine, daemon))
    first = health()
    assert first["thread_restarts"] == {labels(thread="resource-watch"): 0.0, labels(thread="mesh-build"): 0.0,
                                        labels(thread="serving-cert"): 0.0}
    assert first["resources_rejected"] == {labels(source=STORE): 0.0}
    assert first["store_suspect"] == {labels(source=STORE): 0.0}
    assert first["catalog_holding"] == {labels(source=CATALOG): 0.0}
    engine.threads["resource-watch"].restarts = 2
    store.state, catalog.state = "suspect", "holding"
    rejected.update({"AuthorizationPolicy/default/x (meshcore/resources/x)": "spec.selector: must be an object"})
    second = health()
    assert second["thread_restarts"][labels(thread="resource-watch")] == 2.0  # restarts since the previous call
    assert second["resources_rejected"] == {labels(source=STORE): 1.0}
    assert second["store_suspect"] == {labels(source=STORE): 1.0}
    assert second["catalog_holding"] == {labels(source=CATALOG): 1.0}
    assert health()["thread_restarts"][labels(thread="resource-watch")] == 0.0  # no new restart: back to 0


def test_a_failing_health_report_leaves_out_only_its_own_signals(caplog):
    class Broken:
        def health(self):
            raise OSError("state dir unreadable")

    out = ControlPlaneSignals(catalog=Broken(), store=Broken(), rejected=dict, supervisors=())()
    assert out == {"thread_restarts": {}}
    assert "catalog_holding left out" in caplog.text and "store_suspect" in caplog.text


def test_metrics_unreachable_comes_from_the_collectors_scrape_errors():
    proxies = [ScrapeTarget("n1", "http://n1/metrics", heard_from=True, in_sync=True),
               ScrapeTarget("n2", "http://n2/metrics", heard_from=True, in_sync=True),
               ScrapeTarget("n3", "", heard_from=True, in_sync=True)]  # announces no metrics: not scraped

    def fetch(url: str, timeout: float) -> str:
        if "n2" in url:
            raise OSError("connection refused")
        return envoy_text()

    collector = MeshCollector(lambda: proxies, interval=1.0, fetch=fetch, timeout=1.0)
    try:
        s = collector.collect_once()
    finally:
        collector.stop()
    assert s.get("metrics_unreachable") == {labels(node="n1"): 0.0, labels(node="n2"): 1.0}
    assert "n2" in collector.errors


def _fired(alerting: Alerting, at: float, **values) -> dict[str, dict]:
    alerts = alerting.evaluate(Signals(at=at, values=values))
    return {a.name: a.to_dict() for a in alerts if a.state == "firing"}


def test_each_health_signal_fires_its_default_rule_through_alerting():
    alerting = Alerting(lambda: [], external_url=lambda: "http://127.0.0.1:1").start()
    try:
        t0 = 1_700_000_000.0
        bad = {"thread_restarts": {labels(thread="resource-watch"): 1.0},
               "resources_rejected": {labels(source=STORE): 2.0},
               "catalog_holding": {labels(source=CATALOG): 1.0},
               "store_suspect": {labels(source=STORE): 1.0},
               "metrics_unreachable": {labels(node="vm3"): 1.0, labels(node="vm1"): 0.0}}
        now = _fired(alerting, t0, **bad)
        assert set(now) == {"control-plane-loop-restarted", "resources-rejected", "catalog-holding",
                            "resource-store-suspect"}, "for 0s: at once; metrics unreachable waits its for"
        later = _fired(alerting, t0 + 61, **bad)
        assert "proxy-metrics-unreachable" in later
        unreachable = later["proxy-metrics-unreachable"]
        assert unreachable["labels"] == {"node": "vm3", "alertname": "ProxyMetricsUnreachable", "severity": "warning"}
        assert "vm3" in unreachable["annotations"]["summary"] and "meshcore-agent" in unreachable["annotations"]["description"]
        restarted = later["control-plane-loop-restarted"]
        assert restarted["labels"]["thread"] == "resource-watch" and restarted["severity"] == "warning"
        assert "background thread died thread=resource-watch" in restarted["annotations"]["description"]
        rejected = later["resources-rejected"]
        assert rejected["severity"] == "critical" and rejected["labels"]["source"] == STORE
        assert rejected["annotations"]["summary"].startswith("2 stored resource document(s) in " + STORE)
        assert "meshctl status" in rejected["annotations"]["description"]
        assert "meshctl store restore" in later["resource-store-suspect"]["annotations"]["description"]
        assert later["resource-store-suspect"]["severity"] == "critical"
        assert CATALOG in later["catalog-holding"]["annotations"]["summary"]
        # Healthy again: the loop alert rides out its keepFiringFor (a restart stays visible), the rest resolve.
        healthy = {"thread_restarts": {labels(thread="resource-watch"): 0.0},
                   "resources_rejected": {labels(source=STORE): 0.0}, "catalog_holding": {labels(source=CATALOG): 0.0},
                   "store_suspect": {labels(source=STORE): 0.0}, "metrics_unreachable": {labels(node="vm3"): 0.0}}
        assert set(_fired(alerting, t0 + 62, **healthy)) == {"control-plane-loop-restarted"}
        assert _fired(alerting, t0 + 62 + 15 * 60, **healthy) == {}
        assert alerting.alerts() == []
    finally:
        alerting.stop()


def test_supervisor_restart_reaches_the_signal():
    from meshcore.controlplane._supervise import Supervisor

    stop, calls = threading.Event(), []

    def loop() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("boom")

    supervisor = Supervisor(stop, first_backoff_s=0.01)
    health = ControlPlaneSignals(catalog=object(), store=object(), rejected=dict, supervisors=(supervisor,))
    supervisor.start("test-loop", loop).join(10)
    assert health()["thread_restarts"] == {labels(thread="test-loop"): 1.0}
