"""service-defaults / proxy-defaults protocols: applied to the catalog's instances without meta protocol, and a
catalog poll that returns when the entries change them."""

from __future__ import annotations

import threading
import time

from meshcore.catalog.model import Catalog, CatalogUpdate, ServiceInstance
from meshcore.consul_entries import CatalogFacts, CompileOptions, compile_entries, entry_of
from meshcore.consul_entries.protocols import EntryProtocols, entry_protocols, with_protocols
from meshcore.resources.consul_entries import ProtocolDefaultsSource, _Versioned


def _inst(service, sid, **meta):
    return ServiceInstance(service=service, id=sid, node="n1", port=80, mesh_address="10.0.0.1", mesh_port=21000,
                           meta=tuple(sorted(meta.items())))


CATALOG = Catalog.of([], [_inst("api", "api-1"), _inst("api", "api-2", protocol="http"), _inst("db", "db-1")])


def _e(body):
    return entry_of(body, "test")


def test_entry_protocols_and_their_order():
    entries = [_e({"Kind": "service-defaults", "Name": "db", "Protocol": "TCP"}),
               _e({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "grpc"}}),
               _e({"Kind": "service-defaults", "Name": "x", "Protocol": "mongo"})]
    protocols = entry_protocols(entries)
    assert protocols == EntryProtocols((("db", "tcp"),), "grpc")
    out = with_protocols(CATALOG, protocols)
    assert {i.id: i.protocol for i in out.instances} == {"api-1": "grpc", "api-2": "http", "db-1": "tcp"}
    assert with_protocols(CATALOG, EntryProtocols()) is CATALOG


def test_compile_reports_an_instance_meta_that_wins_and_an_unknown_protocol():
    entries = [_e({"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"}),
               _e({"Kind": "service-defaults", "Name": "x", "Protocol": "mongo"})]
    for catalog in (CATALOG, with_protocols(CATALOG, entry_protocols(entries))):  # raw (meshctl) or as served
        result = compile_entries(entries, CompileOptions(catalog=CatalogFacts.of(catalog)))
        found = {(f.entry, f.severity) for f in result.findings}
        assert found == {("service-defaults/api", "overridden"), ("service-defaults/x", "unsupported")}, found


def test_tcp_from_service_defaults_makes_the_compiled_routes_tcp():
    entries = [_e({"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"}),
               _e({"Kind": "service-resolver", "Name": "db", "Redirect": {"Service": "api"}})]
    result = compile_entries(entries, CompileOptions(catalog=CatalogFacts.of(CATALOG)))
    (vs,) = [r for r in result.resources if r.kind == "VirtualService"]
    assert "tcp" in vs.spec and "http" not in vs.spec


class _Inner:
    """A catalog source whose blocking poll returns when ``push`` gives it a new catalog."""

    def __init__(self):
        self.cond = threading.Condition()
        self.index, self.catalog, self.closed = 1, CATALOG, False

    def push(self, catalog):
        with self.cond:
            self.index, self.catalog = self.index + 1, catalog
            self.cond.notify_all()

    def poll(self, index, wait):
        deadline = time.monotonic() + wait
        with self.cond:
            while index is not None and index == self.index and not self.closed and time.monotonic() < deadline:
                self.cond.wait(deadline - time.monotonic())
            return CatalogUpdate(self.catalog, self.index)

    def close(self):
        with self.cond:
            self.closed = True
            self.cond.notify_all()


def test_source_returns_when_the_entries_change_a_protocol_and_when_the_catalog_changes():
    inner, watcher = _Inner(), _Versioned()
    source = ProtocolDefaultsSource(inner, watcher)
    try:
        first = source.poll(None, 5)
        assert first.catalog is CATALOG  # no protocol entries: passed through
        threading.Timer(0.2, watcher.set, ("service-defaults", [
            _e({"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"})])).start()
        started = time.monotonic()
        second = source.poll(first.index, 30)
        assert time.monotonic() - started < 5 and second.index == first.index
        assert {i.id: i.protocol for i in second.catalog.instances}["db-1"] == "tcp"
        threading.Timer(0.2, inner.push, (Catalog.of([], [_inst("db", "db-1")]),)).start()
        third = source.poll(second.index, 30)  # the wrapped poll still pending from before answers it
        assert third.index == first.index + 1 and [i.protocol for i in third.catalog.instances] == ["tcp"]
    finally:
        source.close()
        watcher.close()
    assert inner.closed
