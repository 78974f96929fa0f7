"""``meshctl consul``: Consul config entries in meshcore's own spelling.

* ``meshctl consul import [-f FILE|DIR ...] [--catalog files:DIR|consul] [--intentions-default allow|deny]
  [--dry-run] [-o table|json|yaml]``: reads config entries (from Consul at ``CONSUL_HTTP_ADDR`` when no
  ``-f`` is given, else from JSON/HCL files as ``consul config write`` takes them), compiles them as the
  control plane does and prints the meshcore resources as YAML, to save and ``meshctl apply -f``; every
  finding (an unsupported field, with the entry's kind, name and field path) goes to stderr as a comment.
  Imported resources carry the label ``mesh.io/imported-from`` instead of the ``mesh.io/origin: consul`` of
  compiled ones, so once applied they are meshcore's own and win over the entries (docs/consul.md).
  ``--dry-run`` shows what applying them would change on each proxy (``apply --dry-run``'s diff);
  ``-o json`` prints ``{"resources": [...], "findings": [...]}`` (with ``--dry-run``: the per-proxy diff).

* ``meshctl consul check [-f ...] [--offline] [-o ...]``: compiles the entries against the control plane's own
  resources (``GET /v1/resources``; ``--offline``: none) and lists every finding, the overlaps first: an
  entry a meshcore resource overrides for the same service (meshcore's own resource wins), an unsupported
  field, an invalid result. Exits 3 when there is any finding but notes (for scripts and CI).

The catalog gives source services their SPIFFE identity (their service account); by default it is read
from Consul when the entries are, and from no catalog (service name = service account) for files.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import yaml

from ..consul_entries import (
    ENTRY_KINDS,
    ENTRY_LABEL,
    ORIGIN_LABEL,
    CatalogFacts,
    CompileOptions,
    Compiled,
    ConfigEntry,
    compile_entries,
    load_entry_files,
)
from ..errors import MeshError
from ..resources.model import Resource
from ._commands import HELP

IMPORTED_LABEL = "mesh.io/imported-from"


def _consul_entries() -> tuple[list[ConfigEntry], str]:
    from ..catalog._consul_settings import ConsulSettings
    from ..resources.consul_entries import ConsulEntryWatcher

    settings = ConsulSettings.from_env()
    watcher = ConsulEntryWatcher(settings)
    client = settings.client()
    entries: list[ConfigEntry] = []
    for kind in ENTRY_KINDS:
        entries.extend(watcher.read(client, kind)[0])
    return entries, watcher.datacenter()


def _catalog(spec: str) -> CatalogFacts:
    if not spec:
        return CatalogFacts()
    if spec == "consul":
        from ..catalog.consul import ConsulCatalogSource, ConsulSettings

        return CatalogFacts.of(ConsulCatalogSource(ConsulSettings.from_env()).read_catalog()[0])
    if spec.startswith("files:") and spec[6:]:
        from pathlib import Path

        from ..catalog.files import FileCatalogSource

        return CatalogFacts.of(FileCatalogSource(Path(spec[6:])).poll(None, 0).catalog)
    raise MeshError(f"--catalog {spec!r}: use consul or files:DIR (Consul service-definition files)")


def imported(resource: Resource) -> Resource:
    """A compiled resource as meshcore's own: the origin label replaced by ``mesh.io/imported-from``."""
    labels = dict(resource.labels)
    labels.pop(ORIGIN_LABEL, None)
    entry = labels.pop(ENTRY_LABEL, "")
    if entry:
        labels[IMPORTED_LABEL] = entry
    return Resource(api_version=resource.api_version, kind=resource.kind, name=resource.name,
                    namespace=resource.namespace, spec=resource.spec, labels=tuple(sorted(labels.items())))


def _own_resources(args: argparse.Namespace) -> list[Resource]:
    """meshcore's own resources in the control plane (the compiled ones left out)."""
    from ..api.operator import ResourceQuery
    from ..resources.loader import validate_document
    from ._client import Client, discover_server

    client = Client(discover_server(getattr(args, "server", None)), token=getattr(args, "token", None))
    out = []
    for doc in client.resources(ResourceQuery()):
        if ((doc.get("metadata") or {}).get("labels") or {}).get(ORIGIN_LABEL) == "consul":
            continue
        resource, _ = validate_document(doc, "control plane", None)
        if resource is not None:
            out.append(resource)
    return out


def compile_for_import(args: argparse.Namespace, existing: list[Resource] | None = None) -> Compiled:
    if args.filename:
        entries, datacenter = load_entry_files(args.filename), args.datacenter or "dc1"
        catalog_spec = args.catalog or ""
    else:
        entries, datacenter = _consul_entries()
        datacenter = args.datacenter or datacenter
        catalog_spec = args.catalog or "consul"
    options = CompileOptions(trust_domain=args.trust_domain, default_intention=args.intentions_default,
                             datacenter=datacenter, catalog=_catalog(catalog_spec))
    result = compile_entries(entries, options, existing or [])
    return Compiled(resources=tuple(imported(r) for r in result.resources), findings=result.findings)


def as_yaml(resources: Any) -> str:
    return yaml.safe_dump_all([r.to_document() for r in resources], sort_keys=False)


def cmd_import(args: argparse.Namespace) -> int:
    result = compile_for_import(args)
    for f in result.findings:
        print(f"# {f}", file=sys.stderr)
    if args.dry_run:
        from ..api.operator import ResourceFile
        from ._client import Client, discover_server
        from .dry_run import show_dry_run

        if not result.resources:
            print("the entries compile to no resources: nothing to compare", file=sys.stderr)
            return 0
        client = Client(discover_server(getattr(args, "server", None)), token=getattr(args, "token", None))
        return show_dry_run(client, [ResourceFile(name="consul-import.yaml", content=as_yaml(result.resources))],
                            args.output)
    if args.output == "json":
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        print(as_yaml(result.resources), end="")
    return 0


EXIT_FINDINGS = 3
_ORDER = {"overridden": 0, "invalid": 1, "unsupported": 2, "note": 3}


def cmd_check(args: argparse.Namespace) -> int:
    result = compile_for_import(args, [] if args.offline else _own_resources(args))
    findings = sorted(result.findings, key=lambda f: (_ORDER[f.severity], f.entry, f.field))
    if args.output == "json":
        print(json.dumps([f.to_json() for f in findings], indent=2))
    elif args.output == "yaml":
        print(yaml.safe_dump([f.to_json() for f in findings], sort_keys=False), end="")
    else:
        for f in findings:
            print(f)
        print(f"{len(result.resources)} resource(s) from the entries, {len(findings)} finding(s)")
    return EXIT_FINDINGS if any(f.severity != "note" for f in findings) else 0


def _entry_options(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("-f", "--filename", action="append",
                    help="config entry file (.json/.hcl) or directory (repeatable); default: read Consul "
                         "(CONSUL_HTTP_ADDR, CONSUL_HTTP_TOKEN)")
    sp.add_argument("--catalog", help="where source services' identities come from: consul or files:DIR "
                                      "(default: consul when reading Consul, none for files)")
    sp.add_argument("--intentions-default", choices=("allow", "deny"), default="allow",
                    help="Consul's ACL default policy: what no intention decides (default %(default)s)")
    sp.add_argument("--trust-domain", default="cluster.local", help="the mesh's trust domain (default %(default)s)")
    sp.add_argument("--datacenter", help="the entries' datacenter, for resolver failover (default: Consul's)")


def register(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``consul import`` and ``consul check``."""
    sp = subparsers.add_parser("consul", parents=[common], help=HELP["consul"], description=HELP["consul"])
    sub = sp.add_subparsers(dest="consul_command", required=True, metavar="{import,check}")
    im = sub.add_parser("import", parents=[common], help="Config entries -> meshcore resource YAML.",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _entry_options(im)
    im.add_argument("--dry-run", action="store_true",
                    help="show each proxy's change if the resources were applied (the control plane's diff)")
    im.set_defaults(fn=cmd_import)
    ck = sub.add_parser("check", parents=[common], help="Findings: what meshcore does not do as the entries say, "
                                                        f"overlaps with its own resources (exit {EXIT_FINDINGS}).",
                        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _entry_options(ck)
    ck.add_argument("--offline", action="store_true", help="do not ask the control plane for its own resources")
    ck.set_defaults(fn=cmd_check)


__all__ = ["EXIT_FINDINGS", "IMPORTED_LABEL", "cmd_check", "cmd_import", "compile_for_import", "imported", "register"]
