"""meshcore._addresses: the one is_ip the generation path, the ServiceEntry schema and the agent share."""

from __future__ import annotations

import pytest

from meshcore import _addresses
from meshcore._addresses import is_ip


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", True), ("10.0.2.5", True), ("::1", True), ("fe80::1", True), ("2001:db8::7", True),
    ("[::1]", False), ("localhost", False), ("cp.example", False), ("10.0.2", False), ("", False),
    ("10.0.0.1:8500", False), ("unix:///run/x.sock", False),
])
def test_is_ip(host, expected):
    assert is_ip(host) is expected


def test_every_reader_uses_the_one_helper():
    from meshcore.agent import _xds_endpoints, bootstrap
    from meshcore.policies.service_entry import schema
    from meshcore.xds.generate import vocab

    for module in (vocab, schema, bootstrap, _xds_endpoints):
        assert module.is_ip is _addresses.is_ip, module.__name__
