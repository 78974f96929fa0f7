"""effective_mtls: Istio's precedence (workload > namespace > mesh), port-level overrides, UNSET inherits."""

from __future__ import annotations

import pytest

from meshcore.resources import effective_mtls, load_documents

REVIEWS = {"app": "reviews", "version": "v2"}


def pa(name: str, namespace: str, spec: str = "{}") -> str:
    return (
        "---\napiVersion: security.mesh.io/v1beta1\nkind: PeerAuthentication\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec: {spec}\n"
    )


def policies(*docs: str):
    return load_documents("".join(docs), "test.yaml")


def test_default_is_strict():
    assert effective_mtls([], REVIEWS, "default", 9080) == "STRICT"


def test_mesh_wide_applies_everywhere():
    res = policies(pa("mesh", "meshcore-system", "{mtls: {mode: PERMISSIVE}}"))
    assert effective_mtls(res, REVIEWS, "default", 9080) == "PERMISSIVE"
    assert effective_mtls(res, {}, "shop", 80) == "PERMISSIVE"


def test_namespace_overrides_mesh_and_only_in_its_namespace():
    res = policies(
        pa("mesh", "meshcore-system", "{mtls: {mode: PERMISSIVE}}"),
        pa("ns", "default", "{mtls: {mode: DISABLE}}"),
    )
    assert effective_mtls(res, REVIEWS, "default", 9080) == "DISABLE"
    assert effective_mtls(res, REVIEWS, "shop", 9080) == "PERMISSIVE"


def test_workload_overrides_namespace_when_selector_matches():
    res = policies(
        pa("ns", "default", "{mtls: {mode: PERMISSIVE}}"),
        pa("reviews", "default", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}}"),
        pa("ratings", "default", "{selector: {matchLabels: {app: ratings}}, mtls: {mode: DISABLE}}"),
    )
    assert effective_mtls(res, REVIEWS, "default", 9080) == "STRICT"
    assert effective_mtls(res, {"app": "details"}, "default", 9080) == "PERMISSIVE"
    # a selector policy never reaches across namespaces
    assert effective_mtls(res, REVIEWS, "shop", 9080) == "STRICT"


def test_selector_in_root_namespace_is_not_mesh_wide():
    res = policies(pa("sel", "meshcore-system", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: DISABLE}}"))
    assert effective_mtls(res, REVIEWS, "default", 9080) == "STRICT"


def test_port_level_overrides_workload_level():
    res = policies(
        pa(
            "reviews",
            "default",
            "{selector: {matchLabels: {app: reviews}}, mtls: {mode: STRICT}, "
            "portLevelMtls: {9080: {mode: PERMISSIVE}, 9443: {mode: UNSET}}}",
        )
    )
    assert effective_mtls(res, REVIEWS, "default", 9080) == "PERMISSIVE"
    assert effective_mtls(res, REVIEWS, "default", 9090) == "STRICT"
    assert effective_mtls(res, REVIEWS, "default", 9443) == "STRICT"  # UNSET at port level inherits


def test_unset_inherits_through_every_level():
    res = policies(
        pa("mesh", "meshcore-system", "{mtls: {mode: DISABLE}}"),
        pa("ns", "default", "{mtls: {mode: UNSET}}"),
        pa("reviews", "default", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: UNSET}}"),
    )
    assert effective_mtls(res, REVIEWS, "default", 9080) == "DISABLE"


def test_omitted_mode_inherits_as_in_istio():
    res = policies(
        pa("ns", "default", "{mtls: {mode: PERMISSIVE}}"),
        pa("reviews", "default", "{selector: {matchLabels: {app: reviews}}, portLevelMtls: {'9999': {mode: STRICT}}}"),
    )
    assert effective_mtls(res, REVIEWS, "default", 9080) == "PERMISSIVE"
    assert effective_mtls(res, REVIEWS, "default", 9999) == "STRICT"
    assert effective_mtls(policies(pa("bare", "default", "{}")), REVIEWS, "default", 9080) == "STRICT"


@pytest.mark.parametrize("order", [0, 1])
def test_competing_workload_policies_lexically_first_name_wins(order):
    docs = [
        pa("b-permissive", "default", "{selector: {matchLabels: {app: reviews}}, mtls: {mode: PERMISSIVE}}"),
        pa("a-disable", "default", "{selector: {matchLabels: {version: v2}}, mtls: {mode: DISABLE}}"),
    ]
    res = policies(*(docs if order == 0 else docs[::-1]))
    assert effective_mtls(res, REVIEWS, "default", 9080) == "DISABLE"


def test_selector_must_match_every_label():
    res = policies(pa("v3", "default", "{selector: {matchLabels: {app: reviews, version: v3}}, mtls: {mode: DISABLE}}"))
    assert effective_mtls(res, REVIEWS, "default", 9080) == "STRICT"
    assert effective_mtls(res, {"app": "reviews", "version": "v3"}, "default", 9080) == "DISABLE"
