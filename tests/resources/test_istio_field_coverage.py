"""Field coverage against Istio's published schema (issue 17 item 1).

``tests/resources/data/istio-fields.yaml`` lists every field of Istio's VirtualService, DestinationRule,
AuthorizationPolicy and PeerAuthentication (derived from Istio's CRDs by ``tests/resources/_istio_fields.py``; the
source is named in its header) with what meshcore does: supported, refused (with the reason validation gives) or
missing. This test keeps the list true: each status is what meshcore's schema does now, every refused field is
refused with its reason when a document uses it, and every supported field appears in a golden case (so it
reaches the generated Envoy config under review).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from meshcore.errors import ValidationError
from meshcore.resources import load_documents
from meshcore.resources.registry import KINDS
from tests.resources._istio_fields import DATA, KIND_NAMES, derive, status_of

ROOT = Path(__file__).resolve().parents[2]
CRDS = Path(os.environ.get("MESHCORE_ISTIO_CRDS", "/work/shared/reference/istio-crds.yaml"))
FIELDS: dict[str, dict] = yaml.safe_load(DATA.read_text())


def _status(value) -> tuple[str, str]:
    return next(iter(value.items())) if isinstance(value, dict) else (value, "")


def test_the_list_covers_the_kinds():
    assert list(FIELDS) == list(KIND_NAMES)
    assert all(FIELDS[k] for k in KIND_NAMES)


@pytest.mark.skipif(not CRDS.is_file(), reason=f"Istio's CRDs not at {CRDS} (set MESHCORE_ISTIO_CRDS)")
def test_the_api_versions_are_derived_from_istios_crds():
    from tests.resources._istio_fields import API_VERSIONS, derive_api_versions

    assert yaml.safe_load(API_VERSIONS.read_text()) == derive_api_versions(CRDS.read_text())


@pytest.mark.skipif(not CRDS.is_file(), reason=f"Istio's CRDs not at {CRDS} (set MESHCORE_ISTIO_CRDS)")
def test_the_list_is_derived_from_istios_schema():
    assert {k: list(v) for k, v in FIELDS.items()} == derive(CRDS.read_text()), \
        "re-derive: python -m tests.resources._istio_fields CRDS.yaml, and review the diff"


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_each_status_is_what_meshcore_does(kind):
    wrong = {f: (_status(v), status_of(kind, f)) for f, v in FIELDS[kind].items() if _status(v) != status_of(kind, f)}
    assert not wrong, "istio-fields.yaml is stale: re-derive it (python -m tests.resources._istio_fields CRDS.yaml)"


def _document(kind: str, field: str) -> dict:
    """A document that sets ``field`` (to a placeholder) under an otherwise minimal valid spec of ``kind``."""
    base = {"VirtualService": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}]}]},
            "DestinationRule": {"host": "reviews"}, "AuthorizationPolicy": {}, "PeerAuthentication": {},
            "RequestAuthentication": {},
            "Gateway": {"servers": [{"port": {"number": 80, "protocol": "HTTP"}, "hosts": ["*"]}]},
            "ServiceEntry": {"hosts": ["api.example.com"], "resolution": "DNS",
                             "ports": [{"number": 80, "name": "http", "protocol": "HTTP"}]},
            "Sidecar": {}}[kind]
    spec: dict = yaml.safe_load(yaml.safe_dump(base))
    node = spec
    parts = field.split(".")[1:]
    for part in parts[:-1]:
        name, is_list = part.rstrip("[]{}"), part.endswith("[]")
        if is_list:
            existing = node.get(name)
            node[name] = existing or [{}]
            node = node[name][0]
        else:
            node = node.setdefault(name, {})
    node[parts[-1].rstrip("[]{}")] = "x"
    return {"apiVersion": KINDS[kind].api_version, "kind": kind, "metadata": {"name": "probe"}, "spec": spec}


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_refused_field_is_refused_with_its_reason(kind):
    for field, value in FIELDS[kind].items():
        status, reason = _status(value)
        if status != "refused" or "{}" in field:
            continue
        with pytest.raises(ValidationError) as info:
            load_documents(yaml.safe_dump(_document(kind, field)), "probe.yaml")
        path = re.sub(r"\[\]", "[0]", field)
        refusals = [e for e in info.value.errors if e.message.endswith(f"is not supported: {reason}")]
        # at the field, or at the refused block holding it (localityLbSetting.distribute for distribute[].from)
        assert any(path.startswith(e.path) for e in refusals), (field, [str(e) for e in info.value.errors])


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_missing_field_is_refused_not_ignored(kind):
    for field, value in FIELDS[kind].items():
        if value != "missing" or "{}" in field:
            continue
        with pytest.raises(ValidationError):
            load_documents(yaml.safe_dump(_document(kind, field)), "probe.yaml")


def _paths(value, path: str, out: set[str]) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _paths(v, f"{path}.{k}", out)
    elif isinstance(value, list):
        for v in value:
            _paths(v, path + "[]", out)
    out.add(path)


def _golden_inputs() -> dict[str, set[str]]:
    """Every field path used by a golden case's resources, by kind (policy testdata and the bookinfo examples)."""
    from tests.xds.test_build_golden import CASES

    texts = [p.read_text() for p in sorted((ROOT / "meshcore" / "policies").glob("*/testdata/*.input.yaml"))]
    texts += [text for text, _ in CASES.values()]
    seen: dict[str, set[str]] = {}
    for text in texts:
        for doc in yaml.safe_load_all(text):
            if isinstance(doc, dict) and doc.get("kind") in KIND_NAMES:
                _paths(doc.get("spec") or {}, "spec", seen.setdefault(doc["kind"], set()))
    return seen


@pytest.mark.parametrize("kind", KIND_NAMES)
def test_every_supported_field_is_in_a_golden_case(kind):
    seen = _golden_inputs().get(kind, set())

    def covered(field: str) -> bool:
        pattern = re.compile("^" + re.escape(field).replace(r"\{\}", r"\.[^.]+") + "$")
        return any(pattern.match(p) for p in seen)

    uncovered = [f for f, v in FIELDS[kind].items() if v == "supported" and not covered(f)]
    assert not uncovered, f"supported {kind} fields without a golden case (add one to testdata/): {uncovered}"


def test_coverage_figures(capsys):
    """Prints the figures (supported / deprecated / refused / missing of Istio's fields, per kind); asserts nothing shrank
    below what this round delivered."""
    figures = {}
    for kind in KIND_NAMES:
        statuses = [_status(v)[0] for v in FIELDS[kind].values()]
        figures[kind] = {s: statuses.count(s) for s in ("supported", "deprecated", "refused", "missing")}
    with capsys.disabled():
        print("\nIstio field coverage:", figures)
    assert figures["PeerAuthentication"]["missing"] == 0
    assert figures["VirtualService"]["missing"] == 0 and figures["AuthorizationPolicy"]["missing"] == 0


# Istio's deprecated spellings: (kind, spec as Istio users write it, the same spec in the current spelling); every
# field istio-fields.yaml marks deprecated is one of them
DEPRECATED_FIELDS = {"mirrorPercent", "mirror_percent", "allowOrigin", "consecutiveErrors", "jwks_uri"}
DEPRECATED = [
    ("VirtualService",
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                      "mirror": {"host": "ratings"}, "mirrorPercent": 20}]},
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                      "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": 20}}]}),
    ("VirtualService",
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                      "mirror": {"host": "ratings"}, "mirror_percent": 5}]},
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                      "mirror": {"host": "ratings"}, "mirrorPercentage": {"value": 5}}]}),
    ("VirtualService",
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                      "corsPolicy": {"allowOrigin": ["https://a.example", "https://b.example"]}}]},
     {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                      "corsPolicy": {"allowOrigins": [{"exact": "https://a.example"},
                                                                      {"exact": "https://b.example"}]}}]}),
    ("DestinationRule",
     {"host": "reviews", "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 7, "interval": "5s"}}},
     {"host": "reviews", "trafficPolicy": {"outlierDetection": {"consecutiveGatewayErrors": 7,
                                                                "consecutive5xxErrors": 0, "interval": "5s"}}}),
    ("DestinationRule",
     {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_CONN"}}},
     {"host": "reviews", "trafficPolicy": {"loadBalancer": {"simple": "LEAST_REQUEST"}}}),
    ("RequestAuthentication",
     {"jwtRules": [{"issuer": "https://idp.example", "jwks_uri": "https://idp.example/keys"}]},
     {"jwtRules": [{"issuer": "https://idp.example", "jwksUri": "https://idp.example/keys"}]}),
]


@pytest.mark.parametrize("kind,old,new", DEPRECATED, ids=lambda v: v if isinstance(v, str) else "")
def test_deprecated_spellings_read_as_the_current_ones_with_a_note(kind, old, new):
    def load(spec: dict, notes: list | None = None):
        doc = {"apiVersion": KINDS[kind].api_version, "kind": kind, "metadata": {"name": "probe"}, "spec": spec}
        [resource] = load_documents(yaml.safe_dump(doc), "probe.yaml", notes)
        return resource

    notes: list = []
    assert load(old, notes).canonical_json() == load(new).canonical_json()
    assert len(notes) == 1 and "deprecated" in notes[0].message and "read as" in notes[0].message, notes


def test_a_deprecated_spelling_beside_the_current_one_is_refused():
    doc = {"apiVersion": KINDS["DestinationRule"].api_version, "kind": "DestinationRule", "metadata": {"name": "p"},
           "spec": {"host": "reviews", "trafficPolicy": {"outlierDetection": {"consecutiveErrors": 3,
                                                                              "consecutiveGatewayErrors": 4}}}}
    with pytest.raises(ValidationError, match="deprecated spelling of \"consecutiveGatewayErrors\", which is also set"):
        load_documents(yaml.safe_dump(doc), "p.yaml")
    doc = {"apiVersion": KINDS["VirtualService"].api_version, "kind": "VirtualService", "metadata": {"name": "p"},
           "spec": {"hosts": ["reviews"], "http": [{"route": [{"destination": {"host": "reviews"}}],
                                                    "corsPolicy": {"allowOrigin": ["*"]}}]}}
    with pytest.raises(ValidationError, match=r'allowOrigin: cannot be read as "allowOrigins": "\*" would be matched'):
        load_documents(yaml.safe_dump(doc), "p.yaml")


def test_every_deprecated_field_has_a_case():
    marked = {f.rsplit(".", 1)[-1] for kind in KIND_NAMES for f, v in FIELDS[kind].items()
              if _status(v)[0] == "deprecated"}
    assert marked == DEPRECATED_FIELDS
    written = {key for _, old, _ in DEPRECATED for key in _paths_of(old)}
    assert DEPRECATED_FIELDS <= written


def _paths_of(value) -> set[str]:
    out: set[str] = set()
    _paths(value, "", out)
    return {p.rsplit(".", 1)[-1].rstrip("[]") for p in out}
