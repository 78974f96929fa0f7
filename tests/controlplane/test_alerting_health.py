"""The control plane's health alerts end to end in-process (issue 12): a stored document rejected and a loop the
supervisor restarted become firing default alerts, served by ``GET /v1/alerts`` and ``meshctl alerts``; a proxy
whose metrics cannot be read is marked unreachable."""

from __future__ import annotations

import json
import time
from dataclasses import replace

from meshcore.ca import generate_kek_file
from meshcore.controlplane.daemon import ControlPlane
from meshcore.resources.dir_store import DirectoryStore
from meshcore.resources.loader import load_documents

from ..e2e._topology import free_port, write_catalog
from .test_restart import _settings
from .test_watchers import BAD, GOOD

WAIT = 30.0


def _firing(plane: ControlPlane) -> dict[str, object]:
    plane.collector.collect_once()
    return {a.name: a for a in plane.alerting.alerts() if a.state == "firing"}


def test_rejected_document_and_restarted_loop_fire_default_alerts(tmp_path, capsys, monkeypatch):
    write_catalog(tmp_path / "catalog")
    store_dir = tmp_path / "state" / "resources"
    DirectoryStore(store_dir).apply(load_documents(GOOD.replace("s1", "details"), "good.yaml"))
    (store_dir / "AuthorizationPolicy" / "default" / "nonsense.json").write_text(json.dumps(BAD))
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    plane = ControlPlane(_settings(tmp_path, ports), generate_kek_file(tmp_path / "kek"))
    plane.start()
    try:
        assert plane.engine.ready.wait(WAIT)
        died = []

        def flaky() -> None:  # a loop that dies once, under the daemon's real supervisor
            died.append(1)
            if len(died) == 1:
                raise RuntimeError("injected")

        plane.supervisor.start("flaky-loop", flaky)
        deadline = time.monotonic() + WAIT
        while not {"resources-rejected", "control-plane-loop-restarted"} <= set(firing := _firing(plane)):
            assert time.monotonic() < deadline, f"alerts never fired: {sorted(firing)}"
            time.sleep(0.1)
        rejected = firing["resources-rejected"]
        assert rejected.severity == "critical" and rejected.labels["source"].startswith("dir ")
        assert str(store_dir) in rejected.labels["source"]
        assert firing["control-plane-loop-restarted"].labels["thread"] == "flaky-loop"
        assert "resource-store-suspect" not in firing and "catalog-holding" not in firing
        signals = plane.collector.latest()
        assert signals is not None and set(signals.get("store_suspect").values()) == {0.0}

        from meshcore.cli.main import main as meshctl

        monkeypatch.setenv("MESHCORE_TOKEN", (tmp_path / "state" / "admin.token").read_text().strip())
        assert meshctl(["alerts", "--server", plane.addresses["http"], "-o", "json"]) == 0
        names = {a["name"] for a in json.loads(capsys.readouterr().out)}
        assert {"resources-rejected", "control-plane-loop-restarted"} <= names
    finally:
        plane.stop()


def test_a_proxy_whose_metrics_are_unreachable_alerts_and_the_dashboard_is_not_green(tmp_path):
    import pytest

    from meshcore.observe.collector import ScrapeTarget
    from meshcore.observe.signals import labels

    from ..e2e.test_dashboard import CHROMIUM, _chromium, _Dom

    write_catalog(tmp_path / "catalog")
    ports = {k: free_port("127.0.0.1") for k in ("xds", "api", "http")}
    settings = replace(_settings(tmp_path, ports), collect_interval=1.0)
    plane = ControlPlane(settings, generate_kek_file(tmp_path / "kek"))
    blind = free_port("127.0.0.1")  # nothing listens there
    plane.collector._proxies = lambda: [ScrapeTarget("n1", f"http://127.0.0.1:{blind}/metrics", heard_from=True,
                                                     in_sync=True)]
    plane.start()
    try:
        assert plane.engine.ready.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while (s := plane.collector.latest()) is None or s.get("metrics_unreachable") != {labels(node="n1"): 1.0}:
            assert time.monotonic() < deadline, "n1 never marked metrics_unreachable"
            time.sleep(0.1)
        assert "n1" in plane.collector.errors
        if CHROMIUM is None:
            pytest.skip("Debian's chromium is not installed: the dashboard half is not checked")
        token = (tmp_path / "state" / "admin.token").read_text().strip()
        out = _chromium(f"{plane.addresses['http']}/#token={token}", "--dump-dom")
        assert out.returncode == 0, out.stderr[-2000:]
        dom = _Dom()
        dom.feed(out.stdout)
        body = next(a for t, a in dom.elements if t == "body")
        assert body.get("data-state") == "blind", f"page state {body.get('data-state')!r}: green while blind"
        assert "metrics unreachable: n1" in out.stdout  # the header names the proxy it is blind to
    finally:
        plane.stop()
