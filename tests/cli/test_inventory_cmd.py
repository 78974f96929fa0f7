"""``meshctl inventory``: flags, catalog defaults from the environment, output formats."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import yaml

from meshcore.cli import inventory as inventory_cmd
from meshcore.deploy import build_inventory, load_catalog
from meshcore.errors import ConfigError, MeshError
from tests.consul_double.server import ConsulDouble

from ._helpers import BOOKINFO, REPO, register_in_consul

FILES = f"files:{BOOKINFO}"


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    parser = argparse.ArgumentParser(prog="meshctl")
    sub = parser.add_subparsers(dest="command", required=True)
    inventory_cmd.register(sub, common)
    return parser


def _run(argv: list[str], capsys) -> str:
    args = _parser().parse_args(["inventory", *argv])
    assert args.fn(args) == 0
    return capsys.readouterr().out


@pytest.fixture
def no_catalog_env(monkeypatch):
    for name in ("MESHCORE_CATALOG", "CONSUL_HTTP_ADDR", "CONSUL_HTTP_TOKEN", "CONSUL_HTTP_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_list_is_the_default_and_json(no_catalog_env, capsys):
    expected = build_inventory(load_catalog(FILES).catalog)
    assert json.loads(_run(["--catalog", FILES, "--list"], capsys)) == expected
    assert json.loads(_run(["--catalog", FILES], capsys)) == expected


def test_host_prints_one_hosts_vars(no_catalog_env, capsys):
    out = json.loads(_run(["--catalog", FILES, "--host", "vm3"], capsys))
    assert out["ansible_host"] == "127.0.0.13" and [s["id"] for s in out["meshcore_services"]] == ["ratings-v1", "reviews-v3"]
    assert yaml.safe_load(_run(["--catalog", FILES, "--host", "vm3", "-o", "yaml"], capsys)) == out
    args = _parser().parse_args(["inventory", "--catalog", FILES, "--host", "nope"])
    with pytest.raises(MeshError, match="'nope' is not in the inventory"):
        args.fn(args)
    args = _parser().parse_args(["inventory", "--catalog", FILES, "--host", "vm3", "-o", "ini"])
    with pytest.raises(ConfigError, match="use -o json or -o yaml with --host"):
        args.fn(args)


def test_list_and_host_are_exclusive(no_catalog_env, capsys):
    with pytest.raises(SystemExit):
        _parser().parse_args(["inventory", "--list", "--host", "vm1"])
    assert "not allowed with argument" in capsys.readouterr().err


def test_yaml_and_ini_output(no_catalog_env, capsys):
    doc = yaml.safe_load(_run(["--catalog", FILES, "-o", "yaml"], capsys))
    assert sorted(doc["all"]["children"]["svc_reviews"]["hosts"]) == ["vm1", "vm2", "vm3"]
    ini = _run(["--catalog", FILES, "-o", "ini"], capsys)
    assert "[meshcore_gateways]\ngateway\n" in ini


def test_catalog_from_meshcore_catalog_env(no_catalog_env, capsys):
    no_catalog_env.setenv("MESHCORE_CATALOG", FILES)
    assert sorted(json.loads(_run([], capsys))["_meta"]["hostvars"]) == ["gateway", "vm1", "vm2", "vm3"]


def test_catalog_defaults_to_consul_when_consul_http_addr_is_set(no_catalog_env, capsys):
    with ConsulDouble(node="consul-server") as consul:
        register_in_consul(consul.address, load_catalog(FILES).definitions.values())
        no_catalog_env.setenv("CONSUL_HTTP_ADDR", consul.address)
        out = json.loads(_run(["--list"], capsys))
    assert out == build_inventory(load_catalog(FILES).catalog)


def test_no_catalog_is_an_error_saying_what_to_pass(no_catalog_env):
    args = _parser().parse_args(["inventory", "--list"])
    with pytest.raises(ConfigError, match="pass --catalog files:DIR or --catalog consul"):
        args.fn(args)


def test_consul_unreachable_is_a_mesh_error(no_catalog_env):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    no_catalog_env.setenv("CONSUL_HTTP_ADDR", f"127.0.0.1:{port}")
    args = _parser().parse_args(["inventory"])
    with pytest.raises(MeshError, match=f"127.0.0.1:{port}"):
        args.fn(args)


def test_runs_as_a_dynamic_inventory_process(no_catalog_env):
    env_code = "import sys; from meshcore.cli.inventory import main; sys.exit(main(sys.argv[1:]))"
    listed = subprocess.run([sys.executable, "-c", env_code, "--catalog", FILES, "--list"],
                            capture_output=True, text=True, cwd=REPO, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["svc_productpage"]["hosts"] == ["vm1"]
    host = subprocess.run([sys.executable, "-m", "meshcore.cli.inventory", "--catalog", FILES, "--host", "gateway"],
                          capture_output=True, text=True, cwd=REPO, timeout=60)
    assert host.returncode == 0 and json.loads(host.stdout)["meshcore_node"] == "gateway"
    bad = subprocess.run([sys.executable, "-m", "meshcore.cli.inventory", "--catalog", "files:/nonexistent"],
                         capture_output=True, text=True, cwd=REPO, timeout=60)
    assert bad.returncode == 1 and "meshctl: --catalog files:/nonexistent" in bad.stderr
