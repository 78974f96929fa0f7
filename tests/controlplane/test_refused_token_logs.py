"""A refused Consul ACL token is not a transient error (issue 12, finding 15): the catalog and resource watches
log one ERROR naming the token's setting, never a WARNING "retrying", and retry slowly; a fixed token file is
picked up (one INFO line)."""

from __future__ import annotations

import logging
import time

from meshcore.catalog.consul import ConsulCatalogSource, ConsulSettings
from meshcore.controlplane.engine import MeshEngine
from meshcore.resources.consul_store import ConsulKVStore
from meshcore.xds.cache import SnapshotCache

WAIT = 30.0


def _wait(predicate, what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class _Counting:
    """Wraps a source or store and counts its reads."""

    def __init__(self, inner, method: str):
        self.inner, self.method, self.calls = inner, method, 0

    def __getattr__(self, name):
        attr = getattr(self.inner, name)
        if name != self.method:
            return attr

        def counted(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return counted


def test_a_refused_token_is_one_error_naming_the_setting_then_slow_retries(consul_acl, tmp_path, caplog):
    token_file = tmp_path / "token"
    token_file.write_text("not-a-real-token")
    settings = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                        "CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    source = _Counting(ConsulCatalogSource(settings), "poll")
    store = _Counting(ConsulKVStore(settings), "watch")
    engine = MeshEngine(source, store, SnapshotCache(), trust_domain="cluster.local")
    caplog.set_level(logging.DEBUG, logger="meshcore.controlplane")
    engine.start()
    try:
        _wait(lambda: source.calls >= 1 and store.calls >= 1 and engine.source_error and engine.store_error,
              "both watches to be refused")
        time.sleep(1.5)  # the old backoff (0.2 s doubling) would have retried several times by now
        assert source.calls == 1 and store.calls == 1, "a refused token is retried slowly"
        records = [r for r in caplog.records if r.name == "meshcore.controlplane"]
        assert not [r for r in records if r.levelno == logging.WARNING], "not logged as a transient error"
        errors = [r.getMessage() for r in records if r.levelno == logging.ERROR]
        assert len(errors) == 2, errors
        for message in errors:
            assert "refused the ACL token (HTTP 403, not a transient error: fix the token" in message
            assert f"CONSUL_HTTP_TOKEN_FILE ({token_file})" in message and "retries every 30s" in message
        assert any(m.startswith("catalog watch") for m in errors)
        assert any(m.startswith("resource store watch") for m in errors)
    finally:
        engine.stop()


def test_repeated_refusals_stay_one_error_and_a_fixed_token_is_one_info(consul_acl, tmp_path, caplog, monkeypatch):
    from meshcore.controlplane import engine as engine_module

    monkeypatch.setattr(engine_module, "REFUSED_RETRY_S", 0.1)
    token_file = tmp_path / "token"
    token_file.write_text("not-a-real-token")
    settings = ConsulSettings.from_env({"CONSUL_HTTP_ADDR": consul_acl.address,
                                        "CONSUL_HTTP_TOKEN_FILE": str(token_file)})
    source = _Counting(ConsulCatalogSource(settings), "poll")
    engine = MeshEngine(source, ConsulKVStore(settings), SnapshotCache(), trust_domain="cluster.local")
    caplog.set_level(logging.DEBUG, logger="meshcore.controlplane")
    engine.start()
    try:
        _wait(lambda: source.calls >= 4, "several refused reads")
        token_file.write_text(consul_acl.token)  # the operator fixes the token file: picked up without a restart
        _wait(lambda: "accepts the ACL token again" in caplog.text, "the fixed token to be accepted")
        _wait(lambda: not engine.source_error, "the catalog error to clear")
        records = [r for r in caplog.records if r.name == "meshcore.controlplane"]
        catalog_errors = [r for r in records if r.levelno == logging.ERROR and r.getMessage().startswith("catalog watch")]
        assert len(catalog_errors) == 1, "one ERROR however often it is retried"
        assert any(r.levelno == logging.INFO and r.getMessage() == "catalog watch: Consul accepts the ACL token again"
                   for r in records)
    finally:
        engine.stop()

