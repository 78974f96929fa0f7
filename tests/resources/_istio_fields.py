"""Istio's field list for the kinds meshcore spells like Istio's, and what meshcore does with each field.

``derive(crd_text)`` reads Istio's published CRDs (istio/api ``kubernetes/customresourcedefinitions.gen.yaml``;
the copy this project measured against is named in the data file's header) and lists every leaf field of
VirtualService, DestinationRule, AuthorizationPolicy and PeerAuthentication (``spec.http[].retries.attempts``:
``[]`` a list item, ``{}`` a map value). ``status_of(kind, field)`` asks meshcore's own schema: ``supported`` (a
field it validates and honours), ``refused`` (Istio has it, it has no meaning here: validation gives the reason),
``missing`` (not implemented yet: validation refuses it as an unknown field).

``python -m tests.resources._istio_fields CRDS.yaml`` rewrites ``tests/resources/data/istio-fields.yaml`` from the
CRDs and the current schemas (review the diff: a field that moved from supported is a regression).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml

from meshcore.resources.registry import KINDS
from meshcore.resources.schema import Custom, Field, ListOf, MapOf, Obj

KIND_NAMES = ("VirtualService", "DestinationRule", "AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication",
              "Gateway", "ServiceEntry", "Sidecar")
DATA = Path(__file__).resolve().parents[1] / "resources" / "data" / "istio-fields.yaml"
API_VERSIONS = DATA.with_name("istio-api-versions.yaml")


def _leaves(schema: dict, path: str, out: list[str]) -> None:
    props = schema.get("properties")
    if props:
        for key, sub in props.items():
            _leaves(sub, f"{path}.{key}", out)
        return
    items = schema.get("items") or {}
    if schema.get("type") == "array" and items.get("properties"):
        _leaves(items, path + "[]", out)
        return
    extra = schema.get("additionalProperties")
    if schema.get("type") == "object" and isinstance(extra, dict) and extra.get("properties"):
        _leaves(extra, path + "{}", out)
        return
    out.append(path)


def derive(crd_text: str) -> dict[str, list[str]]:
    """Every leaf field of each kind's served-and-stored version, in the CRD's order."""
    out: dict[str, list[str]] = {}
    for doc in yaml.safe_load_all(crd_text):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        kind = doc["spec"]["names"]["kind"]
        if kind not in KIND_NAMES:
            continue
        versions = doc["spec"]["versions"]
        version = next((v for v in versions if v.get("storage")), versions[0])
        fields: list[str] = []
        _leaves(version["schema"]["openAPIV3Schema"]["properties"]["spec"], "spec", fields)
        out[kind] = fields
    return out


def derive_api_versions(crd_text: str) -> dict[str, list[str]]:
    """``group/version`` of every version each kind's CRD serves, sorted."""
    out: dict[str, list[str]] = {}
    for doc in yaml.safe_load_all(crd_text):
        if not doc or doc.get("kind") != "CustomResourceDefinition":
            continue
        kind = doc["spec"]["names"]["kind"]
        if kind in KIND_NAMES:
            out[kind] = sorted(f"{doc['spec']['group']}/{v['name']}" for v in doc["spec"]["versions"]
                               if v.get("served", True))
    return dict(sorted(out.items()))


def _unwrap(schema: Any) -> Any:
    while True:
        if isinstance(schema, Field):
            schema = schema.schema
        elif isinstance(schema, Custom):
            schema = schema.inner
        elif isinstance(schema, ListOf):
            schema = schema.item
        elif isinstance(schema, MapOf):
            schema = schema.value
        else:
            return schema


def status_of(kind: str, field: str) -> tuple[str, str]:
    """(``supported`` | ``refused`` | ``deprecated`` | ``missing``, the reason when refused, the current spelling when
    deprecated) from meshcore's schema of ``kind``."""
    schema: Any = KINDS[kind].validate.__self__  # type: ignore[attr-defined]
    for part in field.replace("[]", "").replace("{}", "").split(".")[1:]:
        schema = _unwrap(schema)
        if not isinstance(schema, Obj):
            return "supported", ""  # meshcore takes this value whole (e.g. retries.backoff as a duration)
        if part in schema.refused:
            return "refused", schema.refused[part]
        if part in schema.deprecated:
            return "deprecated", "read as " + schema.deprecated[part].into
        if part not in schema.fields:
            return "missing", ""
        schema = schema.fields[part]
    return "supported", ""


def render(fields: dict[str, list[str]], source: str) -> str:
    lines = [
        "# Istio's fields of the kinds meshcore spells like Istio's, and what meshcore does with each.",
        f"# Derived from {source} by tests/resources/_istio_fields.py (written by this project; Istio's CRDs are",
        "# Apache-2.0, the Istio Authors). supported: validated and honoured; refused: no meaning on VMs or needs a kind",
        "# meshcore lacks, validation says why and what to use; deprecated: Istio's deprecated spelling, read as the",
        "# current field with a note; missing: not implemented yet (an unknown-field error).",
    ]
    for kind in KIND_NAMES:
        lines.append(f"{kind}:")
        for f in fields.get(kind, []):
            status, reason = status_of(kind, f)
            value = status if not reason else "{" + status + ": " + json.dumps(reason) + "}"
            lines.append(f"  {f}: {value}")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    crds = Path(argv[0])
    source = ("Istio's CRDs (istio/api kubernetes/customresourcedefinitions.gen.yaml "
              + "at commit " + next((ln.split("at commit", 1)[1].strip().rstrip(".") for ln in crds.read_text().splitlines()[:5]
                      if "at commit" in ln), "unknown commit") + ")")
    DATA.parent.mkdir(parents=True, exist_ok=True)
    DATA.write_text(render(derive(crds.read_text()), f"{source}"))
    API_VERSIONS.write_text(f"# The apiVersions Istio serves for each kind, derived from {source} by\n"
                            "# tests/resources/_istio_fields.py; meshcore reads them as its own (loader.ISTIO_API_VERSIONS).\n"
                            + yaml.safe_dump(derive_api_versions(crds.read_text()), sort_keys=False))
    print(f"wrote {DATA} and {API_VERSIONS}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
