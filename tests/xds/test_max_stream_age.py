"""The ADS server's maximum stream age: gRPC's maximum connection age (jittered by gRPC), with a grace.
tests/agent/test_replica_failover.py checks with a real Envoy that it reconnects keeping its config."""

from __future__ import annotations

import pytest

from meshcore.errors import XdsError
from meshcore.xds.server import DEFAULT_MAX_STREAM_AGE_S, MAX_STREAM_AGE_GRACE_S, server_options


def test_the_default_closes_connections_after_thirty_minutes_with_a_grace():
    options = dict(server_options())
    assert DEFAULT_MAX_STREAM_AGE_S == 1800
    assert options["grpc.max_connection_age_ms"] == 1_800_000
    assert options["grpc.max_connection_age_grace_ms"] == int(MAX_STREAM_AGE_GRACE_S * 1000)
    assert options["grpc.so_reuseport"] == 0  # the other options stay


def test_zero_keeps_connections_and_a_negative_age_is_refused():
    assert "grpc.max_connection_age_ms" not in dict(server_options(0))
    assert dict(server_options(2.5))["grpc.max_connection_age_ms"] == 2500
    with pytest.raises(XdsError, match="max stream age -1s"):
        server_options(-1)


def test_the_control_plane_flag():
    from meshcore.controlplane.daemon import parse_args

    assert parse_args(["--max-stream-age", "0"]).max_stream_age == "0"
    assert parse_args([]).max_stream_age == "30m"
