"""Traffic workflows as pure edits of a service's DestinationRule and VirtualService documents.

``meshctl traffic split|route|switch|rollback`` read the stored resources, call one function here,
and apply what it returns. Each function takes the current documents (None when there is none) and
returns a :class:`Plan`: the documents to apply and a one-line summary. They never drop what an
operator wrote: other subsets, traffic policies, and other routes are kept; only the part the
workflow is about changes.

Vocabulary:

* the **default rule** is the VirtualService's last ``http[]`` rule without ``match``: what every
  request no earlier rule matched gets. ``split`` and ``switch`` change its destinations; ``route``
  adds matched rules before it.
* a **destination spec** written in labels is ``*`` (the whole service), ``v2`` (one subset) or
  ``v1=90,v2=10`` (weighted subsets); :func:`describe` and :func:`parse_spec` convert.
* blue-green state lives in the VirtualService's labels: :data:`ACTIVE_LABEL` (what the default rule
  sends to) and :data:`PREVIOUS_LABEL` (what it sent to before the last switch), so rollback
  restores it from the stored resource alone.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field

from ..errors import ConfigError
from ..naming import DEFAULT_NAMESPACE
from ..policies.destination_rule import schema as dr_kind
from ..policies.virtual_service import schema as vs_kind

ACTIVE_LABEL = "traffic.mesh.io/active"
PREVIOUS_LABEL = "traffic.mesh.io/previous"
MANAGED_LABEL = "traffic.mesh.io/managed-by"
MANAGER = "meshctl"
WHOLE_SERVICE = "*"
DEFAULT_RULE_NAME = "default"
DEFAULT_SUBSET_LABEL = "version"
_SUBSET = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")


@dataclass
class Plan:
    """What a workflow wants applied: documents in apply order (DestinationRule first) and what changes."""

    service: str
    destination_rule: dict | None
    virtual_service: dict
    dr_changed: bool
    vs_changed: bool
    summary: str
    notes: list[str] = field(default_factory=list)

    def documents(self) -> list[dict]:
        out = [self.destination_rule] if self.dr_changed and self.destination_rule else []
        return out + ([self.virtual_service] if self.vs_changed else [])


# --- destination specs -----------------------------------------------------------------------------------


def describe(route: list[dict]) -> str:
    """A default rule's destinations as a compact spec: ``*``, ``v2`` or ``v1=90,v2=10``."""
    if len(route) == 1:
        return route[0]["destination"].get("subset") or WHOLE_SERVICE
    return ",".join(f"{d['destination'].get('subset') or WHOLE_SERVICE}={d.get('weight', 0)}" for d in route)


def parse_spec(spec: str) -> dict[str, int] | None:
    """Inverse of :func:`describe`: ``{subset: weight}``, or None for the whole service."""
    if spec == WHOLE_SERVICE:
        return None
    if "=" not in spec:
        return {spec: 100}
    out: dict[str, int] = {}
    for part in spec.split(","):
        name, _, weight = part.partition("=")
        out[name] = int(weight)
    return out


def parse_weights(args: list[str]) -> dict[str, int]:
    """``["v1=90", "v2=10"]`` -> ``{"v1": 90, "v2": 10}``; every mistake named with what to write instead."""
    if not args:
        raise ConfigError("give at least one SUBSET=WEIGHT, e.g. v1=90 v2=10")
    out: dict[str, int] = {}
    for arg in args:
        name, sep, weight = arg.partition("=")
        if not sep and len(args) == 1 and _SUBSET.fullmatch(arg):
            return {arg: 100}
        if not sep or not name or not weight.strip().isdigit():
            raise ConfigError(f"{arg!r}: expected SUBSET=WEIGHT with a whole-number weight, e.g. v1=90")
        check_subset_name(name)
        if name in out:
            raise ConfigError(f"{name!r} is given twice; give each subset once")
        out[name] = int(weight)
    total = sum(out.values())
    if total != 100:
        raise ConfigError(f"weights must sum to 100, got {total} ({' '.join(args)})")
    if not any(out.values()):
        raise ConfigError("at least one subset needs a weight above 0")
    return out


def check_subset_name(name: str) -> str:
    if not _SUBSET.fullmatch(name) or len(name) > 63:
        raise ConfigError(f"{name!r} is not a subset name: lowercase letters, digits and '-' (e.g. v2, green)")
    return name


def _route_for(service: str, weights: dict[str, int] | None) -> list[dict]:
    if weights is None:
        return [{"destination": {"host": service}}]
    live = {k: v for k, v in weights.items()}
    if len(live) == 1:
        (name,) = live
        return [{"destination": {"host": service, "subset": name}}]
    return [{"destination": {"host": service, "subset": k}, "weight": v} for k, v in live.items()]


# --- documents -------------------------------------------------------------------------------------------


def _new_doc(kind: str, service: str, namespace: str, spec: dict) -> dict:
    api = dr_kind.API_VERSION if kind == dr_kind.KIND_NAME else vs_kind.API_VERSION
    return {"apiVersion": api, "kind": kind,
            "metadata": {"name": service, "namespace": namespace, "labels": {MANAGED_LABEL: MANAGER}},
            "spec": spec}


def _labels(doc: dict) -> dict:
    return doc.setdefault("metadata", {}).setdefault("labels", {})


def ensure_subsets(current: dict | None, service: str, names: list[str], label: str,
                   namespace: str = DEFAULT_NAMESPACE) -> tuple[dict, bool, list[str]]:
    """The DestinationRule with a subset for every name (``labels: {<label>: <name>}`` when new).

    Returns (document, changed, notes). Existing subsets are kept as written, even when their labels
    differ from ``label`` (the operator's definition wins; a note says so).
    """
    doc = copy.deepcopy(current) if current else _new_doc(dr_kind.KIND_NAME, service, namespace, {"host": service})
    subsets = doc["spec"].setdefault("subsets", [])
    known = {s["name"]: s for s in subsets}
    changed, notes = current is None, []
    for name in names:
        if name not in known:
            subsets.append({"name": name, "labels": {label: name}})
            changed = True
        elif (known[name].get("labels") or {}) != {label: name}:
            notes.append(f"subset {name} keeps its labels {known[name].get('labels') or {}} "
                         f"from DestinationRule {doc['metadata'].get('namespace', namespace)}/{doc['metadata']['name']}")
    return doc, changed, notes


def _vs_doc(current: dict | None, service: str, namespace: str) -> tuple[dict, dict]:
    """A copy of the VirtualService (or a new one) and its default rule (created when missing)."""
    doc = copy.deepcopy(current) if current else _new_doc(
        vs_kind.KIND_NAME, service, namespace, {"hosts": [service], "http": []})
    rules = doc["spec"].setdefault("http", [])
    for rule in reversed(rules):
        if not rule.get("match"):
            return doc, rule
    default = {"name": DEFAULT_RULE_NAME, "route": [{"destination": {"host": service}}]}
    rules.append(default)
    return doc, default


def _subsets_of(route: list[dict]) -> list[str]:
    return [d["destination"]["subset"] for d in route if d["destination"].get("subset")]


def _plan(service: str, dr_cur: dict | None, vs_cur: dict | None, vs_doc: dict, label: str, namespace: str,
          summary: str) -> Plan:
    wanted: list[str] = []
    for _, dest in vs_kind.destinations(vs_doc["spec"]):
        if dest.get("subset") and dest["host"] == service and dest["subset"] not in wanted:
            wanted.append(dest["subset"])
    dr_doc, dr_changed, notes = ensure_subsets(dr_cur, service, wanted, label, namespace) if wanted or dr_cur else (
        None, False, [])
    return Plan(service, dr_doc, vs_doc, dr_changed, vs_cur != vs_doc, summary, notes)


# --- workflows -------------------------------------------------------------------------------------------


def split(service: str, weights: dict[str, int], dr: dict | None, vs: dict | None, *,
          label: str = DEFAULT_SUBSET_LABEL, namespace: str = DEFAULT_NAMESPACE) -> Plan:
    """Send the default rule's traffic to subsets by weight (``{"v1": 90, "v2": 10}``); other rules stay."""
    doc, default = _vs_doc(vs, service, namespace)
    before = describe(default["route"])
    default["route"] = _route_for(service, weights)
    after = describe(default["route"])
    spread = ", ".join(f"{w}% {k}" for k, w in weights.items())
    notes = []
    if before != after:  # recorded as switch records it: `traffic rollback` undoes the split
        if len(before) <= 63:
            labels = _labels(doc)
            labels[ACTIVE_LABEL], labels[PREVIOUS_LABEL] = after, before
        else:
            notes.append(f"the previous destinations {before!r} are too long to record (over 63 characters): "
                         "`meshctl traffic rollback` cannot undo this split")
    plan = _plan(service, dr, vs, doc, label, namespace, f"{service}: {spread}")
    plan.notes += notes
    return plan


def _match_key(headers: dict[str, str]) -> dict:
    return {"headers": {k: {"exact": v} for k, v in sorted(headers.items())}}


def route(service: str, headers: dict[str, str], to: str | None, dr: dict | None, vs: dict | None, *,
          label: str = DEFAULT_SUBSET_LABEL, namespace: str = DEFAULT_NAMESPACE, remove: bool = False) -> Plan:
    """A/B: requests carrying every ``headers`` pair (exact) go to subset ``to``; everything else as before.

    The rule goes right before the default rule (or replaces an earlier rule with the same match);
    ``remove=True`` takes that rule out again.
    """
    if not headers:
        raise ConfigError("give at least one --header NAME=VALUE")
    doc, default = _vs_doc(vs, service, namespace)
    rules = doc["spec"]["http"]
    match = [_match_key(headers)]
    existing = next((i for i, r in enumerate(rules) if r.get("match") == match), None)
    what = " and ".join(f"{k}={v}" for k, v in sorted(headers.items()))
    if remove:
        if existing is None:
            raise ConfigError(f"{service} has no route for requests with {what}; nothing to remove")
        del rules[existing]
        return _plan(service, dr, vs, doc, label, namespace, f"{service}: requests with {what} no longer routed apart")
    if to is None:
        raise ConfigError("say where matching requests go: --to SUBSET")
    rule = {"name": _rule_name(headers, to), "match": match,
            "route": [{"destination": {"host": service, "subset": check_subset_name(to)}}]}
    if existing is not None:
        rules[existing] = {**rules[existing], "name": rule["name"], "route": rule["route"]}
    else:
        rules.insert(rules.index(default), rule)
    return _plan(service, dr, vs, doc, label, namespace, f"{service}: requests with {what} -> {to}")


def _rule_name(headers: dict[str, str], to: str) -> str:
    raw = "-".join(f"{k}-{v}" for k, v in sorted(headers.items()))
    return (re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")[:40] or "match") + f"-to-{to}"


def switch(service: str, to: str, dr: dict | None, vs: dict | None, *,
           label: str = DEFAULT_SUBSET_LABEL, namespace: str = DEFAULT_NAMESPACE) -> Plan:
    """Blue-green: all default traffic to subset ``to`` at once; what it went to before is recorded.

    The previous destinations' subsets stay defined (kept warm) so :func:`rollback` is instant.
    """
    check_subset_name(to)
    doc, default = _vs_doc(vs, service, namespace)
    before = describe(default["route"])
    if before == to:
        return _plan(service, dr, vs, doc, label, namespace, f"{service}: already on {to}")
    if len(before) > 63:
        raise ConfigError(f"cannot record the current destinations {before!r} for rollback (over 63 characters); "
                          f"split to fewer subsets first")
    default["route"] = _route_for(service, {to: 100})
    labels = _labels(doc)
    labels[ACTIVE_LABEL], labels[PREVIOUS_LABEL] = to, before
    plan = _plan(service, dr, vs, doc, label, namespace, f"{service}: all traffic -> {to} (was {before})")
    # keep the previous destinations' subsets defined: they are the rollback target
    if plan.destination_rule is not None:
        keep = [k for k in (parse_spec(before) or {})]
        dr_doc, changed, notes = ensure_subsets(plan.destination_rule, service, keep, label, namespace)
        plan.destination_rule, plan.dr_changed = dr_doc, plan.dr_changed or changed
        plan.notes += [n for n in notes if n not in plan.notes]
    return plan


def rollback(service: str, dr: dict | None, vs: dict | None, *,
             label: str = DEFAULT_SUBSET_LABEL, namespace: str = DEFAULT_NAMESPACE) -> Plan:
    """Undo the last :func:`switch` or :func:`split`: restore the recorded destinations and record the current
    ones instead (so a second rollback redoes it)."""
    previous = ((vs or {}).get("metadata", {}).get("labels") or {}).get(PREVIOUS_LABEL)
    if vs is None or not previous:
        where = f"VirtualService {namespace}/{service}" if vs is None else (
            f"VirtualService {vs['metadata'].get('namespace', namespace)}/{vs['metadata']['name']}")
        raise ConfigError(f"nothing to roll back: {where} records no previous destination; "
                          f"`meshctl traffic split {service} ...` and `meshctl traffic switch {service} --to COLOR` record one")
    doc, default = _vs_doc(vs, service, namespace)
    current = describe(default["route"])
    weights = parse_spec(previous)
    default["route"] = _route_for(service, weights)
    labels = _labels(doc)
    labels[ACTIVE_LABEL], labels[PREVIOUS_LABEL] = previous, current
    return _plan(service, dr, vs, doc, label, namespace, f"{service}: rolled back to {previous} (was {current})")


__all__ = [
    "ACTIVE_LABEL", "PREVIOUS_LABEL", "MANAGED_LABEL", "WHOLE_SERVICE", "Plan",
    "describe", "parse_spec", "parse_weights", "ensure_subsets", "split", "route", "switch", "rollback",
]
