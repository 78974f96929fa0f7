"""The bookinfo app's failure switch (``BOOKINFO_FAIL=service:version``) used by the canary e2e test."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parents[2] / "examples" / "bookinfo" / "app.py"


@pytest.fixture(scope="module")
def app():
    spec = importlib.util.spec_from_file_location("bookinfo_app_under_test", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def _handle(app, version: str, path: str):
    args = app.build_parser().parse_args(["--service", "reviews", "--version", version, "--listen", "127.0.0.1:0",
                                          "--upstream", "ratings=http://127.0.0.1:9"])
    config = app.config_from_args(args)
    fetch = lambda url, headers: app.UpstreamResult({"ratings": {"Reviewer1": 5}}, 200)  # noqa: E731
    return config, app.App(config, fetch=fetch).handle(app.Request("GET", path, {}, {}))


def test_named_version_answers_500_but_stays_healthy(app, monkeypatch):
    monkeypatch.setenv("BOOKINFO_FAIL", "ratings:v1, reviews:v3")
    config, resp = _handle(app, "v3", "/reviews/0")
    assert config.failing and resp.status == 500
    assert json.loads(resp.body)["version"] == "v3"
    assert _handle(app, "v3", "/health")[1].status == 200
    assert _handle(app, "v2", "/reviews/0")[1].status == 200  # only the named version fails


def test_without_the_switch_nothing_fails(app, monkeypatch):
    monkeypatch.delenv("BOOKINFO_FAIL", raising=False)
    config, resp = _handle(app, "v3", "/reviews/0")
    assert not config.failing and resp.status == 200
