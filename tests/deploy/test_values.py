"""meshctl install values: merge order, types, unknown keys with their paths, profiles, extra-vars mapping."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from meshcore.deploy import values as v
from meshcore.deploy.playbook import load_profiles
from meshcore.durations import parse_duration
from meshcore.errors import ValidationError

ROOT = Path(__file__).resolve().parents[2]
ANSIBLE = ROOT / "ansible"
PROFILES = load_profiles(ANSIBLE)


def resolve(*layers: tuple[str, dict]) -> v.Values:
    return v.resolve([v.Layer(src, data) for src, data in layers], PROFILES)


def errors_of(*layers: tuple[str, dict]) -> list[str]:
    with pytest.raises(ValidationError) as exc:
        resolve(*layers)
    return [str(e) for e in exc.value.errors]


# --- --set parsing ---------------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("security.defaultDeny=true", {"security": {"defaultDeny": True}}),
    ("resources.agent.tasksMax=640", {"resources": {"agent": {"tasksMax": 640}}}),
    ("tracing.sampling=0.5", {"tracing": {"sampling": 0.5}}),
    ("ca.leafTTL=24h", {"ca": {"leafTTL": "24h"}}),
    ("alerts.webhooks=[http://a:1/x, https://b/y]", {"alerts": {"webhooks": ["http://a:1/x", "https://b/y"]}}),
    ("tracing.otlp=", {"tracing": {"otlp": ""}}),
    ("accessLog.path=/var/log/a=b", {"accessLog": {"path": "/var/log/a=b"}}),  # only the first = splits
])
def test_parse_set_reads_yaml_typed_values(text, expected):
    assert v.parse_set(text) == expected


@pytest.mark.parametrize("text", ["security.defaultDeny", "=true", "a..b=1", ".a=1"])
def test_parse_set_rejects_malformed(text):
    with pytest.raises(ValidationError) as exc:
        v.parse_set(text)
    assert "KEY=VALUE" in str(exc.value)


# --- merging -----------------------------------------------------------------------------------------

def test_merge_order_profile_then_files_in_order_then_sets_in_order():
    got = resolve(
        ("a.yaml", {"ca": {"leafTTL": "12h"}, "agent": {"logLevel": "debug"}}),
        ("b.yaml", {"ca": {"leafTTL": "6h"}}),
        ("--set ca.leafTTL=3h", v.parse_set("ca.leafTTL=3h")),
        ("--set ca.leafTTL=2h", v.parse_set("ca.leafTTL=2h")),
    )
    assert got.values["ca.leafTTL"] == "2h" and got.origins["ca.leafTTL"] == "--set ca.leafTTL=2h"
    assert got.values["agent.logLevel"] == "debug" and got.origins["agent.logLevel"] == "a.yaml"
    assert got.values["mtls.mode"] == "STRICT" and got.origins["mtls.mode"] == "profile production"


def test_files_win_over_the_profile_and_set_wins_over_files():
    got = resolve(("f.yaml", {"mtls": {"mode": "PERMISSIVE"}}), ("--set", v.parse_set("mtls.mode=STRICT")))
    assert got.values["mtls.mode"] == "STRICT"
    got = resolve(("f.yaml", {"mtls": {"mode": "PERMISSIVE"}}))
    assert got.values["mtls.mode"] == "PERMISSIVE"


def test_profile_comes_from_the_last_layer_that_names_one_and_defaults_to_production():
    assert resolve().profile == "production"
    assert resolve(("f.yaml", {"profile": "demo"})).profile == "demo"
    assert resolve(("f.yaml", {"profile": "demo"}), ("--set", {"profile": "production"})).profile == "production"
    demo = resolve(("--set", v.parse_set("profile=demo")))
    assert demo.values["mtls.mode"] == "PERMISSIVE" and demo.origins["mtls.mode"] == "profile demo"


def test_null_unsets_a_key_or_a_whole_section():
    got = resolve(("f.yaml", {"ca": {"leafTTL": None}, "resources": None}))
    assert "ca.leafTTL" not in got.values and "ca.keyType" in got.values
    assert not [k for k in got.values if k.startswith("resources.")]
    assert "meshcore_control_plane_leaf_ttl" not in got.extra_vars()  # the inventory / role default applies


def test_values_are_typed_and_normalized():
    got = resolve(("--set", {"mtls": {"mode": "permissive"}, "ca": {"keyType": "EC-P384"},
                             "resources": {"agent": {"tasksMax": "700", "memoryMax": 2147483648}},
                             "alerts": {"webhooks": "http://hooks.example/a"}}))
    assert got.values["mtls.mode"] == "PERMISSIVE" and got.values["ca.keyType"] == "ec-p384"
    assert got.values["resources.agent.tasksMax"] == 700 and got.values["resources.agent.memoryMax"] == "2147483648"
    assert got.values["alerts.webhooks"] == ["http://hooks.example/a"]


def test_path_normalization_values_become_control_plane_variables():
    got = resolve(("--set", {"security": {"pathNormalization": "decode_and_merge_slashes", "allowPathParameters": True}}))
    ev = got.extra_vars()
    assert ev["meshcore_control_plane_path_normalization"] == "DECODE_AND_MERGE_SLASHES"
    assert ev["meshcore_control_plane_allow_path_parameters"] is True
    with pytest.raises(ValidationError):
        resolve(("--set", {"security": {"pathNormalization": "MERGE"}}))


# --- errors: every one, with source and key path ------------------------------------------------------

def test_unknown_keys_are_rejected_with_their_path_and_the_known_keys():
    errs = errors_of(("values.yaml", {"mtls": {"mod": "STRICT"}, "nope": 1}), ("--set x.y=1", {"x": {"y": 1}}))
    assert len(errs) == 3
    assert errs[0].startswith("values.yaml: mtls.mod: unknown key; did you mean 'mtls.mode'?")
    assert "values.yaml: nope: unknown key" in errs[1] and "--set x.y=1: x: unknown key" in errs[2]
    for e in errs:
        assert "known keys: profile, trustDomain, mtls.mode, security.defaultDeny" in e
        assert "resources.agent.memoryMax" in e


@pytest.mark.parametrize("layer, fragment", [
    ({"security": {"defaultDeny": "yes please"}}, "security.defaultDeny: expected true or false"),
    ({"mtls": {"mode": "DISABLE"}}, "mtls.mode: expected one of STRICT, PERMISSIVE"),
    ({"tracing": {"sampling": 101}}, "tracing.sampling: 101 is out of range 0..100"),
    ({"tracing": {"sampling": True}}, "tracing.sampling: expected a number"),
    ({"tracing": {"otlp": "collector"}}, "tracing.otlp: 'collector' is not valid (host:port"),
    ({"ca": {"leafTTL": "a day"}}, "ca.leafTTL: 'a day' is not a duration"),
    ({"ca": {"leafTTL": "0s"}}, "ca.leafTTL: '0s' must be longer than zero"),
    ({"ca": {"keyType": "dsa"}}, "ca.keyType: expected one of ec-p256, ec-p384, rsa-2048, rsa-3072"),
    ({"trustDomain": "Not A Domain"}, "trustDomain: 'Not A Domain' is not valid"),
    ({"trustDomain": ""}, "trustDomain: '' is not valid"),
    ({"accessLog": {"path": "relative/file"}}, "accessLog.path: 'relative/file' is not valid"),
    ({"controlPlane": {"catalog": "etcd"}}, "controlPlane.catalog: 'etcd' is not valid (consul or files:/DIR)"),
    ({"controlPlane": {"store": "dir:relative"}}, "controlPlane.store: 'dir:relative' is not valid"),
    ({"alerts": {"webhooks": ["ftp://x"]}}, "alerts.webhooks: item 0: 'ftp://x' is not valid"),
    ({"resources": {"agent": {"memoryMax": "lots"}}}, "resources.agent.memoryMax: expected a systemd size"),
    ({"resources": {"agent": {"tasksMax": -1}}}, "resources.agent.tasksMax: expected a positive integer"),
    ({"resources": {"agent": "big"}}, "resources.agent: expected a mapping"),
    ({"ca": {"leafTTL": {"hours": 1}}}, "ca.leafTTL: expected a duration"),
])
def test_wrong_types_name_the_key_and_what_is_accepted(layer, fragment):
    errs = errors_of(("f.yaml", layer))
    assert len(errs) == 1 and fragment in errs[0] and errs[0].startswith("f.yaml: "), errs


def test_every_problem_is_reported_at_once_and_a_bad_profile_stops_early():
    errs = errors_of(("f.yaml", {"mtls": {"mode": 1}, "ca": {"leafTTL": "x"}}), ("--set", {"bogus": 1}))
    assert len(errs) == 3
    errs = errors_of(("--set", {"profile": "staging"}))
    assert errs == ["values: profile: expected one of demo, production, got 'staging'"]


# --- profiles ----------------------------------------------------------------------------------------

def test_both_profiles_are_valid_and_complete_for_what_they_promise():
    assert set(PROFILES) == {"demo", "production"}
    prod = resolve(("--set", {"profile": "production"})).values
    assert prod["mtls.mode"] == "STRICT"
    assert prod["security.defaultDeny"] is False  # default-deny ready, off unless set
    assert prod["ca.leafTTL"] == "24h" and prod["ca.keyType"] == "ec-p256"
    assert prod["controlPlane.catalog"] == "consul" and prod["controlPlane.store"] == "consul"
    assert prod["accessLog.path"] == "stdout" and prod["accessLog.format"] == "json"
    for unit in ("controlPlane", "agent"):
        for limit in ("memoryMax", "memoryHigh", "tasksMax", "limitNOFILE"):
            assert f"resources.{unit}.{limit}" in prod
    demo = resolve(("--set", {"profile": "demo"})).values
    assert demo["mtls.mode"] == "PERMISSIVE" and demo["security.defaultDeny"] is False
    assert demo["controlPlane.store"].startswith("dir:/")
    assert parse_duration(demo["ca.leafTTL"]) < parse_duration(prod["ca.leafTTL"])


def test_profile_files_use_only_known_keys_and_name_themselves():
    for name in v.PROFILES:
        data = yaml.safe_load((ANSIBLE / "profiles" / f"{name}.yaml").read_text())
        assert data["profile"] == name
        _, _, errors = v.merge([v.Layer(name, data)])
        assert errors == []


# --- extra-vars --------------------------------------------------------------------------------------

def test_extra_vars_map_values_to_role_variables():
    got = resolve(("--set", {"security": {"defaultDeny": True}, "ca": {"keyType": "rsa-2048"},
                             "tracing": {"otlp": "otel.example:4317", "sampling": 5},
                             "alerts": {"webhooks": ["https://hooks.example/x"]},
                             "resources": {"agent": {"tasksMax": 640}}}))
    ev = got.extra_vars()
    assert ev["meshcore_mesh_policy_default_deny"] is True
    assert ev["meshcore_mesh_policy_mtls_mode"] == "STRICT"
    assert ev["meshcore_control_plane_key_type"] == ev["meshcore_agent_key_type"] == "rsa-2048"
    assert ev["meshcore_control_plane_tracing_otlp"] == "otel.example:4317"
    assert ev["meshcore_control_plane_tracing_sampling"] == 5
    assert ev["meshcore_control_plane_alert_webhooks"] == ["https://hooks.example/x"]
    assert ev["meshcore_agent_tasks_max"] == 640 and ev["meshcore_agent_memory_max"] == "1G"
    assert ev["meshcore_install_profile"] == "production"
    # no profile sets the trust domain: an inventory's per-datacenter trust domains stay as written
    assert "meshcore_control_plane_trust_domain" not in ev
    assert resolve(("--set", {"trustDomain": "dc2.example"})).extra_vars()[
        "meshcore_control_plane_trust_domain"] == "dc2.example"
    # nothing the values leave unset is passed (the inventory keeps it): no Consul address, no refresh interval
    assert "meshcore_agent_refresh_interval" not in ev and not any("consul" in k for k in ev)


def test_every_role_variable_exists_in_a_role_with_an_argument_spec():
    specs = {}
    for spec in (ANSIBLE / "roles").glob("*/meta/argument_specs.yml"):
        specs.update(yaml.safe_load(spec.read_text())["argument_specs"]["main"]["options"])
    for key in v.SCHEMA:
        for var in key.role_vars:
            if var == "meshcore_install_profile":
                continue
            assert var in specs, f"{key.path} -> {var}: no role declares it in meta/argument_specs.yml"


def test_nested_round_trips_through_a_values_file():
    got = resolve(("--set", v.parse_set("security.defaultDeny=true")))
    again = v.resolve([v.Layer("dump.yaml", yaml.safe_load(yaml.safe_dump(got.nested())))], PROFILES)
    assert again.values == got.values


def test_docs_hold_the_current_values_reference():
    docs = (ROOT / "docs" / "deploy.md").read_text()
    assert v.reference_table() in docs, "docs/deploy.md: paste meshcore.deploy.values.reference_table() again"
    for key in v.known_keys():
        assert re.search(rf"`{re.escape(key)}`", docs), key
