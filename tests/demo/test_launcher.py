"""The launcher's wait for synced proxies says, when it gives up, which proxy is stuck and how."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from meshcore.demo import launcher
from meshcore.demo.launcher import LocalMesh, MeshLayout
from meshcore.errors import DemoError


class _Mesh(LocalMesh):
    def __init__(self, tmp_path, proxies):
        super().__init__(MeshLayout(state_dir=tmp_path, catalog_dir=tmp_path / "catalog"))
        self._proxies = proxies

    def catalog(self):
        return SimpleNamespace(instances=[SimpleNamespace(node=n) for n in ("gw", "n1", "n2")])

    def status(self):
        return {"proxies": self._proxies}


def test_timeout_names_each_unsynced_proxy_with_its_state_and_agent_log(tmp_path, monkeypatch):
    monkeypatch.setattr(launcher.time, "sleep", lambda s: None)
    mesh = _Mesh(tmp_path, [
        {"node": "gw", "synced": True, "connected": True, "version": "v1", "error": ""},
        {"node": "n1", "synced": False, "connected": True, "version": "v7", "error": "listener refused"},
    ])
    mesh.logs.mkdir(parents=True)
    (mesh.logs / "agent-n1.log").write_text("".join(f"line {i}\n" for i in range(10)))
    with pytest.raises(DemoError) as err:
        mesh.wait_synced(timeout=0.05)
    text = str(err.value)
    assert "timed out" in text and "every proxy (gw, n1, n2)" in text
    assert "n1: connected=True version=v7 error=listener refused" in text
    assert "agent-n1: line 9" in text and "agent-n1: line 5" not in text  # the last lines only
    assert "n2: not known to the control plane" in text
    assert "gw:" not in text  # synced proxies are not listed


def test_stopping_a_mesh_also_stops_an_envoy_its_killed_agent_left_running(tmp_path):
    """An agent killed with SIGKILL leaves its Envoy (own session) running and recorded: the mesh's stop
    finds it by that record and stops it, and leaves alone a process that only looks like it."""
    import subprocess
    import sys

    from meshcore.agent.supervisor import EnvoyRecord, envoy_alive, stable_base_id, write_record
    from meshcore.demo.launcher import stop_mesh

    fake = tmp_path / "bin" / "envoy"  # an "envoy" by name, as the record check wants
    fake.parent.mkdir()
    fake.symlink_to(sys.executable)
    node_dir = tmp_path / "nodes" / "n1"
    (node_dir / "envoy").mkdir(parents=True)
    base_id = stable_base_id("n1", node_dir)
    orphan = subprocess.Popen([str(fake), "-c", "import time; time.sleep(60)", "--base-id", str(base_id)],
                              start_new_session=True)
    try:
        record = EnvoyRecord(pid=orphan.pid, epoch=0, base_id=base_id, handover=False)
        write_record(node_dir / "envoy" / "envoy.json", record)
        launcher.wait_until(lambda: envoy_alive(record), 10, "the fake envoy to start")
        assert stop_mesh(tmp_path) == [f"envoy of n1 (pid {orphan.pid}), left by its agent"]
        assert orphan.wait(timeout=10) is not None
        assert not (node_dir / "envoy" / "envoy.json").exists()
    finally:
        orphan.kill()
