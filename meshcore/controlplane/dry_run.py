"""``POST /v1/resources/dry-run``: what applying resources would change on every proxy, without applying.

The body is the same as ``POST /v1/resources`` (``{"files": [{"name", "content"}]}``); the set is
validated as apply validates it (each document, then across the store as it would be afterwards).
Then a :class:`MeshSnapshot` is built from the current catalog and the would-be resources, and each
connected proxy's routes and clusters are built from it (the same pure ``build_proxy`` the engine
uses) and compared with what the proxy has now (its published config). :func:`diff_proxy` is pure.

Answer (:class:`meshcore.api.operator.DryRunResponse`)::

    {"dry_run": true,
     "resources": [{"resource": "VirtualService/default/reviews", "result": "configured"}],
     "nodes": {"n1": {"added": ["cluster/outbound:reviews|productpage|v2"], "removed": [],
                      "changed": ["route/outbound:reviews:9080"], "diff": "--- n1 (now)\\n+++ ...",
                      "problems": []}}}

``problems`` lists what the proxy's publish check would refuse (the proxy would keep its config).
"""

from __future__ import annotations

import difflib
import json
from typing import TYPE_CHECKING, Iterable, Mapping

from google.protobuf import json_format
from google.protobuf.message import Message

from ..api.operator import ApplyResult, DryRunResponse, ProxyDiff
from ..errors import MeshError, Unavailable, ValidationError
from ..resources.loader import validate_set
from ..resources.model import Resource
from ..snapshot import MeshSnapshot
from ..xds.generate import CLUSTER, ROUTE
from ..compose import build_proxy
from ..xds.validate import validate_snapshot

if TYPE_CHECKING:
    from ..resources.store import ResourceStore
    from ._contexts import MeshView

# What the diff covers, in the order it is shown.
COMPARED = (("route", ROUTE), ("cluster", CLUSTER))


def _as_text(messages: Iterable[Message], kind: str) -> dict[str, str]:
    """``{"<kind>/<name>": pretty JSON}`` of xDS resources (deterministic: sorted keys)."""
    out = {}
    for m in messages:
        data = json_format.MessageToDict(m)
        out[f"{kind}/{getattr(m, 'name', '')}"] = json.dumps(data, indent=2, sort_keys=True)
    return out


def diff_proxy(node: str, before: Mapping[str, Iterable[Message]], after: Mapping[str, Iterable[Message]]) -> dict:
    """Compare one proxy's routes and clusters: names added, removed, changed and a unified diff of their JSON."""
    old: dict[str, str] = {}
    new: dict[str, str] = {}
    for kind, type_url in COMPARED:
        old.update(_as_text(before.get(type_url, ()), kind))
        new.update(_as_text(after.get(type_url, ()), kind))
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])

    def lines(texts: dict[str, str]) -> list[str]:
        out: list[str] = []
        for name in sorted(texts):
            out.append(f"# {name}\n")
            out.extend(line + "\n" for line in texts[name].splitlines())
        return out

    diff = "".join(difflib.unified_diff(lines(old), lines(new), fromfile=f"{node} (now)",
                                        tofile=f"{node} (after apply)", n=3))
    return {"added": added, "removed": removed, "changed": changed, "diff": diff}


def dry_run(store: "ResourceStore", mesh: "MeshView", resources: list[Resource]) -> DryRunResponse:
    """Validate ``resources`` against the store and show every connected proxy's resulting change."""
    existing = {r.key: r for r in store.list()}
    merged = {**existing, **{r.key: r for r in resources}}
    problems = validate_set(list(merged.values()))
    if problems:
        raise ValidationError(problems, "nothing would be applied")
    results = []
    for r in resources:
        old = existing.get(r.key)
        same = old is not None and old.canonical_json() == r.canonical_json()
        results.append(ApplyResult(resource=str(r.key), result="created" if old is None else
                                   ("unchanged" if same else "configured")))
    snap = mesh.snapshot()
    if snap is None:
        raise Unavailable("the control plane has no mesh snapshot yet (catalog or store not read); retry shortly")
    would = MeshSnapshot.build(snap.catalog, merged.values(), snap.trust_domain, snap.settings)
    nodes: dict[str, ProxyDiff] = {}
    for node, state in sorted(mesh.proxies().items()):
        published = mesh.published(node)  # what the proxy was sent; built from the current snapshot if nothing yet
        note = ""
        try:
            now = dict(published.resources) if published is not None else build_proxy(snap, state.info)
        except MeshError as exc:
            now, note = {}, f"its current config could not be built: {exc}"
        try:
            after = build_proxy(would, state.info)
            refused = validate_snapshot(node, after)
        except MeshError as exc:
            after, refused = now, [str(exc)]
        d = diff_proxy(node, now, after)
        nodes[node] = ProxyDiff(added=tuple(d["added"]), removed=tuple(d["removed"]), changed=tuple(d["changed"]),
                                diff=d["diff"], problems=tuple(refused), note=note)
    return DryRunResponse(resources=tuple(results), nodes=nodes)


__all__ = ["diff_proxy", "dry_run", "COMPARED"]
