"""The sidecar meta's ``meshcore-config-version``: the versions the node's Envoy ACKed, read from its admin at
most every few seconds, and a registration sent again only when it moved."""

from __future__ import annotations

import threading

from meshcore.agent._consul import ConsulSync
from meshcore.agent.config_version import AckedConfigVersion, parse_version_texts

STATS = '''cluster.outbound_api|web.version_text: "c1"
cluster_manager.cds.version_text: "{cds}"
http.inbound_web-1.rds.inbound_web-1.version_text: "r1"
listener_manager.lds.version_text: "{lds}"
'''


def test_parse_version_texts():
    assert parse_version_texts(STATS.format(cds="a1", lds="b2")) == "lds:b2 cds:a1"
    assert parse_version_texts(STATS.format(cds="v7", lds="v7")) == "v7"
    assert parse_version_texts(STATS.format(cds="", lds="b2")) == ""  # nothing ACKed yet
    assert parse_version_texts("") == ""


def test_read_at_most_once_per_ttl_and_unknown_while_envoy_is_down():
    calls, now, answer = [], [0.0], [(200, STATS.format(cds="a1", lds="b2").encode())]

    def fetch(admin, path):
        calls.append((admin, path))
        return answer[0]

    acked = AckedConfigVersion(lambda: "127.0.0.1:19000", ttl=5.0, fetch=fetch, clock=lambda: now[0])
    assert acked("web-1") == acked("web-2") == "lds:b2 cds:a1"
    assert len(calls) == 1 and calls[0][1].startswith("/stats?filter=")
    answer[0] = None  # Envoy stopped
    now[0] = 6.0
    assert acked() == "" and len(calls) == 2


def test_sync_worker_resyncs_when_the_version_moves(tmp_path):
    (tmp_path / "web.json").write_text('{"service": {"name": "web", "port": 8080}}')
    version, synced = ["v1"], []
    done = threading.Event()

    def syncer(payloads):
        synced.append(version[0])
        done.set()

    sync = ConsulSync(tmp_path, "vm1", syncer_factory=lambda: syncer, resync_on=lambda: version[0])
    try:
        sync.trigger()
        assert done.wait(10) and synced == ["v1"]
        done.clear()
        assert not done.wait(1.5)  # nothing moved: no sync
        version[0] = "v2"
        assert done.wait(10) and synced == ["v1", "v2"]
    finally:
        sync.stop()
