"""``meshctl traffic``: canary splits, A/B routes and blue-green switches as edits of DestinationRule + VirtualService.

Each command reads the service's stored DestinationRule and VirtualService from the control plane,
computes the change with :mod:`meshcore.traffic.workflows` (pure), validates the result (schema and
cross-resource: every routed subset is defined), and applies it through the operator API
(``POST /v1/resources``). When subsets are new, the DestinationRule goes first and the command waits
until every connected proxy ACKed it, then the VirtualService follows: no request is routed to a
cluster an Envoy does not have yet (make-before-break, as Istio recommends).

Wire it into meshctl with ``register(subparsers, common)``; ``python -m meshcore.cli.traffic`` runs
it standalone.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Callable

import yaml

from ..errors import ConfigError, ValidationError
from ..policies.destination_rule import schema as dr_kind
from ..policies.virtual_service import schema as vs_kind
from ..resources.loader import load_documents, validate_set
from ..traffic import workflows as wf
from ..api.operator import ApplyRequest, ResourceFile, ResourceQuery
from ._client import Client, client_for
from ._run import dispatch
from ._types import MeshctlParser, checked, header
from ._commands import HELP

SYNC_TIMEOUT_S = 5.0
SOURCE = "meshctl-traffic"

DESCRIPTION = ("Shift traffic between versions of a service: weighted splits (canary), header-matched routes "
               "(A/B) and blue-green switches with rollback. Each command edits the service's DestinationRule "
               "(subsets by label) and VirtualService (routes) and applies them through the control plane; "
               "`meshctl get virtualservice NAME -o yaml` shows the result.")


# --- reading and applying ------------------------------------------------------------------------------


def _first(docs: list[dict], pred: Callable[[dict], bool]) -> dict | None:
    chosen = sorted((d for d in docs if pred(d)),
                    key=lambda d: (d["metadata"].get("namespace", "default"), d["metadata"]["name"]))
    return chosen[0] if chosen else None


def current(client: Client, service: str) -> tuple[dict | None, dict | None, list[dict]]:
    """The service's DestinationRule and VirtualService documents (or None), and every stored traffic document."""
    drs = client.resources(ResourceQuery(kind=dr_kind.KIND_NAME))
    vss = client.resources(ResourceQuery(kind=vs_kind.KIND_NAME))
    dr = _first(drs, lambda d: (d.get("spec") or {}).get("host") == service)
    vs = _first(vss, lambda d: service in ((d.get("spec") or {}).get("hosts") or ()))
    return dr, vs, drs + vss


def _key(doc: dict) -> tuple[str, str, str]:
    return doc["kind"], doc["metadata"].get("namespace", "default"), doc["metadata"]["name"]


def check(plan: wf.Plan, stored: list[dict]) -> None:
    """Schema and cross-resource validation of the result, before anything is sent."""
    changed = plan.documents()
    if not changed:
        return
    mine = {_key(d) for d in changed}
    new = load_documents(yaml.safe_dump_all(changed, sort_keys=False), SOURCE)
    others = [d for d in stored if _key(d) not in mine]
    rest = load_documents(yaml.safe_dump_all(others, sort_keys=False), "stored") if others else []
    errors = validate_set(rest + new)
    if errors:
        raise ValidationError(errors, summary=f"{plan.service}: the change would be invalid; nothing applied")


def _post(client: Client, docs: list[dict]) -> list[dict]:
    file = ResourceFile(name=SOURCE + ".yaml", content=yaml.safe_dump_all(docs, sort_keys=False))
    return [r.to_json() for r in client.apply(ApplyRequest(files=(file,))).applied]


def wait_synced(client: Client, before: str, timeout: float = SYNC_TIMEOUT_S) -> bool:
    """Wait until the control plane built a new snapshot (hash != ``before``) and every connected proxy ACKed it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.status()
        if status.control_plane.snapshot != before and all(p.synced for p in status.proxies if p.connected):
            return True
        time.sleep(0.05)
    return False


def apply_plan(client: Client, plan: wf.Plan, *, wait: bool = True) -> dict:
    """Apply the plan: DestinationRule first (and wait for the proxies) when both change, then the VirtualService."""
    applied: list[dict] = []
    notes = list(plan.notes)
    if plan.dr_changed and plan.vs_changed and plan.destination_rule is not None:
        before = client.status().control_plane.snapshot
        applied += _post(client, [plan.destination_rule])
        if wait and not wait_synced(client, before):
            notes.append(f"not every proxy ACKed the new subsets within {SYNC_TIMEOUT_S:g}s; "
                         "applied the routes anyway (see `meshctl get proxies`)")
        applied += _post(client, [plan.virtual_service])
    elif plan.documents():
        applied += _post(client, plan.documents())
    return {"applied": applied, "notes": notes}


def _result(plan: wf.Plan, outcome: dict | None, dry_run: bool) -> dict:
    return {
        "service": plan.service,
        "summary": plan.summary,
        "dry_run": dry_run,
        "applied": (outcome or {}).get("applied", []),
        "notes": (outcome or {}).get("notes", plan.notes),
        "destinationRule": plan.destination_rule,
        "virtualService": plan.virtual_service,
    }


def _print(result: dict, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps(result, indent=2, sort_keys=True))
        return
    if fmt == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
        return
    print(result["summary"] + (" (dry run, nothing applied)" if result["dry_run"] else ""))
    for item in result["applied"]:
        print(f"  {item['resource']} {item['result']}")
    if not result["applied"] and not result["dry_run"]:
        print("  nothing to change")
    for note in result["notes"]:
        print(f"  note: {note}")


def catalog_labels(client: Client) -> dict[str, list[dict]]:
    """Each catalog service's instances' workload labels (``app``, meta keys, ``tag:<t>``), from the status."""
    services: dict[str, list[dict]] = {}
    for proxy in client.status().proxies:
        for svc in proxy.services:
            services.setdefault(svc.name, []).append(dict(svc.labels) or {"app": svc.name})
    return services


def _subset_labels(plan: wf.Plan, name: str) -> dict | None:
    for subset in ((plan.destination_rule or {}).get("spec") or {}).get("subsets") or []:
        if subset.get("name") == name:
            return subset.get("labels") or {}
    return None


def guard(plan: wf.Plan, catalog: dict[str, list[dict]], subsets: list[str], force: bool) -> list[str]:
    """Refuse (ConfigError) a change for a service the catalog does not have, or one that sends traffic to a
    subset no instance carries the labels of; with ``force``, the same findings come back as notes."""
    import difflib

    problems = []
    if plan.service not in catalog:
        close = difflib.get_close_matches(plan.service, list(catalog), n=1)
        problems.append(f"service {plan.service!r} is not in the catalog"
                        + (f"; did you mean {close[0]!r}?" if close else f" (it has: {', '.join(sorted(catalog))})"))
    else:
        for name in subsets:
            labels = _subset_labels(plan, name)
            if labels is None:
                continue
            matching = [i for i in catalog[plan.service] if all(i.get(k) == v for k, v in labels.items())]
            if not matching:
                selector = ",".join(f"{k}={v}" for k, v in labels.items())
                problems.append(f"subset {name!r} of {plan.service} ({selector}) has no instances in the catalog: "
                                "its traffic would fail with 503 (check the instances' Consul meta, or --label)")
    if problems and not force:
        raise ConfigError("; ".join(problems) + "; nothing applied (--force writes it anyway)")
    return [f"forced: {p}" for p in problems]


def _run(args, make: Callable[[dict | None, dict | None], wf.Plan], subsets: list[str] | None = None) -> int:
    client = client_for(args)
    dr, vs, stored = current(client, args.service)
    plan = make(dr, vs)
    plan.notes += guard(plan, catalog_labels(client), subsets or [], getattr(args, "force", False))
    check(plan, stored)
    outcome = None if args.dry_run else apply_plan(client, plan, wait=not args.no_wait)
    _print(_result(plan, outcome, args.dry_run), args.output)
    return 0


# --- commands ----------------------------------------------------------------------------------------------


def _headers(values: list[str] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    for value in values or []:
        name, sep, v = value.partition("=")
        name = name.strip().lower()
        if not sep or not name:
            raise ConfigError(f"--header {value!r}: expected NAME=VALUE, e.g. --header end-user=jason")
        out[name] = v
    return out


def cmd_split(args) -> int:
    weights = wf.parse_weights(args.weights)
    return _run(args, lambda dr, vs: wf.split(args.service, weights, dr, vs, label=args.label, namespace=args.namespace),
                [k for k, w in weights.items() if w > 0])


def cmd_route(args) -> int:
    headers = _headers(args.header)
    if args.remove == bool(args.to):
        raise ConfigError("give either --to SUBSET (add or change the route) or --remove (take it out)")
    return _run(args, lambda dr, vs: wf.route(args.service, headers, args.to, dr, vs, label=args.label,
                                              namespace=args.namespace, remove=args.remove),
                [args.to] if args.to else [])


def cmd_switch(args) -> int:
    return _run(args, lambda dr, vs: wf.switch(args.service, args.to, dr, vs, label=args.label, namespace=args.namespace),
                [args.to])


def cmd_rollback(args) -> int:
    return _run(args, lambda dr, vs: wf.rollback(args.service, dr, vs, label=args.label, namespace=args.namespace))


_ROUTE_KEYS = ("name", "match", "route")


def _compact(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def traffic_view(service: str, drs: list[dict], vss: list[dict]) -> dict:
    """Everything stored that changes ``service``'s traffic: its VirtualServices' rules (matches, destinations,
    faults, timeouts, retries, mirrors, rewrites, header edits), rules elsewhere that mirror to it, and its
    DestinationRules' policies (load balancing, connection pools, outlier detection, TLS) and subsets."""
    own_vs = [d for d in vss if service in ((d.get("spec") or {}).get("hosts") or ())]
    own_dr = [d for d in drs if (d.get("spec") or {}).get("host") == service]
    rules = []
    for doc in own_vs:
        for r in (doc.get("spec") or {}).get("http") or []:
            rules.append({"virtualService": doc["metadata"]["name"], "name": r.get("name", ""),
                          "match": r.get("match", []), "to": wf.describe(r["route"]) if r.get("route") else "-",
                          **{k: v for k, v in r.items() if k not in _ROUTE_KEYS}})
    mirrored_from = [f"{d['metadata']['name']}/{r.get('name') or '-'}" for d in vss
                     for r in (d.get("spec") or {}).get("http") or []
                     if (r.get("mirror") or {}).get("host") == service and d not in own_vs]
    policies = []
    for doc in own_dr:
        spec = doc.get("spec") or {}
        if spec.get("trafficPolicy"):
            policies.append({"destinationRule": doc["metadata"]["name"], "subset": "", "policy": spec["trafficPolicy"]})
        for sub in spec.get("subsets") or []:
            if sub.get("trafficPolicy"):
                policies.append({"destinationRule": doc["metadata"]["name"], "subset": sub["name"],
                                 "policy": sub["trafficPolicy"]})
    vs = own_vs[0] if own_vs else None
    return {
        "service": service,
        "subsets": [{"name": s["name"], "labels": s.get("labels", {})}
                    for d in own_dr for s in (d.get("spec") or {}).get("subsets") or []],
        "routes": rules,
        "policies": policies,
        "mirroredFrom": mirrored_from,
        "labels": ((vs or {}).get("metadata") or {}).get("labels", {}),
        "destinationRules": own_dr,
        "virtualServices": own_vs,
    }


def _print_view(out: dict) -> None:
    service = out["service"]
    subsets = ", ".join(f"{s['name']} ({','.join(f'{k}={v}' for k, v in s['labels'].items())})"
                        for s in out["subsets"])
    print(f"{service}: subsets {subsets or '-'}")
    if len(out["virtualServices"]) > 1:
        print(f"  warning: {len(out['virtualServices'])} VirtualServices name {service}: "
              + ", ".join(d["metadata"]["name"] for d in out["virtualServices"]))
    if not out["routes"]:
        print("  no VirtualService: traffic goes to every healthy instance")
    for r in out["routes"]:
        cond = _compact(r["match"]) if r["match"] else "everything else"
        print(f"  route {r['name'] or '-'}: {cond} -> {r['to']}")
        for key in sorted(k for k in r if k not in (*_ROUTE_KEYS, "virtualService", "to")):
            print(f"    {key}: {_compact(r[key])}")
    for p in out["policies"]:
        print(f"  policy {p['destinationRule']}{'/' + p['subset'] if p['subset'] else ''}: {_compact(p['policy'])}")
    for m in out["mirroredFrom"]:
        print(f"  mirrored from {m}")
    for k in (wf.ACTIVE_LABEL, wf.PREVIOUS_LABEL):
        if k in out["labels"]:
            print(f"  {k.rsplit('/', 1)[-1]}: {out['labels'][k]}")


def cmd_show(args) -> int:
    client = client_for(args)
    drs = client.resources(ResourceQuery(kind=dr_kind.KIND_NAME))
    vss = client.resources(ResourceQuery(kind=vs_kind.KIND_NAME))
    out = traffic_view(args.service, drs, vss)
    if args.output == "json":
        print(json.dumps(out, indent=2, sort_keys=True))
    elif args.output == "yaml":
        print(yaml.safe_dump(out, sort_keys=False), end="")
    else:
        _print_view(out)
    return 0


# --- parser -----------------------------------------------------------------------------------------------


subset = checked("subset", wf.check_subset_name)


def register(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``meshctl traffic`` to ``subparsers`` (``common`` brings --server and -o table|json|yaml)."""
    sp = subparsers.add_parser("traffic", parents=[common], help=HELP["traffic"],
                               description=DESCRIPTION)
    tsub = sp.add_subparsers(dest="traffic_command", required=True, metavar="COMMAND")

    edit = argparse.ArgumentParser(add_help=False)
    edit.add_argument("service", help="the service (Consul service name), e.g. reviews")
    edit.add_argument("--label", default=wf.DEFAULT_SUBSET_LABEL,
                      help="workload label that new subsets select on, SUBSET=<label value> (default %(default)s; "
                           "labels are Consul meta keys, app, and tag:<tag>)")
    edit.add_argument("-n", "--namespace", default="default", help="namespace of new resources (default %(default)s)")
    edit.add_argument("--dry-run", action="store_true", help="show the resulting resources, apply nothing")
    edit.add_argument("--force", action="store_true",
                      help="apply even for a service not in the catalog or a subset without instances")
    edit.add_argument("--no-wait", action="store_true",
                      help="do not wait for proxies to ACK new subsets before routing to them")

    def add(name, fn, help_text, epilog):
        p = tsub.add_parser(name, parents=[common, edit], help=help_text, description=help_text, epilog=epilog)
        p.set_defaults(fn=fn)
        return p

    p = add("split", cmd_split, "Send a service's traffic to subsets by weight (canary); header routes stay.",
            "Example: meshctl traffic split reviews v1=90 v2=10. Weights are whole percentages summing to 100; "
            "new subsets select --label=SUBSET (version=v2).")
    p.add_argument("weights", nargs="+", metavar="SUBSET=WEIGHT")

    p = add("route", cmd_route, "A/B: send requests carrying headers to one subset; other traffic unchanged.",
            "Example: meshctl traffic route reviews --header end-user=jason --to v2. Several --header must all "
            "match (exact). The route goes before the default route; --remove takes it out again.")
    p.add_argument("--header", action="append", required=True, metavar="NAME=VALUE", type=header,
                   help="exact header match (repeatable)")
    p.add_argument("--to", metavar="SUBSET", type=subset, help="the subset matching requests go to")
    p.add_argument("--remove", action="store_true", help="remove the route for these headers")

    p = add("switch", cmd_switch, "Blue-green: move all of a service's traffic to one subset at once.",
            "Example: meshctl traffic switch reviews --to green --label color. The previous destination is kept "
            "warm and recorded on the VirtualService (label traffic.mesh.io/previous) for `meshctl traffic rollback`.")
    p.add_argument("--to", required=True, metavar="SUBSET", type=subset, help="the color (subset) to send all traffic to")

    add("rollback", cmd_rollback, "Undo the last split or switch: restore the recorded previous destination.",
        "Example: meshctl traffic rollback reviews. Rolling back twice returns to where the split or switch went.")

    p = tsub.add_parser("show", parents=[common], help="Show everything that changes a service's traffic.",
                        description="Show a service's subsets, routes (matches, destinations, faults, timeouts, "
                                    "retries, mirrors, header edits) and DestinationRule policies.")
    p.add_argument("service")
    p.set_defaults(fn=cmd_show)
    return sp


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="control plane HTTP API URL (default: $MESHCORE_SERVER, the demo in "
                                         "./.meshcore-demo, then http://127.0.0.1:15000)")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table", help="output format")
    parser = MeshctlParser(prog="meshctl", description="Operate a meshcore service mesh.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    register(sub, common)
    return parser


def main(argv=None) -> int:
    """Standalone entry: ``python -m meshcore.cli.traffic split reviews v1=90 v2=10`` (``traffic`` optional)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] != ["traffic"]:
        argv.insert(0, "traffic")
    args = build_parser().parse_args(argv)
    return dispatch(args)


if __name__ == "__main__":
    sys.exit(main())
