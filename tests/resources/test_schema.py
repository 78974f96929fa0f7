"""The validation toolkit: exact paths, every error at once, and the product brief's AuthorizationPolicy."""

from __future__ import annotations

import pytest

from meshcore.resources.schema import (
    INVALID,
    Context,
    DNSLabel,
    Duration,
    Enum,
    Int,
    LabelSelector,
    ListOf,
    MapOf,
    Obj,
    Path,
    Port,
    PortKey,
    Required,
    Str,
    StringMap,
)

# The AuthorizationPolicy of the product brief, declared with the toolkit (the kind itself comes later).
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE")
OPERATION = Obj({"methods": ListOf(Enum(*HTTP_METHODS)), "paths": ListOf(Str(min_len=1)), "ports": ListOf(Str())})
SOURCE = Obj({"principals": ListOf(Str(min_len=1)), "namespaces": ListOf(Str(min_len=1))})
RULE = Obj({"from": ListOf(Obj({"source": Required(SOURCE)})), "to": ListOf(Obj({"operation": Required(OPERATION)}))})
AUTHZ_SPEC = Obj({"selector": LabelSelector(), "action": Enum("ALLOW", "DENY"), "rules": ListOf(RULE)})

BRIEF_SPEC = {
    "selector": {"matchLabels": {"app": "frontend"}},
    "rules": [
        {
            "from": [{"source": {"principals": ["cluster.local/ns/default/sa/backend"]}}],
            "to": [{"operation": {"methods": ["GET", "POST"]}}],
        }
    ],
}


def run(schema, value, **ctx_kw):
    ctx = Context(**ctx_kw)
    out = schema.check(value, Path().field("spec"), ctx)
    return out, ctx.issues.items


def test_path_rendering():
    p = Path().field("spec").field("rules").index(0).field("to").index(0).field("operation").field("methods").index(2)
    assert str(p) == "spec.rules[0].to[0].operation.methods[2]"
    assert str(Path().field("spec").field("portLevelMtls").key("8080").field("mode")) == 'spec.portLevelMtls["8080"].mode'
    assert str(Path().field("metadata").field("labels").key("app.kubernetes.io/name")) == 'metadata.labels["app.kubernetes.io/name"]'
    assert str(Path().index(3)) == "[3]"


def test_brief_authorization_policy_is_expressible_and_valid():
    out, issues = run(AUTHZ_SPEC, BRIEF_SPEC)
    assert issues == []
    assert out == BRIEF_SPEC


def test_nested_errors_have_exact_paths_and_are_all_reported():
    spec = {
        "selector": {"matchLabels": {"app": 7}},
        "rules": [
            {
                "from": [{"source": {"principals": ["cluster.local/ns/default/sa/backend", ""]}}],
                "to": [{"operation": {"methods": ["GET", "POST", "FETCH"], "mehtods": ["GET"]}}],
            }
        ],
    }
    out, issues = run(AUTHZ_SPEC, spec)
    assert out is INVALID
    assert issues == [
        ('spec.selector.matchLabels["app"]', 'must be a string, got integer (quote it: "7")'),
        ("spec.rules[0].from[0].source.principals[1]", "must not be empty"),
        (
            "spec.rules[0].to[0].operation.methods[2]",
            'must be one of "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE", got "FETCH"',
        ),
        ("spec.rules[0].to[0].operation.mehtods", 'unknown field "mehtods"; did you mean "methods"?'),
    ]


def test_unknown_field_without_close_match_lists_known_fields():
    _, issues = run(Obj({"mode": Str()}), {"zzz": 1})
    assert issues == [("spec.zzz", 'unknown field "zzz"; known fields: mode')]


def test_required_missing_and_null_counts_as_absent():
    schema = Obj({"name": Required(Str()), "note": Str()})
    out, issues = run(schema, {"note": None})
    assert issues == [("spec.name", "required field is missing")]
    out, issues = run(schema, {"name": "x", "note": None})
    assert issues == [] and out == {"name": "x"}


def test_enum_suggests_the_intended_value():
    _, issues = run(Enum("STRICT", "PERMISSIVE"), "strict")
    assert issues == [("spec", 'must be one of "STRICT", "PERMISSIVE", got "strict"; did you mean "STRICT"?')]


@pytest.mark.parametrize("value", [True, 1.5, "80", 0, 65536, None])
def test_port_rejects_non_ports(value):
    out, issues = run(Port(), value)
    assert out is INVALID
    assert issues[0][1].startswith("must be an integer 1-65535")


def test_int_accepts_whole_floats_and_bounds():
    assert run(Int(0, 10), 3.0)[0] == 3
    assert run(Int(0, 10), 11)[1] == [("spec", "must be an integer 0-10 (got 11)")]


def test_map_keys_and_port_keys_are_normalized():
    out, issues = run(MapOf(Obj({"mode": Str()}), key=PortKey()), {8080: {"mode": "X"}, "9090": {"mode": "Y"}})
    assert issues == [] and out == {"8080": {"mode": "X"}, "9090": {"mode": "Y"}}
    _, issues = run(MapOf(Str(), key=PortKey()), {"http": "x", 70000: "y"})
    assert issues == [
        ('spec["http"]', 'key must be a port number 1-65535, got "http"'),
        ('spec["70000"]', "key must be a port number 1-65535, got 70000"),
    ]


def test_string_map_rejects_non_string_keys_and_values():
    _, issues = run(StringMap(), {1: "a", "b": ["x"]})
    assert issues == [('spec["1"]', "keys must be strings, got integer (quote the key)"), ('spec["b"]', "must be a string, got list")]


@pytest.mark.parametrize(
    "name, problem",
    [
        ("", "must not be empty"),
        ("a" * 64, "must be at most 63 characters (got 64)"),
        ("Reviews", "must contain only lowercase letters, digits and '-' (found 'R')"),
        ("my_app", "must contain only lowercase letters, digits and '-' (found '_')"),
        ("-app", "must start with a lowercase letter or digit"),
        ("app-", "must end with a lowercase letter or digit"),
    ],
)
def test_dns_label_says_which_rule_failed(name, problem):
    out, issues = run(DNSLabel(), name)
    assert out is INVALID
    assert issues[0][1].endswith(problem)


def test_dns_label_accepts_valid_names():
    for name in ("a", "reviews-v2", "0abc", "a" * 63):
        assert run(DNSLabel(), name) == (name, [])


def test_duration():
    for ok in ("10s", "1m30s", "250ms", "1.5h"):
        assert run(Duration(), ok)[1] == []
    assert run(Duration(), "10")[1] == [("spec", 'must be a duration such as "10s", "1m30s" or "250ms" (got "10")')]


def test_hcl_blocks_unwrap_only_when_asked():
    schema = Obj({"proxy": Obj({"port": Port()})})
    assert run(schema, {"proxy": [{"port": 80}]}, unwrap_blocks=True) == ({"proxy": {"port": 80}}, [])
    assert run(schema, {"proxy": [{"port": 80}]})[1] == [("spec.proxy", "must be a mapping, got list")]
    assert run(schema, {"proxy": [{"port": 80}, {"port": 81}]}, unwrap_blocks=True)[1] == [
        ("spec.proxy", "must be a single block, found 2 blocks")
    ]


def test_cross_field_rules_run_after_fields():
    def both_or_none(d, path, ctx):
        if ("a" in d) != ("b" in d):
            ctx.add(path, "a and b go together")

    schema = Obj({"a": Int(), "b": Int()}, rules=[both_or_none])
    assert run(schema, {"a": 1})[1] == [("spec", "a and b go together")]
    assert run(schema, {"a": 1, "b": 2}) == ({"a": 1, "b": 2}, [])


def test_loose_keys_match_consul_spellings():
    schema = Obj({"destination_name": Str(), "local_bind_port": Port()}, loose_keys=True)
    out, issues = run(schema, {"DestinationName": "db", "LocalBindPort": 5432})
    assert issues == [] and out == {"destination_name": "db", "local_bind_port": 5432}
    _, issues = run(schema, {"destination_name": "db", "DestinationName": "db2"})
    assert issues == [("spec.DestinationName", 'field given twice (also as "destination_name")')]


def test_list_unique():
    _, issues = run(ListOf(Str(), unique=True), ["a", "b", "a"])
    assert issues == [("spec[2]", "duplicate of item [0]")]
