"""``meshctl apply --dry-run``: the change each proxy would get, shown without applying anything.

Posts the files to the control plane's ``POST /v1/resources/dry-run`` (validated exactly as apply
validates them) and prints, per proxy, which routes and clusters would be added, removed or changed,
with a unified diff of their xDS JSON. ``-o json`` prints ``{node: {added, removed, changed, diff, problems}}``.
"""

from __future__ import annotations

import json

import yaml

from ..api._wire import encode
from ..api.operator import ApplyRequest, DryRunResponse, ResourceFile
from ._client import Client

DRY_RUN_PATH = "/v1/resources/dry-run"


def render(result: DryRunResponse) -> str:
    """The dry-run answer for a person: each resource's result, then each proxy's change and diff."""
    out = [f"{r.resource} {r.result} (dry run, nothing applied)" for r in result.resources]
    for node, change in sorted(result.nodes.items()):
        if change.unchanged:
            out.append(f"{node}: no change")
            continue
        out.append(f"{node}: {len(change.added)} added, {len(change.removed)} removed, "
                   f"{len(change.changed)} changed")
        out += [f"  + {n}" for n in change.added] + [f"  - {n}" for n in change.removed]
        out += [f"  ~ {n}" for n in change.changed]
        out += [f"  ! the proxy would refuse it: {p}" for p in change.problems]
        if change.note:
            out.append(f"  note: {change.note}")
        if change.diff:
            out.append(change.diff.rstrip("\n"))
    if not result.nodes:
        out.append("no proxy is connected: nothing to compare against")
    return "\n".join(out)


def show_dry_run(client: Client, files: list[ResourceFile], fmt: str) -> int:
    """Run the dry run for ``files`` and print it in ``fmt`` (table, json, yaml)."""
    result = client.dry_run(ApplyRequest(files=tuple(files)))
    if fmt == "json":
        print(json.dumps(encode(result.nodes), indent=2, sort_keys=True))
    elif fmt == "yaml":
        print(yaml.safe_dump(encode(result.nodes), sort_keys=True), end="")
    else:
        print(render(result))
    return 0


__all__ = ["render", "show_dry_run", "DRY_RUN_PATH"]
