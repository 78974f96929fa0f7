"""The traffic workflows as pure edits: what split, route, switch and rollback produce, and what they keep."""

from __future__ import annotations

import pytest
import yaml

from meshcore.errors import ConfigError
from meshcore.resources.loader import load_documents, validate_set
from meshcore.traffic import workflows as wf


def _valid(plan: wf.Plan) -> None:
    """Whatever a workflow returns must load and pass the cross-resource checks."""
    docs = [d for d in (plan.destination_rule, plan.virtual_service) if d]
    resources = load_documents(yaml.safe_dump_all(docs), "plan.yaml")
    assert validate_set(resources) == []


def test_split_from_nothing_creates_both():
    plan = wf.split("reviews", {"v1": 90, "v2": 10}, None, None)
    _valid(plan)
    assert plan.dr_changed and plan.vs_changed
    assert plan.destination_rule["spec"] == {"host": "reviews", "subsets": [
        {"name": "v1", "labels": {"version": "v1"}}, {"name": "v2", "labels": {"version": "v2"}}]}
    assert plan.virtual_service["spec"]["http"] == [{"name": "default", "route": [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 90},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 10}]}]
    assert plan.summary == "reviews: 90% v1, 10% v2"
    assert [d["kind"] for d in plan.documents()] == ["DestinationRule", "VirtualService"]


def test_split_keeps_what_the_operator_wrote():
    dr = {"apiVersion": "networking.mesh.io/v1beta1", "kind": "DestinationRule",
          "metadata": {"name": "reviews-dr", "namespace": "default"},
          "spec": {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "RANDOM"}},
                   "subsets": [{"name": "v1", "labels": {"version": "v1", "tag:stable": "true"}}]}}
    vs = {"apiVersion": "networking.mesh.io/v1beta1", "kind": "VirtualService",
          "metadata": {"name": "reviews-vs", "namespace": "default"},
          "spec": {"hosts": ["reviews"], "http": [
              {"name": "api", "match": [{"uri": {"prefix": "/api"}}], "route": [{"destination": {"host": "reviews"}}]},
              {"name": "rest", "route": [{"destination": {"host": "reviews"}}], "timeout": "3s"}]}}
    plan = wf.split("reviews", {"v1": 50, "v3": 50}, dr, vs, label="version")
    _valid(plan)
    assert plan.destination_rule["metadata"]["name"] == "reviews-dr"
    assert plan.destination_rule["spec"]["trafficPolicy"] == {"loadBalancer": {"simple": "RANDOM"}}
    assert [s["name"] for s in plan.destination_rule["spec"]["subsets"]] == ["v1", "v3"]
    assert plan.notes and "keeps its labels" in plan.notes[0]
    rules = plan.virtual_service["spec"]["http"]
    assert rules[0]["name"] == "api" and rules[0]["route"] == [{"destination": {"host": "reviews"}}]
    assert rules[1]["timeout"] == "3s" and len(rules[1]["route"]) == 2
    assert dr["spec"]["subsets"] == [{"name": "v1", "labels": {"version": "v1", "tag:stable": "true"}}]  # input untouched


def test_split_again_with_same_weights_changes_nothing():
    first = wf.split("reviews", {"v1": 50, "v3": 50}, None, None)
    again = wf.split("reviews", {"v1": 50, "v3": 50}, first.destination_rule, first.virtual_service)
    assert not again.dr_changed and not again.vs_changed and again.documents() == []


def test_route_goes_before_the_default_and_leaves_it():
    split = wf.split("reviews", {"v1": 50, "v3": 50}, None, None)
    plan = wf.route("reviews", {"end-user": "jason"}, "v2", split.destination_rule, split.virtual_service)
    _valid(plan)
    rules = plan.virtual_service["spec"]["http"]
    assert rules[0] == {"name": "end-user-jason-to-v2", "match": [{"headers": {"end-user": {"exact": "jason"}}}],
                        "route": [{"destination": {"host": "reviews", "subset": "v2"}}]}
    assert rules[1] == split.virtual_service["spec"]["http"][0]
    assert "v2" in [s["name"] for s in plan.destination_rule["spec"]["subsets"]]
    # the same match again replaces the rule instead of adding one
    moved = wf.route("reviews", {"end-user": "jason"}, "v3", plan.destination_rule, plan.virtual_service)
    assert len(moved.virtual_service["spec"]["http"]) == 2
    assert moved.virtual_service["spec"]["http"][0]["route"][0]["destination"]["subset"] == "v3"
    removed = wf.route("reviews", {"end-user": "jason"}, None, moved.destination_rule, moved.virtual_service, remove=True)
    assert removed.virtual_service["spec"]["http"] == split.virtual_service["spec"]["http"]


def test_route_without_a_virtual_service_keeps_other_traffic_on_every_instance():
    plan = wf.route("reviews", {"end-user": "jason"}, "v2", None, None)
    assert plan.virtual_service["spec"]["http"][-1] == {"name": "default", "route": [{"destination": {"host": "reviews"}}]}
    with pytest.raises(ConfigError, match="nothing to remove"):
        wf.route("reviews", {"x": "y"}, None, None, None, remove=True)


def test_switch_records_previous_and_rollback_restores_it():
    split = wf.split("reviews", {"v1": 90, "v2": 10}, None, None)
    blue = wf.switch("reviews", "blue", split.destination_rule, split.virtual_service, label="color")
    _valid(blue)
    labels = blue.virtual_service["metadata"]["labels"]
    assert labels[wf.ACTIVE_LABEL] == "blue" and labels[wf.PREVIOUS_LABEL] == "v1=90,v2=10"
    assert blue.virtual_service["spec"]["http"][-1]["route"] == [{"destination": {"host": "reviews", "subset": "blue"}}]
    assert {"name": "blue", "labels": {"color": "blue"}} in blue.destination_rule["spec"]["subsets"]
    green = wf.switch("reviews", "green", blue.destination_rule, blue.virtual_service, label="color")
    assert green.virtual_service["metadata"]["labels"][wf.PREVIOUS_LABEL] == "blue"
    names = [s["name"] for s in green.destination_rule["spec"]["subsets"]]
    assert "blue" in names and "green" in names  # the previous color stays warm
    back = wf.rollback("reviews", green.destination_rule, green.virtual_service)
    _valid(back)
    assert back.virtual_service["spec"]["http"][-1]["route"] == [{"destination": {"host": "reviews", "subset": "blue"}}]
    assert back.virtual_service["metadata"]["labels"][wf.PREVIOUS_LABEL] == "green"
    back2 = wf.rollback("reviews", back.destination_rule, back.virtual_service)
    assert back2.virtual_service["spec"]["http"][-1]["route"][0]["destination"]["subset"] == "green"


def test_rollback_of_first_switch_restores_whole_service():
    first = wf.switch("reviews", "v2", None, None)
    assert first.virtual_service["metadata"]["labels"][wf.PREVIOUS_LABEL] == "*"
    back = wf.rollback("reviews", first.destination_rule, first.virtual_service)
    assert back.virtual_service["spec"]["http"][-1]["route"] == [{"destination": {"host": "reviews"}}]


def test_rollback_without_record_says_what_to_do():
    with pytest.raises(ConfigError, match=r"meshctl traffic switch reviews --to COLOR"):
        wf.rollback("reviews", None, None)


@pytest.mark.parametrize("args, message", [
    (["v1=90", "v2=20"], "must sum to 100, got 110"),
    (["v1=90", "v1=10"], "given twice"),
    (["v1=ninety"], "expected SUBSET=WEIGHT"),
    (["V1=100"], "is not a subset name"),
    ([], "at least one"),
])
def test_parse_weights_errors(args, message):
    with pytest.raises(ConfigError, match=message):
        wf.parse_weights(args)


def test_parse_weights_and_specs():
    assert wf.parse_weights(["v1=90", "v2=10"]) == {"v1": 90, "v2": 10}
    assert wf.parse_weights(["v2"]) == {"v2": 100}
    assert wf.parse_spec("v1=50,v3=50") == {"v1": 50, "v3": 50}
    assert wf.parse_spec("*") is None
    assert wf.parse_spec("green") == {"green": 100}
