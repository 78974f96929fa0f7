"""A verified JWT payload as the proxies hold it (pure): space-delimited claims split as Envoy's ``jwt_authn`` does
(``normalize_payload_in_metadata``), so ``meshctl authz check`` decides on what RBAC and claim routes match."""

from __future__ import annotations

from typing import Any, Iterable, Mapping

from ...resources.model import Resource
from .schema import authentications_for
from .spec import spec_of


def split_claims_for(resources: Iterable[Resource], labels: Mapping[str, str], namespace: str,
                     issuer: Any) -> tuple[str, ...]:
    """The space-delimited claims (``scope``, ``permission``, ``spaceDelimitedClaims``) of the JWT rule for
    ``issuer`` among the RequestAuthentications selecting a workload; ``()`` when no rule is for that issuer."""
    for r in authentications_for(resources, labels, namespace):
        for rule in spec_of(r).jwt_rules:
            if rule.issuer == issuer:
                return rule.split_claims
    return ()


def normalized_payload(payload: Mapping[str, Any], split_claims: Iterable[str]) -> dict[str, Any]:
    """A verified payload as Envoy's ``jwt_authn`` puts it into dynamic metadata
    (``normalize_payload_in_metadata``): each top-level claim of ``split_claims`` holding a string becomes the list
    of its space-delimited words (``"read write"`` -> ``["read", "write"]``); everything else as it is."""
    out = dict(payload)
    for claim in split_claims:
        value = out.get(claim)
        if isinstance(value, str):
            out[claim] = [word for word in value.split(" ") if word]
    return out


__all__ = ["normalized_payload", "split_claims_for"]
