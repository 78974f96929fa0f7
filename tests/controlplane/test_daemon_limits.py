"""The control plane's fleet-limit flags: parsed, checked, handed to the ADS server and the agent API."""

from __future__ import annotations

import pytest

from meshcore.controlplane.daemon import Settings, _check_limits, parse_args
from meshcore.errors import ConfigError
from meshcore.xds.server import DEFAULT_FIRST_REQUEST_TIMEOUT_S, DEFAULT_MAX_STREAMS_PER_IDENTITY


def test_defaults_are_the_servers_own(tmp_path):
    args = parse_args([])
    assert int(args.xds_max_streams_per_identity) == DEFAULT_MAX_STREAMS_PER_IDENTITY
    assert int(args.xds_max_streams) == 0 and args.xds_first_request_timeout == f"{DEFAULT_FIRST_REQUEST_TIMEOUT_S:g}s"


def test_flags_and_environment(monkeypatch):
    args = parse_args(["--xds-max-streams-per-identity", "2", "--xds-max-streams", "600",
                       "--xds-first-request-timeout", "5s"])
    assert (args.xds_max_streams_per_identity, args.xds_max_streams, args.xds_first_request_timeout) == (2, 600, "5s")
    monkeypatch.setenv("MESHCORE_AGENT_MAX_WAITING", "64")
    monkeypatch.setenv("MESHCORE_XDS_MAX_STREAMS", "300")
    args = parse_args([])
    assert (args.agent_max_waiting, args.xds_max_streams) == (64, 300)


@pytest.mark.parametrize("field, value, flag", [
    ("xds_max_streams_per_identity", 0, "--xds-max-streams-per-identity"),
    ("xds_max_streams", -1, "--xds-max-streams"),
    ("xds_first_request_timeout", 0.0, "--xds-first-request-timeout"),
    ("agent_max_waiting", -1, "--agent-max-waiting"),
    ("catalog_hold", -1.0, "--catalog-hold"),
    ("catalog_shrink_threshold", 0.0, "--catalog-shrink-threshold"),
    ("catalog_shrink_threshold", 1.5, "--catalog-shrink-threshold"),
])
def test_bad_limits_are_refused_naming_the_flag(tmp_path, field, value, flag):
    with pytest.raises(ConfigError, match=flag):
        _check_limits(Settings(state_dir=tmp_path, **{field: value}))


def test_catalog_hold_flags_reach_the_consul_source(monkeypatch, tmp_path):
    from meshcore.controlplane.daemon import open_catalog

    args = parse_args(["--catalog-hold", "90s", "--catalog-shrink-threshold", "0.3"])
    assert (args.catalog_hold, args.catalog_shrink_threshold) == ("90s", 0.3)
    monkeypatch.setenv("MESHCORE_CATALOG_HOLD", "0s")
    assert parse_args([]).catalog_hold == "0s"
    source = open_catalog("consul", 90.0, 0.3)
    assert (source._hold.hold_s, source._hold.shrink_threshold) == (90.0, 0.3)
    assert source._hold.memory is None, "no state directory given: no memory across restarts"
    source.close()
    source = open_catalog("consul", 90.0, 0.3, tmp_path)  # the control plane passes its state directory
    assert source._hold.memory.path == tmp_path / "catalog-hold.json"
    source.close()
