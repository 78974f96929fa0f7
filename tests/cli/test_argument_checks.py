"""Finding 17: every meshctl command parses and checks all its arguments before it sends anything.

Each bad argument is sent at a counting HTTP server standing in for the control plane: meshctl must exit
non-zero with a one-line error and the server must have seen no request at all."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from meshcore.cli.main import build_parser, main


class _Recorder(BaseHTTPRequestHandler):
    seen: list[str] = []

    def _answer(self) -> None:
        type(self).seen.append(f"{self.command} {self.path}")
        body = json.dumps({"error": "the test server answers nothing"}).encode()
        self.send_response(500)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = _answer  # noqa: N815

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    _Recorder.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def _run(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


@pytest.mark.parametrize("argv, says", [
    (["ca", "rotate", "--timeout", "abc", "--wait"], "argument --timeout: 'abc' is not a duration"),
    (["ca", "rotate", "--timeout", "-5m", "--wait"], "argument --timeout"),
    (["proxy-config", "n1", "--type", "bogus"], "argument --type: 'bogus' is not an xDS type"),
    (["authz", "check", "--to", "details", "--source-ip", "notanip"], "argument --source-ip: 'notanip' is not an IP"),
    (["authz", "check", "--to", "details", "--path", "admin"], "argument --path"),
    (["authz", "check", "--to", "details", "--method", "GE T"], "argument --method"),
    (["authz", "check", "--to", "details", "--header", "novalue"], "argument --header"),
    (["token", "create", "--node", "vm1", "--ttl", "soon"], "argument --ttl: 'soon' is not a duration"),
    (["operator", "cert", "issue", "alice", "--role", "admin", "--ttl", "400d"], "at most 365d"),
    (["canary", "start", "reviews", "--to", "v2", "--steps", "50,10"], "argument --steps"),
    (["canary", "start", "reviews", "--to", "v2", "--interval", "forever"], "argument --interval"),
    (["canary", "start", "reviews", "--to", "v2", "--max-error-rate", "lots"], "argument --max-error-rate"),
    (["canary", "start", "reviews", "--to", "v2", "--max-p99", "slow"], "argument --max-p99"),
    (["canary", "start", "reviews", "--to", "V 2"], "argument --to"),
    (["canary", "start", "reviews", "--to", "v2", "--min-requests", "-1"], "argument --min-requests"),
    (["traffic", "switch", "reviews", "--to", "Not A Subset"], "argument --to"),
    (["graph", "--window", "30d"], "argument --window"),
    (["alerts", "export", "--window", "fortnight"], "argument --window"),
    (["render", "--out", "unused", "--xds-address", "nohost"], "argument --xds-address"),
    (["render", "--out", "unused", "--admin", "=1.2.3.4:19000"], "argument --admin"),
    (["render", "--out", "unused", "--control-plane", "cp:8502"], "argument --control-plane"),
    (["render", "--out", "unused", "--timeout", "0"], "argument --timeout"),
    (["fleet", "logs", "vm1", "-n", "0"], "argument -n/--lines"),
    (["trust-bundle", "import", "-f", "-", "--trust-domain", "Spiffe://Other"], "argument --trust-domain"),
    (["trust-bundle", "remove", "not a domain"], "argument trust_domain"),
    (["render", "--out", "unused", "--trust-domain", "UPPER.example"], "argument --trust-domain"),
    (["get", "proxies", "--server", "not-a-url"], "argument --server"),
])
def test_a_bad_argument_is_refused_before_anything_is_sent(server, capsys, argv, says):
    rc = _run([*argv, *([] if "--server" in argv else ["--server", server])])
    err = capsys.readouterr().err
    assert rc != 0
    assert says in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line, no usage block, no traceback
    assert _Recorder.seen == []


def test_operator_cert_issue_with_a_bad_out_dir_records_no_certificate(server, capsys, tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    rc = _run(["operator", "cert", "issue", "alice", "--role", "admin", "--out-dir", str(not_a_dir / "sub"),
               "--server", server])
    err = capsys.readouterr().err
    assert rc == 1 and "is not a writable directory" in err and "nothing was requested" in err, err
    assert _Recorder.seen == []  # not even the trust bundle was asked for, let alone a certificate


def test_bug_report_with_an_unwritable_out_fails_before_any_host_is_reached(capsys, tmp_path):
    inventory = tmp_path / "hosts.ini"
    inventory.write_text("[meshcore_vms]\nvm1 ansible_host=192.0.2.1\n")
    rc = _run(["bug-report", "-i", str(inventory), "--out", str(tmp_path / "missing" / "r.tar.gz")])
    err = capsys.readouterr().err
    assert rc == 1 and "is not a writable directory" in err and "==>" not in err, err


def test_good_arguments_parse_to_their_values():
    def parse(*argv):
        return build_parser(list(argv)).parse_args(list(argv))

    assert parse("ca", "rotate", "--timeout", "10m", "--wait").timeout == 600.0
    assert parse("ca", "rotate").timeout is None
    assert parse("proxy-config", "n1", "--type", "Listeners", "--type", "cds").type == ["listener", "cluster"]
    assert parse("authz", "check", "--to", "d", "--source-ip", "[fd00::7]").source_ip == "fd00::7"
    assert parse("authz", "check", "--to", "d", "--method", "post").method == "POST"
    assert parse("token", "create", "--node", "vm1", "--ttl", "2h").ttl == "2h"
    assert parse("graph", "--window", "500ms").window == 0.5
    assert parse("canary", "start", "reviews", "--to", "v2", "--max-p99", "1.5s").max_p99 == "1.5s"
