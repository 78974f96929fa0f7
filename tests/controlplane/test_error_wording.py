"""Operator-facing errors of unexpected failures (issue 12, finding 15) say what failed and point to the log:
a 500 from the control plane's HTTP APIs carries a request id that its log line with the traceback carries
too; a proxy whose build hit a bug says so, and where the traceback is."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import pytest

from meshcore.controlplane._http import JsonServer, Router
from meshcore.resources.dir_store import DirectoryStore
from meshcore.snapshot import ProxyInfo

from .test_watchers import _run_engine, _wait


def test_a_500_names_the_request_and_a_request_id_found_in_the_log(caplog):
    router = Router()

    def broken(req):
        raise AttributeError("'int' object has no attribute 'encode'")

    router.add("GET", "/v1/broken", broken)
    server = JsonServer(router, "127.0.0.1:0", name="test-500").start()
    try:
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(f"http://{server.address}/v1/broken?token=x", timeout=10)
        err = info.value
        body = json.loads(err.read())
    finally:
        server.stop()
    assert err.code == 500
    request_id = body["request_id"]
    assert err.headers["X-Request-Id"] == request_id and len(request_id) == 12
    assert body["error"].startswith("the control plane failed to serve GET /v1/broken (a bug")
    assert f"request_id={request_id}" in body["error"]
    assert "internal error" not in body["error"] and "encode" not in body["error"], "no Python internals to clients"
    [line] = [r for r in caplog.records if r.levelno == logging.ERROR and f"request_id={request_id}" in r.getMessage()]
    assert "GET /v1/broken failed unexpectedly" in line.getMessage() and "AttributeError" in line.getMessage()
    assert "token=x" not in line.getMessage() and line.exc_info, "the path without its query; the traceback kept"


def test_a_proxy_whose_build_hit_a_bug_says_where_the_traceback_is(tmp_path, monkeypatch):
    engine, _, _ = _run_engine(DirectoryStore(tmp_path / "store"))
    try:
        import meshcore.controlplane.engine as engine_module

        def failing(snap, info, session=None):
            raise RuntimeError("generation bug")

        monkeypatch.setattr(engine_module, "generate_proxy", failing)  # the first step of a build
        engine.proxy_connected(ProxyInfo(node="vm4", secrets_dir="/var/lib/meshcore/secrets"))  # built now: fails
        _wait(lambda: "vm4" in engine.proxies and engine.proxies["vm4"].error, "the failed build")
        error = engine.proxies["vm4"].error
        assert error.startswith("building its config failed unexpectedly (RuntimeError: generation bug)")
        assert "control plane's log at DEBUG level (node=vm4)" in error and "internal error" not in error
    finally:
        engine.stop()
