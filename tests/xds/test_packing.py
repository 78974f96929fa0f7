"""The vocabulary's guarantee: every nested ``Any`` in generated output is packed deterministically, once.

Checked on every golden case (the real path: file catalog, resource loader, composer) plus telemetry on:
each ``Any``'s bytes are exactly its message's deterministic serialization, all the way down, so one
``SerializeToString(deterministic=True)`` of a resource is its canonical form.
"""

from __future__ import annotations

import pytest
from google.protobuf import any_pb2, symbol_database
from google.protobuf.message import Message

from meshcore.compose import build_proxy
from meshcore.snapshot import MeshSettings, MeshSnapshot, ProxyInfo, TelemetrySettings

from .test_build_golden import CASES, SETTINGS, _snapshot

_DB = symbol_database.Default()


def _anys(message: Message, where: str = ""):
    """Every ``Any`` inside ``message`` (recursing into their payloads), with its field path."""
    for fd, value in message.ListFields():
        if fd.type != fd.TYPE_MESSAGE:
            continue
        if fd.message_type.GetOptions().map_entry:
            items = [(f"{where}.{fd.name}[{k!r}]", v) for k, v in value.items() if isinstance(v, Message)]
        elif fd.is_repeated:
            items = [(f"{where}.{fd.name}[{i}]", v) for i, v in enumerate(value)]
        else:
            items = [(f"{where}.{fd.name}", value)]
        for path, item in items:
            if isinstance(item, any_pb2.Any):
                inner = _DB.GetSymbol(item.type_url.rsplit("/", 1)[-1])()
                assert item.Unpack(inner), path
                yield path, item, inner
                yield from _anys(inner, path)
            else:
                yield from _anys(item, path)


def _check(built: dict) -> int:
    count = 0
    for type_url, resources in built.items():
        for r in resources:
            for path, packed, inner in _anys(r):
                assert packed.value == inner.SerializeToString(deterministic=True), f"{type_url} {r.name}{path}"
                count += 1
    return count


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_nested_any_is_deterministic(case):
    text, node = CASES[case]
    assert _check(build_proxy(_snapshot(text, SETTINGS.get(case)), ProxyInfo(node=node, secrets_dir="/s"))) > 0


def test_with_telemetry_on():
    base = _snapshot()
    settings = MeshSettings(telemetry=TelemetrySettings(tracing_otlp="127.0.0.1:4317", access_log="/var/log/{node}.log"))
    snap = MeshSnapshot.build(base.catalog, base.resources, base.trust_domain, settings)
    assert _check(build_proxy(snap, ProxyInfo(node="vm1", secrets_dir="/s"))) > 0


def test_listeners_come_out_finished():
    from meshcore.xds.generate import LISTENER
    from envoy.config.listener.v3 import listener_pb2

    built = build_proxy(_snapshot(), ProxyInfo(node="vm1", secrets_dir="/s"))
    assert built[LISTENER] and all(isinstance(l, listener_pb2.Listener) for l in built[LISTENER])
