"""Smoke test of the data-plane benchmark: every path at a low rate for a second or two.

Asserts that each path served every request and that the result is well formed, never how fast it was."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.benchmarks import bench_dataplane

pytestmark = pytest.mark.skipif(shutil.which("wrk") is None,
                                reason="wrk is not installed (apt-get install wrk; make lab-deps does, as root)")


def test_short_run_measures_every_path(tmp_path):
    out = tmp_path / "dataplane.json"
    rc = bench_dataplane.main(["--rates", "50", "--duration", "2", "--warmup", "0.5", "--repeats", "1",
                               "--output", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["path"]: r for r in doc["summary"]}
    assert set(rows) == set(bench_dataplane.PATHS)
    for path, row in rows.items():
        assert row["errors"] == 0 and row["achieved_rps"] > 0, row
        assert 0 < row["p50"] <= row["p90"] <= row["p99"] <= row["p99.9"], row
        assert set(row["envoys"]) == (set() if path == "direct" else {"client", "server"}), row
        for envoy in row["envoys"].values():
            assert envoy["rss_mb"] > 0 and envoy["vcpu_per_1000_rps"] >= 0, envoy
    assert "p99_added_x_minimal_rounds" in rows["meshcore"] and "p99_added" in rows["minimal"]
    assert len(doc["runs"]) == 3
    # the meshcore pair talks HTTP/2 between the sidecars (ALPN), HTTP/1.1 to the backend
    client, server = doc["envoy_stats"]["meshcore"]["client"], doc["envoy_stats"]["meshcore"]["server"]
    assert any(k.startswith("cluster.outbound") and k.endswith("upstream_cx_http2_total") for k in client), client
    assert not any(k.startswith("cluster.outbound") and k.endswith("upstream_cx_http1_total") for k in client), client
    assert any(k.startswith("cluster.local_app") and k.endswith("upstream_cx_http1_total") for k in server), server
