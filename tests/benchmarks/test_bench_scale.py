"""Smoke test of the scale benchmark: a tiny mesh, a handful of synthetic proxies, one real Envoy.

Asserts that every scenario ran and wrote a well-formed result, never how fast it was."""

from __future__ import annotations

import json

from tests.benchmarks import bench_scale

CONVERGENCE = ("leaf-instance", "popular-instance", "destination-rule", "mesh-wide-authz", "nack-recover", "sustained")


def test_short_run_writes_every_scenario(tmp_path):
    out = tmp_path / "scale.json"
    rc = bench_scale.main(["--short", "--proxies", "4", "--services", "16", "--instances", "40", "--nodes", "16",
                           "--samples", "1", "--burst", "1", "--idle", "1", "--timeout", "30", "--storm-timeout", "20",
                           "--rates", "5,10", "--rate-seconds", "1",
                           "--output", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    rows = {r["name"]: r for r in doc["scenarios"]}
    for name in ("join", "initial-sync", "footprint", "idle-cpu", "config-bytes", "serialization-floor",
                 "envoy-config-dump", "reconnect-storm", *CONVERGENCE):
        assert name in rows, f"scenario {name} missing from {sorted(rows)}"
    for row in doc["scenarios"]:
        for key in ("name", "proxies", "services", "instances", "p50_ms", "p99_ms", "max_ms", "load_average"):
            assert key in row, f"{row['name']} lacks {key}"
        assert row["proxies"] == 4 and row["services"] == 16 and row["instances"] == 40
    for name in CONVERGENCE:
        r = rows[name]
        assert r["samples"] > 0 and 0 <= r["p50_ms"] <= r["p99_ms"] <= r["max_ms"], r
    assert rows["nack-recover"]["nacked"] >= 1
    assert rows["sustained"]["acked_updates"] > 0
    throughput = [r for r in doc["scenarios"] if r["name"].startswith("throughput-")]
    assert throughput and throughput[0]["name"] == "throughput-5", sorted(rows)  # the ladder starts at the first rate
    for r in throughput:
        for key in ("rate_offered", "written", "written_per_s", "absorbed_per_s", "updates_per_s", "snapshots",
                    "changes_per_snapshot", "cp_core_fraction", "bench_core_fraction", "behind"):
            assert key in r, f"{r['name']} lacks {key}"
        assert r["written"] > 0 and r["absorbed"] <= r["written"], r
    assert rows["config-bytes"]["bytes_per_proxy_p50"] > 0
    assert rows["footprint"]["cp_threads"] > 0 and rows["footprint"]["cp_rss_mb"] > 0
    assert rows["envoy-config-dump"]["envoys"] == 1
    assert rows["envoy-config-dump"]["all_match"], rows["envoy-config-dump"]["nodes"]
    assert rows["initial-sync"]["xds"] in ("sotw", "delta")
    storm = rows["reconnect-storm"]
    assert "error" not in storm and storm["resynced"] == storm["of"] == 4, storm  # every proxy came back
    after = rows["after-storm"]  # and their new streams carry changes
    assert "error" not in after and after["samples"] > 0, after
