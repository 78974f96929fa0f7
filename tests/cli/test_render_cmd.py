"""``meshctl render``: the command end to end against a real control plane on loopback, and offline."""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from meshcore.cli import render as render_cmd
from meshcore.deploy import manifest_problems
from meshcore.errors import MeshError

from ._helpers import REPO, copy_bookinfo, control_plane, new_ca


def _parser() -> argparse.ArgumentParser:
    """meshctl's shape: a common parent with --server and -o, then the subcommand's register()."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    parser = argparse.ArgumentParser(prog="meshctl")
    render_cmd.register(parser.add_subparsers(dest="command", required=True), common)
    return parser


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    args = _parser().parse_args(["render", *argv])
    assert args.fn is render_cmd.cmd_render
    code = args.fn(args)
    out, err = capsys.readouterr()
    return code, out, err


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _tree(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root: content and inode (an unchanged inode means the file was not rewritten)."""
    return {str(p.relative_to(root)): (p.read_bytes(), p.stat().st_ino) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def catalog_dir(tmp_path):
    return copy_bookinfo(tmp_path / "consul.d")


@pytest.fixture
def cp(tmp_path, catalog_dir, monkeypatch):
    with control_plane(tmp_path / "cp", catalog_dir) as plane:
        # the operator API needs a token: the bootstrap admin token the control plane wrote
        monkeypatch.setenv("MESHCORE_TOKEN_FILE", str(plane.settings.state_dir / "admin.token"))
        yield plane


def test_render_fetches_from_the_control_plane_and_is_idempotent(cp, catalog_dir, tmp_path, capsys):
    out = tmp_path / "envoy_configs"
    argv = ["--out", str(out), "--catalog", f"files:{catalog_dir}", "--server", cp.addresses["http"], "-o", "json"]
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0
    summary = json.loads(stdout)
    assert [n["node"] for n in summary["nodes"]] == ["gateway", "vm1", "vm2", "vm3"]
    assert all(n["written"] == n["files"] for n in summary["nodes"])
    for node in ("gateway", "vm1", "vm2", "vm3"):
        assert f"==> {node}: " in stderr  # progress per node, on stderr
    assert "trust domain cluster.local" in stderr

    assert (out / "vm1" / "bundle.pem").read_text().strip() == cp.ca.bundle_pem().strip()
    agent = yaml.safe_load((out / "vm1" / "agent.yaml").read_text())
    assert agent["control_plane"] == cp.addresses["api"]
    bootstrap = json.loads((out / "vm1" / "bootstrap.json").read_text())
    host, port = cp.addresses["xds"].rsplit(":", 1)
    sock = bootstrap["static_resources"]["clusters"][0]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert sock["endpoint"]["address"]["socket_address"] == {"address": host, "port_value": int(port)}
    for node_dir in out.iterdir():
        files = {str(p.relative_to(node_dir)): p.read_bytes() for p in node_dir.rglob("*") if p.is_file()}
        assert manifest_problems(files) == [], node_dir.name
        assert not [p for p, c in files.items() if b"PRIVATE KEY" in c]
    assert oct((out / "vm1" / "agent.yaml").stat().st_mode & 0o777) == "0o644"

    before = _tree(out)
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0
    assert all(n["written"] == [] and n["removed"] == [] for n in json.loads(stdout)["nodes"])
    assert "==> vm1: 6 files (unchanged)" in stderr
    assert _tree(out) == before, "a second render rewrites nothing (same bytes, same inodes)"


def test_render_follows_catalog_changes_and_leaves_other_files_alone(cp, catalog_dir, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["--out", str(out), "--catalog", f"files:{catalog_dir}", "--server", cp.addresses["http"]]
    assert _run(argv, capsys)[0] == 0
    (out / "vm1" / "operator-notes.txt").write_text("mine\n")
    (out / "not-a-node").mkdir()
    (out / "not-a-node" / "x").write_text("keep\n")
    before = _tree(out)

    (catalog_dir / "vm1" / "reviews.hcl").unlink()  # reviews-v1 leaves vm1
    shutil.rmtree(catalog_dir / "vm3")              # vm3 leaves the catalog
    code, stdout, stderr = _run(argv, capsys)
    assert code == 0
    assert not (out / "vm1" / "services" / "reviews-v1.json").exists()
    assert (out / "vm1" / "services" / "productpage-v1.json").exists()
    assert (out / "vm1" / "operator-notes.txt").read_text() == "mine\n"
    assert not (out / "vm3").exists()
    assert (out / "not-a-node" / "x").read_text() == "keep\n"
    assert "vm3: no longer in the catalog" in stderr
    after = _tree(out)
    changed = sorted(p for p in after if after[p] != before.get(p))
    assert changed == ["vm1/MANIFEST.json"], "only vm1's manifest changed; every other file is untouched"
    assert "vm3: removed" in stdout


def test_render_offline_makes_no_network_call(tmp_path, capsys):
    ca = new_ca(tmp_path / "ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(ca.bundle_pem())
    out = tmp_path / "out"
    code, stdout, _ = _run(["--out", str(out), "--catalog", f"files:{REPO / 'examples/bookinfo/consul.d'}",
                            "--server", _closed_port_url(), "--ca-file", str(bundle),
                            "--control-plane", "https://cp.mesh.internal:15443",
                            "--xds-address", "cp.mesh.internal:15012", "--node", "vm2",
                            "--admin", "127.0.0.1:19100", "--admin", "vm2=127.0.0.12:19000",
                            "--vm-state-dir", "/srv/meshcore", "-o", "yaml"], capsys)
    assert code == 0
    assert [n["node"] for n in yaml.safe_load(stdout)["nodes"]] == ["vm2"]
    assert sorted(p.name for p in out.iterdir()) == ["vm2"]
    agent = yaml.safe_load((out / "vm2" / "agent.yaml").read_text())
    assert (agent["admin"], agent["state_dir"]) == ("127.0.0.12:19000", "/srv/meshcore")
    bootstrap = json.loads((out / "vm2" / "bootstrap.json").read_text())
    assert bootstrap["static_resources"]["clusters"][0]["type"] == "LOGICAL_DNS"
    assert bootstrap["node"]["metadata"]["secrets_dir"] == "/srv/meshcore/secrets"


def test_render_without_a_bundle_or_control_plane_says_what_to_pass(tmp_path, capsys):
    args = _parser().parse_args(["render", "--out", str(tmp_path / "out"), "--catalog",
                                 f"files:{REPO / 'examples/bookinfo/consul.d'}", "--server", _closed_port_url()])
    with pytest.raises(MeshError, match=r"cannot reach the control plane.*pass --ca-file, --xds-address, --control-plane"):
        args.fn(args)
    assert not (tmp_path / "out").exists(), "nothing is written when inputs are missing"


def test_render_refuses_a_bundle_with_a_private_key(tmp_path, capsys):
    from meshcore.ca import key_to_pem, new_private_key

    ca = new_ca(tmp_path / "ca")
    bad = tmp_path / "bad.pem"
    bad.write_text(ca.bundle_pem() + key_to_pem(new_private_key()))
    args = _parser().parse_args(["render", "--out", str(tmp_path / "out"), "--catalog",
                                 f"files:{REPO / 'examples/bookinfo/consul.d'}", "--ca-file", str(bad),
                                 "--control-plane", "https://10.0.0.5:15443", "--xds-address", "10.0.0.5:15012"])
    with pytest.raises(MeshError, match="PRIVATE KEY"):
        args.fn(args)
    assert not (tmp_path / "out").exists()


def test_render_reports_an_invalid_catalog_with_file_and_field(tmp_path, catalog_dir):
    (catalog_dir / "vm2" / "details.hcl").write_text('service {\n name = "details"\n port = "x"\n}\n')
    args = _parser().parse_args(["render", "--out", str(tmp_path / "out"), "--catalog", f"files:{catalog_dir}",
                                 "--ca-file", "/nonexistent", "--control-plane", "https://10.0.0.5:15443",
                                 "--xds-address", "10.0.0.5:15012"])
    with pytest.raises(MeshError, match=r"vm2/details.hcl: service.port"):
        args.fn(args)


def test_render_runs_as_a_process(tmp_path):
    ca = new_ca(tmp_path / "ca")
    bundle = tmp_path / "bundle.pem"
    bundle.write_text(ca.bundle_pem())
    out = tmp_path / "out"
    code = ("import sys; from meshcore.cli.render import main; sys.exit(main(sys.argv[1:]))")
    argv = ["--out", str(out), "--catalog", "files:examples/bookinfo/consul.d", "--ca-file", str(bundle),
            "--control-plane", "https://10.0.0.5:15443", "--xds-address", "10.0.0.5:15012", "-o", "json"]
    first = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert first.returncode == 0, first.stderr
    assert "==> vm1: 6 files (6 written)" in first.stderr
    snapshot = _tree(out)
    second = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, cwd=REPO, timeout=60)
    assert second.returncode == 0 and _tree(out) == snapshot
    failed = subprocess.run([sys.executable, "-c", code, "--out", str(out), "--catalog", "bogus"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert failed.returncode == 1 and "meshctl: --catalog 'bogus': use files:DIR or consul" in failed.stderr
