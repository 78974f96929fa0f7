"""``meshctl certs list`` / ``ca`` (meshcore.cli.ca) against a real HTTP server on loopback, and the
control plane refusing a bad external CA at start with a clear message."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from meshcore.ca import generate_kek_file
from meshcore.cli import ca as cli_ca

ROOT = Path(__file__).resolve().parents[2]


def _rfc(dt: datetime) -> str:
    return dt.replace(microsecond=0).isoformat().replace("+00:00", "Z")


@pytest.fixture
def old_api():
    """An operator API of a control plane without /v1/ca (only /v1/certs)."""
    now = datetime.now(timezone.utc)
    certs = [
        {"spiffe_id": "spiffe://cluster.local/ns/default/sa/web", "serial": "ab" * 16, "node": "vm1",
         "not_before": _rfc(now - timedelta(hours=1)), "not_after": _rfc(now + timedelta(hours=23))},
        {"spiffe_id": "spiffe://cluster.local/ns/default/sa/api", "serial": "cd" * 16, "node": "vm2",
         "not_before": _rfc(now - timedelta(hours=20)), "not_after": _rfc(now + timedelta(hours=4))},
    ]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body, status = (json.dumps(certs).encode(), 200) if self.path == "/v1/certs" else \
                (json.dumps({"error": f"no such endpoint: {self.path}"}).encode(), 404)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def test_certs_list_json_and_table_warning(old_api, capsys):
    assert cli_ca.main(["certs", "list", "-o", "json", "--server", old_api]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(c["node"], c["expiring"]) for c in out] == [("vm1", False), ("vm2", True)]
    assert all({"spiffe_id", "serial", "not_after", "node"} <= set(c) for c in out)
    assert cli_ca.main(["certs", "list", "--server", old_api]) == 0
    table = capsys.readouterr().out
    assert "EXPIRING" in table and "WARNING: 1 certificate(s) past their renewal point" in table


def test_register_adds_ca_and_certs_to_a_parser():
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server")
    common.add_argument("-o", "--output", default="table")
    parser = argparse.ArgumentParser()
    cli_ca.register(parser.add_subparsers(dest="command"), common)
    args = parser.parse_args(["ca", "rotate", "--wait", "--timeout", "5m"])
    assert args.fn is cli_ca.cmd_ca_rotate and args.wait and args.timeout == 300.0
    assert parser.parse_args(["certs", "list"]).fn is cli_ca.cmd_certs_list


def test_control_plane_refuses_a_leaf_as_upstream_ca(tmp_path):
    from meshcore.ca import CertificateAuthority, key_to_pem, make_csr, new_private_key

    kek = generate_kek_file(tmp_path / "kek")
    other = CertificateAuthority.open(tmp_path / "other", kek=kek)
    key = new_private_key()
    leaf = other.sign_csr(make_csr(key, "spiffe://cluster.local/ns/default/sa/x"),
                          spiffe_id="spiffe://cluster.local/ns/default/sa/x")
    (tmp_path / "leaf.pem").write_text(leaf.chain_pem)
    (tmp_path / "leaf.key").write_text(key_to_pem(key))
    (tmp_path / "catalog").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "meshcore.controlplane", "--state-dir", str(tmp_path / "cp"),
         "--kek-file", str(tmp_path / "kek"), "--catalog", f"files:{tmp_path / 'catalog'}",
         "--ca-cert", str(tmp_path / "leaf.pem"), "--ca-key", str(tmp_path / "leaf.key"),
         "--xds-bind", "127.0.0.1:0", "--api-bind", "127.0.0.1:0", "--http-bind", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=30, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 2
    assert "is not a CA certificate" in out.stderr and "leaf.pem" in out.stderr
    assert not (tmp_path / "cp" / "ca" / "root.sealed").exists()
