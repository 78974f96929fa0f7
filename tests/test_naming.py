"""The one rule for node and service names (RFC 1123 labels) and the SPIFFE IDs built from them."""

from __future__ import annotations

import pytest

from meshcore import naming


@pytest.mark.parametrize("name", ["vm1", "a", "web-2", "0abc", "x" * 63])
def test_dns_labels_pass(name):
    assert naming.dns_label_problem(name) is None
    assert naming.check_node_name(name) == name
    assert naming.check_service_name(name) == name


@pytest.mark.parametrize("name,problem", [
    ("", "must not be empty"),
    ("x" * 64, "at most 63 characters"),
    ("x/../n2", "found '.', '/'"),
    ("*", "found '*'"),
    ("VM1", "found 'M', 'V'"),
    ("vm_1", "found '_'"),
    ("web.v2", "found '.'"),
    ("vm1\nforged", "found '\\n'"),
    ("-vm", "must start"),
    ("vm-", "must end"),
    ("vmé", "found 'é'"),
    (5, "must be a string, got int"),
])
def test_other_names_are_refused_saying_why(name, problem):
    assert problem in (naming.dns_label_problem(name) or "")
    with pytest.raises(ValueError, match="is not valid"):
        naming.check_node_name(name)


def test_node_spiffe_ids_are_only_built_and_parsed_for_valid_names():
    assert naming.node_spiffe_id("td", "vm1") == "spiffe://td/meshcore/node/vm1"
    with pytest.raises(ValueError, match="node name 'x/../n2' is not valid"):
        naming.node_spiffe_id("td", "x/../n2")
    assert naming.parse_node_spiffe_id("spiffe://td/meshcore/node/vm1") == ("td", "vm1")
    for bad in ("spiffe://td/meshcore/node/VM1", "spiffe://td/meshcore/node/*", "spiffe://td/meshcore/node/a%2Fb"):
        assert naming.parse_node_spiffe_id(bad) is None
