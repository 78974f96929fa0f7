"""Resolver, splitter, router and defaults: the rules the goldens do not show on their own."""

from __future__ import annotations

from meshcore.consul_entries import compile_entries, entry_of
from meshcore.consul_entries._common import Report
from meshcore.consul_entries.traffic import filter_labels
from meshcore.resources.loader import load_documents

from ._data import OWN_VS


def _e(body):
    return entry_of(body, "test")


def test_filter_expressions():
    report = Report()
    e = _e({"Kind": "service-resolver", "Name": "x"})
    assert filter_labels(e, "F", 'Service.Meta.version == "v2" and "canary" in Service.Tags', report) == \
        {"version": "v2", "tag:canary": "true"}
    assert filter_labels(e, "F", 'Service.Tags contains "blue"', report) == {"tag:blue": "true"}
    assert filter_labels(e, "F", "Service.Meta.version != v1", report) is None
    assert [f.field for f in report.findings] == ["F"]


def test_weights_round_to_integers_summing_to_100():
    entries = [_e({"Kind": "service-resolver", "Name": "api", "Subsets": {
        "a": {"Filter": "Service.Meta.v == a"}, "b": {"Filter": "Service.Meta.v == b"},
        "c": {"Filter": "Service.Meta.v == c"}}}),
        _e({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 33.33, "ServiceSubset": "a"}, {"Weight": 33.33, "ServiceSubset": "b"},
            {"Weight": 33.34, "ServiceSubset": "c"}]})]
    result = compile_entries(entries)
    (vs,) = [r for r in result.resources if r.kind == "VirtualService"]
    weights = [d["weight"] for d in vs.spec["http"][-1]["route"]]
    assert sum(weights) == 100 and sorted(weights) == [33, 33, 34]
    assert any(f.severity == "note" and f.field == "Splits" for f in result.findings)


def test_unknown_subset_is_left_out_and_reported():
    entries = [_e({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v2"}]})]
    result = compile_entries(entries)
    assert result.resources == ()
    assert any(f.severity == "invalid" and f.entry == "service-splitter/api" for f in result.findings)


def test_meshcore_virtual_service_wins_over_router():
    own = load_documents(OWN_VS, "own.yaml")
    entries = [_e({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/x"}}, "Destination": {"Service": "other"}}]})]
    result = compile_entries(entries, existing=own)
    assert result.resources == ()
    assert any(f.severity == "overridden" and "VirtualService/default/api" in f.message for f in result.findings)


def test_unsupported_kinds_and_fields_are_reported():
    entries = [_e({"Kind": "ingress-gateway", "Name": "gw"}),
               _e({"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "1s",
                   "Redirect": {"Service": "api2", "Datacenter": "dc9"},
                   "Failover": {"v1": {"Service": "x"}}})]
    result = compile_entries(entries)
    fields = {(f.entry, f.field) for f in result.findings if f.severity == "unsupported"}
    assert ("ingress-gateway/gw", "") in fields
    assert ("service-resolver/api", "Redirect.Datacenter") in fields
    assert ("service-resolver/api", "Failover.v1") in fields
    (vs,) = [r for r in result.resources if r.kind == "VirtualService"]
    assert vs.spec["http"][-1]["route"] == [{"destination": {"host": "api2"}}]


def test_prefix_rewrite_needs_a_path_prefix_or_exact_match():
    result = compile_entries([_e({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathExact": "/old"}}, "Destination": {"PrefixRewrite": "/new"}},
        {"Match": {"HTTP": {"PathRegex": "/v[0-9]+/"}}, "Destination": {"PrefixRewrite": "/"}}]})])
    (vs,) = [r for r in result.resources if r.kind == "VirtualService"]
    assert vs.spec["http"][0]["rewrite"] == {"uri": "/new"}
    assert "rewrite" not in vs.spec["http"][1]
    assert [(f.field, f.severity) for f in result.findings] == [("Routes[1].Destination.PrefixRewrite", "unsupported")]
