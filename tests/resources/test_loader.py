"""Loading resources: every problem of every file and document reported at once, with exact paths."""

from __future__ import annotations

import io
import json
import textwrap

import pytest

from meshcore.errors import ValidationError
from meshcore.resources import KINDS, Resource, get_kind, load_documents, load_files
from meshcore.errors import ConfigError

PA = "apiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"


def errors_of(fn, *args):
    with pytest.raises(ValidationError) as exc:
        fn(*args)
    return [(e.source, e.document, e.path, e.message) for e in exc.value.errors]


def test_valid_document_is_normalized():
    text = PA + textwrap.dedent(
        """\
        metadata:
          name: reviews-mtls
          labels: {team: b, owner: a}
        spec:
          selector: {matchLabels: {app: reviews}}
          mtls: {mode: PERMISSIVE}
          portLevelMtls:
            9080: {mode: DISABLE}
        """
    )
    [res] = load_documents(text, "pa.yaml")
    assert res == Resource(
        api_version="security.mesh.io/v1beta1",
        kind="PeerAuthentication",
        name="reviews-mtls",
        namespace="default",
        spec={
            "selector": {"matchLabels": {"app": "reviews"}},
            "mtls": {"mode": "PERMISSIVE"},
            "portLevelMtls": {"9080": {"mode": "DISABLE"}},
        },
        labels=(("owner", "a"), ("team", "b")),
    )
    # canonical JSON round trip is what the stores persist
    assert json.loads(res.canonical_json())["spec"]["portLevelMtls"] == {"9080": {"mode": "DISABLE"}}


def test_missing_spec_is_an_empty_spec():
    [res] = load_documents(PA + "metadata: {name: strict, namespace: meshcore-system}\n", "x.yaml")
    assert res.spec == {} and res.namespace == "meshcore-system"


def test_nested_map_paths():
    text = PA + textwrap.dedent(
        """\
        metadata: {name: a}
        spec:
          selector: {matchLabels: {app: 3}}
          portLevelMtls:
            "8080": {mode: OFF}
            "9090": {mdoe: STRICT}
        """
    )
    assert errors_of(load_documents, text, "a.yaml") == [
        ("a.yaml", 0, 'spec.selector.matchLabels["app"]', 'must be a string, got integer (quote it: "3")'),
        # YAML 1.1 reads a bare OFF as false: the message names the type the operator actually wrote
        ("a.yaml", 0, 'spec.portLevelMtls["8080"].mode', 'must be one of "STRICT", "PERMISSIVE", "DISABLE", "UNSET", got boolean'),
        ("a.yaml", 0, 'spec.portLevelMtls["9090"].mdoe', 'unknown field "mdoe"; did you mean "mode"?'),
    ]


def test_every_error_across_two_files_and_two_documents(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text(
        PA
        + "metadata: {name: ok-one}\nspec: {mtls: {mode: STRICT}}\n---\n"
        + PA
        + "metadata: {name: Bad_Name}\nspec: {mtls: {mode: strict}}\n"
    )
    b = tmp_path / "b.yaml"
    b.write_text(
        "apiVersion: security.mesh.io/v1\nkind: PeerAuthentication\nmetadata: {name: b1, namespce: x}\n---\n"
        "apiVersion: security.mesh.io/v1beta1\nkind: AuthPolicy\nmetadata: {name: b2}\n"
    )
    errs = errors_of(load_files, [a, b])
    assert [(s.rsplit("/", 1)[-1], d, p) for s, d, p, _ in errs] == [
        ("a.yaml", 1, "metadata.name"),
        ("a.yaml", 1, "spec.mtls.mode"),
        ("b.yaml", 0, "apiVersion"),
        ("b.yaml", 0, "metadata.namespce"),
        ("b.yaml", 1, "kind"),
    ]
    msgs = {p: m for _, _, p, m in errs}
    assert msgs["metadata.name"] == "\"Bad_Name\" is not a valid name: must contain only lowercase letters, digits and '-' (found 'B', 'N', '_')"
    assert msgs["apiVersion"] == ('must be "security.mesh.io/v1beta1" (or Istio\'s security.istio.io/v1, security.istio.io/v1beta1) '
                                  'for kind PeerAuthentication, got "security.mesh.io/v1"')
    assert msgs["metadata.namespce"] == 'unknown field "namespce"; did you mean "namespace"?'
    assert msgs["kind"] == 'unknown kind "AuthPolicy" (known kinds: PeerAuthentication, AuthorizationPolicy, DestinationRule, VirtualService, ServiceEntry, Sidecar, RateLimit, RequestAuthentication, Gateway, AlertRule)'
    # the ValidationError message shows file, 1-based document number and path
    with pytest.raises(ValidationError) as exc:
        load_files([a, b])
    assert f"{a} (document 2): spec.mtls.mode: " in str(exc.value)


def test_yaml_syntax_error_reports_line_and_column():
    text = PA + "metadata: {name: ok}\n---\n" + PA + "metadata:\n  name: a: b\n"
    errs = errors_of(load_documents, text, "s.yaml")
    assert len(errs) == 1
    source, document, path, message = errs[0]
    assert (source, document, path) == ("s.yaml", 1, "")
    assert message == "YAML syntax error at line 8, column 10: mapping values are not allowed here"


def test_duplicate_yaml_key_is_reported():
    errs = errors_of(load_documents, PA + "metadata: {name: a}\nspec: {}\nspec: {mtls: {mode: DISABLE}}\n", "d.yaml")
    assert len(errs) == 1 and "found duplicate key 'spec' (first given at line 4)" in errs[0][3]
    assert errs[0][3].startswith("YAML error at line 5, column 1")


def test_duplicate_resources_name_both_documents(tmp_path):
    (tmp_path / "1.yaml").write_text(PA + "metadata: {name: same}\n")
    (tmp_path / "2.yaml").write_text(PA + "metadata: {name: other}\n---\n" + PA + "metadata: {name: same, namespace: default}\n")
    errs = errors_of(load_files, [tmp_path])
    assert errs == [
        (
            str(tmp_path / "2.yaml"),
            1,
            "metadata.name",
            f"duplicate PeerAuthentication default/same: also defined in {tmp_path / '1.yaml'} (document 1); "
            "each resource may appear once per apply",
        )
    ]
    # same name in another namespace is a different resource
    (tmp_path / "2.yaml").write_text(PA + "metadata: {name: same, namespace: other}\n")
    assert len(load_files([tmp_path])) == 2


def test_directory_is_expanded_sorted_and_filtered(tmp_path):
    (tmp_path / "b.yml").write_text(PA + "metadata: {name: b}\n")
    (tmp_path / "a.json").write_text(json.dumps([
        {"apiVersion": "security.mesh.io/v1beta1", "kind": "PeerAuthentication", "metadata": {"name": "a1"}},
        {"apiVersion": "security.mesh.io/v1beta1", "kind": "PeerAuthentication", "metadata": {"name": "a2"}},
    ]))
    (tmp_path / "c.yaml").write_text(PA + "metadata: {name: c}\n")
    (tmp_path / "notes.txt").write_text("not yaml: [")
    assert [r.name for r in load_files([tmp_path])] == ["a1", "a2", "b", "c"]


def test_json_syntax_error(tmp_path):
    f = tmp_path / "x.json"
    f.write_text('{"apiVersion": "security.mesh.io/v1beta1",\n "kind": }')
    assert errors_of(load_files, [f]) == [(str(f), None, "", "JSON syntax error at line 2, column 10: Expecting value")]


def test_missing_file_is_collected_with_other_errors(tmp_path):
    good = tmp_path / "g.yaml"
    good.write_text(PA + "metadata: {name: UPPER}\n")
    errs = errors_of(load_files, [tmp_path / "nope.yaml", good])
    assert [(p, m) for _, _, p, m in errs][0] == ("", "no such file or directory")
    assert len(errs) == 2


def test_stdin(monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO(PA + "metadata: {name: from-stdin}\n"))
    [res] = load_files(["-"])
    assert res.name == "from-stdin"
    monkeypatch.setattr("sys.stdin", io.StringIO(PA + "metadata: {}\n"))
    assert errors_of(load_files, ["-"]) == [("<stdin>", 0, "metadata.name", "required field is missing")]


def test_top_level_shape_errors():
    errs = errors_of(load_documents, "- a\n- b\n---\n" + PA + "metadata: {name: x}\nsepc: {}\n", "t.yaml")
    assert errs == [
        ("t.yaml", 0, "", "a resource must be a mapping with apiVersion, kind, metadata and spec, got list"),
        ("t.yaml", 1, "sepc", 'unknown field "sepc"; did you mean "spec"?'),
    ]


def test_missing_kind_and_api_version_list_known_kinds():
    errs = errors_of(load_documents, "metadata: {name: x}\n", "k.yaml")
    assert errs == [
        ("k.yaml", 0, "kind", "required field is missing; known kinds: PeerAuthentication, AuthorizationPolicy, DestinationRule, VirtualService, ServiceEntry, Sidecar, RateLimit, RequestAuthentication, Gateway, AlertRule"),
        ("k.yaml", 0, "apiVersion", "required field is missing"),
    ]


def test_port_level_needs_selector():
    errs = errors_of(load_documents, PA + "metadata: {name: x}\nspec: {portLevelMtls: {80: {mode: DISABLE}}}\n", "p.yaml")
    assert errs == [
        ("p.yaml", 0, "spec.portLevelMtls", "requires spec.selector.matchLabels (port-level settings apply to selected workloads only)")
    ]


def test_registry():
    assert list(KINDS) == ["PeerAuthentication", "AuthorizationPolicy", "DestinationRule", "VirtualService", "ServiceEntry", "Sidecar", "RateLimit", "RequestAuthentication", "Gateway", "AlertRule"]
    assert get_kind("PeerAuthentication").api_version == "security.mesh.io/v1beta1"
    with pytest.raises(ConfigError, match="known kinds: PeerAuthentication"):
        get_kind("Nope")


# --- hostile documents: aliases, anchors, depth (finding: 10^6 paths from 2.4 KB, 2,000-line tracebacks) ---

_HEAD = "apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata: {name: x}\n"


def _laughs(levels: int = 7) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return _HEAD + "\n".join(lines) + f"\nspec: {{rules: [{{from: *a{levels - 1}}}]}}\n"


def _one_error(text: str, source: str) -> str:
    with pytest.raises(ValidationError) as info:
        load_documents(text, source)
    (error,) = info.value.errors
    return str(error)


def test_aliases_and_anchors_are_refused_not_expanded():
    assert "found anchor &a0; meshcore does not accept YAML anchors" in _one_error(_laughs(), "laughs.yaml")
    assert "line 4, column 5" in _one_error(_laughs(), "laughs.yaml")
    merge = _HEAD + "spec:\n  <<: *base\n"
    assert "found alias *base" in _one_error(merge, "merge.yaml")


@pytest.mark.parametrize("text", [
    _HEAD + "spec: " + "[" * 100_000,
    _HEAD + "spec:\n" + "".join("  " * i + f"k{i}:\n" for i in range(1, 200)),
])
def test_deep_yaml_is_refused_with_a_line(text):
    message = _one_error(text, "deep.yaml")
    assert "deep.yaml (document 1): YAML error at line" in message
    assert "nests deeper than 64 levels" in message


@pytest.mark.parametrize("text", ["[" * 100_000, '{"a":' * 100 + "1" + "}" * 100, '{"a": Infinity}'])
def test_deep_or_odd_json_is_refused(text):
    message = _one_error(text, "deep.json")
    assert message.startswith("deep.json: JSON error: ")


def test_meshctl_validate_says_it_in_one_line_without_a_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "deep.yaml").write_text(_HEAD + "spec: " + "[" * 5000 + "\n")
    (tmp_path / "laughs.yaml").write_text(_laughs())
    for name in ("deep.yaml", "laughs.yaml"):
        out = subprocess.run([sys.executable, "-m", "meshcore.cli.main", "validate", "-f", str(tmp_path / name)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0
        assert "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.strip().startswith("- ")]
        assert len(errors) == 1 and name in errors[0], out.stderr
