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

from typing import Iterable, Mapping

from meshcore.resources._kindspec import KindSpec
from meshcore.resources.kinds._fields import UINT32_MAX, Dur, in_scope, unique_names
from meshcore.policies.authorization_policy.schema import METHODS, PATHS, PRINCIPALS
from meshcore.resources.model import Resource
from meshcore.resources.schema import Context, DNSLabel, Int, LabelSelector, ListOf, Obj, Path, Required

from .spec import parse, spec_of

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


SPEC = Obj(
    {"selector": LabelSelector(), "limits": Required(ListOf(LIMIT, min_items=1))},
    rules=[unique_names("limits", "limit")],
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    parse=parse,
    summary="local token-bucket rate limits on a service's inbound requests, per route or caller (429 + retry-after)",
)


# --- scope (pure) ------------------------------------------------------------------------------------


def selects(resource: Resource, labels: Mapping[str, str], namespace: str) -> bool:
    """Whether ``resource`` applies to a workload with ``labels`` in ``namespace`` (AuthorizationPolicy's scope)."""
    return resource.kind == KIND_NAME and in_scope(spec_of(resource).match_labels, resource.namespace, labels, namespace)


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
    "limits_for",
    "selects",
]
