"""The agent's Consul registration with a refused ACL token (issue 12, finding 15): one ERROR saying it is not
transient and which token, never a WARNING per retry."""

from __future__ import annotations

import logging

from meshcore.agent._consul import ConsulSync, consul_syncer


def test_the_agents_refused_registration_token_is_one_error(consul_acl, tmp_path, caplog):
    services = tmp_path / "services"
    services.mkdir()
    (services / "web.json").write_text('{"service": {"name": "web", "port": 8080}}')
    env = {"CONSUL_HTTP_ADDR": consul_acl.address, "CONSUL_HTTP_TOKEN": "wrong"}
    sync = ConsulSync(services, "node1", syncer_factory=lambda: consul_syncer(env))
    caplog.set_level(logging.DEBUG, logger="meshcore.agent")
    assert not sync.sync_now() and not sync.sync_now()
    records = [r for r in caplog.records if "consul registration" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.ERROR], "one ERROR, not a WARNING per retry"
    assert "not a transient error" in records[0].getMessage() and "CONSUL_HTTP_TOKEN" in records[0].getMessage()
