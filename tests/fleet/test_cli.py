"""meshctl fleet / bug-report: argument wiring, and a real Fabric connection failing cleanly on loopback."""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
from pathlib import Path

from meshcore.cli.fleet import register

ROOT = Path(__file__).resolve().parents[2]


def meshctl_like_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    p = argparse.ArgumentParser(prog="meshctl")
    register(p.add_subparsers(dest="command", required=True), common)
    return p


def test_register_adds_fleet_and_bug_report():
    p = meshctl_like_parser()
    a = p.parse_args(["fleet", "status", "-i", "inv.yml", "-o", "json"])
    assert (a.inventory, a.output, a.fn.__name__) == ("inv.yml", "json", "cmd_status")
    a = p.parse_args(["fleet", "logs", "vm1", "-n", "50", "--unit", "control-plane", "-i", "x"])
    assert (a.host, a.lines, a.unit) == ("vm1", 50, "control-plane")
    a = p.parse_args(["fleet", "restart", "vm2", "--service", "agent", "-i", "x"])
    assert (a.host, a.service) == ("vm2", "agent")
    a = p.parse_args(["bug-report", "-i", "x", "--out", "r.tar.gz"])
    assert (a.out, a.fn.__name__) == ("r.tar.gz", "cmd_bug_report")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_unreachable_hosts_are_reported_and_the_exit_code_is_1(tmp_path):
    port = _closed_port()
    inv = tmp_path / "hosts.ini"
    inv.write_text(f"[meshcore_vms]\nvm1 ansible_host=127.0.0.1 ansible_port={port} ansible_user=root\n"
                   f"vm2 ansible_host=127.0.0.1 ansible_port={port} ansible_user=root\n")
    proc = subprocess.run([sys.executable, "-m", "meshcore.cli.fleet", "fleet", "status", "-i", str(inv), "-o", "json"],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1, proc.stderr
    hosts = json.loads(proc.stdout)
    assert [h["host"] for h in hosts] == ["vm1", "vm2"]
    assert all(h["error"] and str(port) in h["error"] and not h["healthy"] for h in hosts)
    assert "status: vm1 FAILED" in proc.stderr and "status: vm2 FAILED" in proc.stderr
    out = tmp_path / "r.tar.gz"
    proc = subprocess.run([sys.executable, "-m", "meshcore.cli.fleet", "bug-report", "-i", str(inv), "--out", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert proc.returncode == 1 and out.is_file(), proc.stderr


def test_no_inventory_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("MESHCORE_INVENTORY", raising=False)
    proc = subprocess.run([sys.executable, "-m", "meshcore.cli.fleet", "fleet", "status"], capture_output=True,
                          text=True, timeout=30, cwd=ROOT)
    assert proc.returncode == 1 and "pass -i INVENTORY" in proc.stderr
