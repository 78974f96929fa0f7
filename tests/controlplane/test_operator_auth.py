"""Operator API authentication: bearer tokens with roles, stored hashed and sealed, used by meshctl."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from meshcore.ca import generate_kek_file
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.controlplane.operators import OperatorTokenStore, TOKENS_FILE

ROOT = Path(__file__).resolve().parents[2]
POLICY = """apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: only-get, namespace: default}
spec:
  selector: {matchLabels: {app: web}}
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    base = tmp_path_factory.mktemp("opauth")
    (base / "catalog").mkdir()
    kek_file = base / "kek"
    kek = generate_kek_file(kek_file)
    plane = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0"), kek)
    plane.start()
    plane.kek_file = kek_file
    try:
        yield plane
    finally:
        plane.stop()


def _call(cp, method: str, path: str, token: str | None = None, body: dict | None = None):
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cp.addresses["http"] + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _admin(cp) -> str:
    return (cp.settings.state_dir / "admin.token").read_text().strip()


def _cli_token(cp, name: str, role: str, *extra: str) -> str:
    out = subprocess.run([sys.executable, "-m", "meshcore.controlplane", "operator-token",
                          "--state-dir", str(cp.settings.state_dir), "--kek-file", str(cp.kek_file),
                          "create", "--name", name, "--role", role, *extra],
                         capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_bootstrap_admin_token_file_is_private(cp):
    path = cp.settings.state_dir / "admin.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert _admin(cp).startswith("mco_")


def test_no_token_and_bad_token_are_401_with_what_to_do(cp):
    status, body = _call(cp, "GET", "/v1/status")
    assert status == 401
    assert "MESHCORE_TOKEN" in json.loads(body)["error"]
    status, _ = _call(cp, "GET", "/v1/status", token="mco_not-a-real-token")
    assert status == 401
    status, _ = _call(cp, "POST", "/v1/tokens", token="", body={"node": "vm9"})
    assert status == 401


def test_health_and_metrics_stay_open(cp):
    assert _call(cp, "GET", "/healthz")[0] == 200
    assert _call(cp, "GET", "/metrics")[0] == 200


def test_read_only_may_read_but_not_write(cp):
    ro = _cli_token(cp, "auditor", "read-only")
    for path in ("/v1/status", "/v1/proxies", "/v1/resources", "/v1/certs", "/v1/trust-bundle", "/v1/ca"):
        assert _call(cp, "GET", path, token=ro)[0] == 200, path
    status, body = _call(cp, "POST", "/v1/tokens", token=ro, body={"node": "vm1"})
    assert status == 403
    err = json.loads(body)
    assert "admin" in err["error"] and err["needed_role"] == "admin"
    status, _ = _call(cp, "POST", "/v1/resources", token=ro,
                      body={"files": [{"name": "p.yaml", "content": POLICY}]})
    assert status == 403
    assert cp.store.list() == []


def test_admin_may_write(cp):
    status, body = _call(cp, "POST", "/v1/tokens", token=_admin(cp), body={"node": "vm1", "ttl": "5m"})
    assert status == 200 and json.loads(body)["token"]
    extra_admin = _cli_token(cp, "alice", "admin", "--ttl", "1h")
    status, _ = _call(cp, "POST", "/v1/resources", token=extra_admin,
                      body={"files": [{"name": "p.yaml", "content": POLICY}], "dry_run": True})
    assert status == 200


def test_expired_token_is_401(cp, tmp_path):
    from meshcore.ca import load_kek

    past = datetime.now(timezone.utc) - timedelta(hours=2)
    store = OperatorTokenStore(cp.settings.state_dir / TOKENS_FILE, load_kek(cp.kek_file), clock=lambda: past)
    token = store.create("old", "admin", ttl=timedelta(hours=1))
    status, body = _call(cp, "GET", "/v1/status", token=token)
    assert status == 401 and "expired" in json.loads(body)["error"]


def test_tokens_stored_hashed_and_sealed(cp):
    tokens = [_admin(cp), _cli_token(cp, "scan-me", "read-only")]
    store = OperatorTokenStore(cp.settings.state_dir / TOKENS_FILE, b"\0" * 32)
    assert store.path.read_bytes().startswith(b"MESHCORE-SEALED-1\n")
    for path in cp.settings.state_dir.rglob("*"):
        if not path.is_file() or path.name == "admin.token":
            continue
        data = path.read_bytes()
        for t in tokens:
            assert t.encode() not in data, path
            assert t.split("_", 1)[1].encode() not in data, path
        assert b"scan-me" not in data, path  # even the names are sealed


def test_meshctl_token_flag_and_env(cp, tmp_path):
    base = {k: v for k, v in os.environ.items() if not k.startswith("MESHCORE_TOKEN")}
    env = {**base, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "status", "-o", "json",
                          "--server", cp.addresses["http"]], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env=env)
    assert out.returncode == 1 and "MESHCORE_TOKEN" in out.stderr
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "status", "-o", "json", "--token", _admin(cp),
                          "--server", cp.addresses["http"]], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "control_plane" in json.loads(out.stdout)
    ro = _cli_token(cp, "env-reader", "read-only")
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "token", "create", "--node", "vm7",
                          "--server", cp.addresses["http"]], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env={**env, "MESHCORE_TOKEN": ro})
    assert out.returncode == 1 and "needs role 'admin'" in out.stderr
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "token", "create", "--node", "vm7",
                          "--server", cp.addresses["http"]], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env={**env, "MESHCORE_TOKEN": _admin(cp)})
    assert out.returncode == 0, out.stderr
    token_file = tmp_path / "tok"
    token_file.write_text(ro + "\n")
    out = subprocess.run([sys.executable, "-m", "meshcore.cli.ca", "certs", "list", "-o", "json",
                          "--server", cp.addresses["http"]], capture_output=True, text=True, timeout=30,
                         cwd=tmp_path, env={**env, "MESHCORE_TOKEN_FILE": str(token_file)})
    assert out.returncode == 0, out.stderr


def test_meshctl_finds_the_demo_token_next_to_controlplane_json(cp, tmp_path):
    """A token on disk is found through the demo state dir and sent only to the server that wrote it."""
    demo = tmp_path / ".meshcore-demo" / "controlplane"
    demo.mkdir(parents=True)
    (demo / "admin.token").write_text(_admin(cp) + "\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("MESHCORE_TOKEN")}, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "meshcore.cli.main", "status", "-o", "json", "--server", cp.addresses["http"]]
    (demo / "controlplane.json").write_text(json.dumps({"http": "http://127.0.0.1:1"}))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert out.returncode == 1 and "no operator token" in out.stderr  # another server's token is not sent
    (demo / "controlplane.json").write_text(json.dumps({"http": cp.addresses["http"]}))
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
