"""Resource.typed: the kind's typed spec beside the raw validated spec, parsed once."""

from __future__ import annotations

from dataclasses import FrozenInstanceError, replace

import pytest

from meshcore.policies.rate_limit.spec import Limit, RateLimitSpec
from meshcore.resources import Resource, load_documents

RATE_LIMIT = """
apiVersion: networking.mesh.io/v1beta1
kind: RateLimit
metadata: {name: ratings}
spec:
  selector: {matchLabels: {app: ratings}}
  limits:
  - {maxTokens: 10, fillInterval: 500ms}
"""


def test_the_loader_returns_the_typed_spec_beside_the_raw_one():
    (res,) = load_documents(RATE_LIMIT, "rl.yaml")
    assert res.spec["limits"][0]["fillInterval"] == "500ms"  # raw: what stores write and the engine reads
    assert res.typed == RateLimitSpec(match_labels=(("app", "ratings"),),
                                      limits=(Limit(name=None, max_tokens=10, tokens_per_fill=10, fill_interval=0.5),))
    assert res.typed is res.typed  # parsed once


def test_a_resource_read_back_from_a_store_parses_on_first_use():
    (loaded,) = load_documents(RATE_LIMIT, "rl.yaml")
    stored = Resource(loaded.api_version, loaded.kind, loaded.name, loaded.namespace, loaded.spec)  # as stores build it
    assert stored == loaded  # the typed spec takes no part in equality
    assert stored.typed == loaded.typed


def test_replace_parses_the_new_spec_and_the_resource_stays_frozen():
    (res,) = load_documents(RATE_LIMIT, "rl.yaml")
    assert res.typed.limits[0].max_tokens == 10
    spec = {**res.spec, "limits": [{"maxTokens": 3, "fillInterval": "1s"}]}
    changed = replace(res, spec=spec)
    assert changed.typed.limits[0].max_tokens == 3
    with pytest.raises(FrozenInstanceError):
        res.spec = spec  # type: ignore[misc]


def test_a_kind_without_a_parser_gives_its_raw_spec():
    res = Resource("telemetry.mesh.io/v1beta1", "AlertRule", "x", "default", {"signal": "error_rate"})
    assert res.typed == {"signal": "error_rate"}
    unknown = Resource("example.com/v1", "Unknown", "x", "default", {"a": 1})
    assert unknown.typed == {"a": 1}
