"""Config entries -> meshcore resources, with every difference reported (pure: no IO, no clock).

The rule where a Consul entry and a meshcore resource speak of the same thing: **meshcore's own
resource wins**, per service and concern, and the compiled one is reported as ``overridden``:

* authorization: an AuthorizationPolicy of meshcore's own whose selector is ``app: <service>``
  replaces the intentions compiled for that destination (mesh- and namespace-wide policies of
  meshcore's own combine with compiled intentions as any two policies do: DENY first, then ALLOW);
* routing: a VirtualService of meshcore's own whose ``hosts`` name the service replaces what its
  router, splitter and resolver redirect/default subset compile to;
* destination: a DestinationRule of meshcore's own for the host replaces what its resolver and the
  ``UpstreamConfig`` overrides naming it compile to.

Every compiled document goes through the loader's validation (the same as ``meshctl apply``) and the
cross-resource checks over meshcore's own resources plus the compiled ones; a compiled document that
fails is left out and reported as ``invalid`` with the entries it came from.
"""

from __future__ import annotations

from typing import Iterable, Sequence

from ..resources.loader import validate_document, validate_set
from ..resources.model import Resource
from ._common import Out, Report, partition_problem
from .intentions import compile_intentions
from .model import ENTRY_KINDS, ORIGIN, ORIGIN_LABEL, CompileOptions, Compiled, ConfigEntry
from .traffic import compile_traffic


def is_compiled(resource: Resource) -> bool:
    """Whether ``resource`` was compiled from Consul config entries (its origin label)."""
    return dict(resource.labels).get(ORIGIN_LABEL) == ORIGIN


def _owner(existing: Sequence[Resource], out: Out) -> Resource | None:
    """meshcore's own resource that decides what ``out`` is about, if any (see the module docstring)."""
    if not out.service:
        return None
    for r in sorted(existing, key=lambda r: (r.namespace, r.name)):
        if is_compiled(r):
            continue
        spec = r.spec or {}
        if out.concern == "authz" and r.kind == "AuthorizationPolicy":
            if ((spec.get("selector") or {}).get("matchLabels") or {}).get("app") == out.service:
                return r
        elif out.concern == "traffic" and r.kind == "VirtualService":
            if out.service in (spec.get("hosts") or ()):
                return r
        elif out.concern == "destination" and r.kind == "DestinationRule":
            if spec.get("host") == out.service:
                return r
    return None


def compile_entries(entries: Iterable[ConfigEntry], options: CompileOptions | None = None,
                    existing: Sequence[Resource] = ()) -> Compiled:
    """Compile ``entries`` (any kinds; unsupported ones are reported) against meshcore's ``existing`` resources."""
    options = options or CompileOptions()
    report = Report()
    usable: list[ConfigEntry] = []
    seen: set[tuple[str, str]] = set()
    for e in sorted(entries, key=lambda e: (e.kind, e.name)):
        if e.kind not in ENTRY_KINDS:
            report.unsupported(e, "", f"meshcore does not implement {e.kind} config entries; it has no effect")
            continue
        if (e.kind, e.name) in seen:
            report.add(e, "", "invalid", f"{e.ref} is defined twice ({e.source}); the first is used")
            continue
        seen.add((e.kind, e.name))
        if (e.get("Namespace") or "default") not in ("default", "*") and e.kind != "service-intentions":
            report.unsupported(e, "Namespace", "Consul Enterprise namespaces are not supported for this kind; "
                                               "left out")
            continue
        if not partition_problem(e, report):
            usable.append(e)
    outs = compile_intentions([e for e in usable if e.kind == "service-intentions"], options, report)
    outs += compile_traffic([e for e in usable if e.kind != "service-intentions"], options, report)
    kept: list[tuple[Out, Resource]] = []
    for out in outs:
        owner = _owner(existing, out)
        if owner is not None:
            for ref in out.entries:
                report.add(ref, "", "overridden", f"meshcore's own {owner.key} decides {out.concern} for "
                                                  f"{out.service}; what {ref} says about it is not applied")
            continue
        resource, errors = validate_document(out.doc, f"consul:{','.join(out.entries)}", None)
        if resource is None:
            for err in errors:
                for ref in out.entries:
                    report.add(ref, err.path, "invalid", f"compiles to an invalid {out.doc['kind']}: {err.message}")
            continue
        kept.append((out, resource))
    own = [r for r in existing if not is_compiled(r)]
    while kept:
        by_key = {str(r.key): (o, r) for o, r in kept}
        bad = {e.source: e for e in validate_set(own + [r for _, r in kept]) if e.source in by_key}
        if not bad:
            break
        for key, err in sorted(bad.items()):
            out, _ = by_key[key]
            for ref in out.entries:
                report.add(ref, err.path, "invalid", f"compiled {key} is left out: {err.message}")
        kept = [(o, r) for o, r in kept if str(r.key) not in bad]
    resources = tuple(sorted((r for _, r in kept), key=lambda r: (r.kind, r.namespace, r.name)))
    findings = tuple(dict.fromkeys(report.findings))
    return Compiled(resources=resources, findings=findings)
