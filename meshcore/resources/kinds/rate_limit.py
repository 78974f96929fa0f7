"""RateLimit: local token-bucket limits on a destination service's inbound traffic.

```yaml
apiVersion: networking.mesh.io/v1beta1
kind: RateLimit
metadata: {name: ratings, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}   # the workloads whose inbound listener enforces the limits
  limits:
  - name: reviews-get                       # optional; names the limit in logs and in the config
    maxTokens: 10                           # bucket size: the burst allowed
    tokensPerFill: 10                       # tokens added every fillInterval (default: maxTokens)
    fillInterval: 1s                        # at least 50ms (Envoy's floor)
    match:                                  # optional: without it the limit covers every request
      paths: ["/ratings*"]                  # exact, prefix (/x*), suffix (*.js) or any (*); query string ignored
      methods: [GET]
      sources: ["cluster.local/ns/default/sa/reviews"]   # caller SPIFFE principals, as in AuthorizationPolicy
  - maxTokens: 100
    fillInterval: 1s
```

Inside one ``match`` the fields combine with AND, the values of one field with OR. A request takes a
token from every limit it matches and is refused (``429``, ``retry-after``) when any of them is empty.
Buckets are per Envoy (per VM), shared by every caller the limit matches.

Scope is the one of AuthorizationPolicy: with a selector, the workloads of the resource's namespace
whose labels contain every ``matchLabels`` pair; without one, every workload of the namespace (or of
the mesh, in the root namespace).
"""

from __future__ import annotations

import json
import math
from typing import Any, Iterable, Mapping

from meshcore.resources._kindspec import KindSpec
from meshcore.resources.model import Resource
from meshcore.resources.schema import DNSLabel, Int, LabelSelector, ListOf, Obj, Path, Required, Context

from .authorization_policy import METHODS, PATHS, PRINCIPALS
from ._fields import UINT32_MAX, Dur, seconds
from .peer_authentication import ROOT_NAMESPACE

API_VERSION = "networking.mesh.io/v1beta1"
KIND_NAME = "RateLimit"
MIN_FILL_INTERVAL_S = 0.05
"""Envoy refuses a token bucket that refills more often than every 50ms."""
MATCH_FIELDS = ("paths", "methods", "sources")


def _match_not_empty(cleaned: dict, path: Path, ctx: Context) -> None:
    if not any(cleaned.get(f) for f in MATCH_FIELDS):
        ctx.add(path, f"match must set at least one of: {', '.join(MATCH_FIELDS)} "
                      "(leave match out to limit every request)")


MATCH = Obj({"paths": PATHS, "methods": METHODS, "sources": PRINCIPALS}, rules=[_match_not_empty])


def _fill_not_above_max(cleaned: dict, path: Path, ctx: Context) -> None:
    if "tokensPerFill" in cleaned and "maxTokens" in cleaned and cleaned["tokensPerFill"] > cleaned["maxTokens"]:
        ctx.add(path.field("tokensPerFill"),
                f"must not exceed maxTokens ({cleaned['maxTokens']}): the bucket never holds more than maxTokens, "
                f"got {cleaned['tokensPerFill']}")


LIMIT = Obj(
    {
        "name": DNSLabel(),
        "maxTokens": Required(Int(1, UINT32_MAX)),
        "tokensPerFill": Int(1, UINT32_MAX),
        "fillInterval": Required(Dur(min_s=MIN_FILL_INTERVAL_S)),
        "match": MATCH,
    },
    rules=[_fill_not_above_max],
)


def _unique_limit_names(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[str, int] = {}
    for i, limit in enumerate(cleaned.get("limits") or ()):
        name = limit.get("name")
        if name is None:
            continue
        if name in seen:
            ctx.add(path.field("limits").index(i).field("name"),
                    f"limit {json.dumps(name)} is already defined at limits[{seen[name]}]; limit names must be unique")
        else:
            seen[name] = i


SPEC = Obj(
    {"selector": LabelSelector(), "limits": Required(ListOf(LIMIT, min_items=1))},
    rules=[_unique_limit_names],
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    summary="local token-bucket rate limits on a service's inbound requests, per route or caller (429 + retry-after)",
)


# --- reading a validated spec (pure) -----------------------------------------------------------------


def limit_id(limit: Mapping[str, Any], index: int) -> str:
    """How a limit is named in Envoy's config: its ``name``, else ``limits[<index>]``."""
    return limit.get("name") or f"limits[{index}]"


def tokens_per_fill(limit: Mapping[str, Any]) -> int:
    return int(limit.get("tokensPerFill") or limit["maxTokens"])


def retry_after_seconds(limit: Mapping[str, Any]) -> int:
    """Whole seconds until an empty bucket holds a token again (Envoy refills continuously), at least 1."""
    per_token = seconds(limit["fillInterval"]) / tokens_per_fill(limit)
    return max(1, math.ceil(per_token - 1e-9))


def match_labels(spec: Mapping[str, Any] | None) -> dict[str, str]:
    return dict(((spec or {}).get("selector") or {}).get("matchLabels") or {})


def selects(resource: Resource, labels: Mapping[str, str], namespace: str) -> bool:
    """Whether ``resource`` applies to a workload with ``labels`` in ``namespace`` (AuthorizationPolicy's scope)."""
    if resource.kind != KIND_NAME:
        return False
    selector = match_labels(resource.spec)
    if not selector:
        return resource.namespace in (namespace, ROOT_NAMESPACE)
    return resource.namespace == namespace and all(labels.get(k) == v for k, v in selector.items())


def limits_for(resources: Iterable[Resource], labels: Mapping[str, str], namespace: str) -> list[Resource]:
    """The RateLimits that apply to a workload, ordered by (namespace, name): the order Envoy checks them in."""
    chosen = [r for r in resources if selects(r, labels, namespace)]
    return sorted(chosen, key=lambda r: (r.namespace, r.name))


__all__ = [
    "API_VERSION",
    "KIND",
    "KIND_NAME",
    "MATCH_FIELDS",
    "MIN_FILL_INTERVAL_S",
    "limit_id",
    "limits_for",
    "match_labels",
    "retry_after_seconds",
    "selects",
    "tokens_per_fill",
]
