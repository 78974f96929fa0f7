"""Load mesh resources from YAML/JSON text and files, reporting every problem at once.

Each problem is a :class:`~meshcore.errors.FieldError` ``(source, document, path, message)``;
all of them, across every file and document of one call, are raised together as one
:class:`~meshcore.errors.ValidationError`. Nothing is returned unless everything is valid, so
a caller that applies the result applies all or nothing.

Checked per document: ``apiVersion`` (must match the kind; Istio's of that kind, :data:`ISTIO_API_VERSIONS`, is read
as meshcore's with a note), ``kind`` (must be registered),
``metadata.name`` (DNS-1123 label), ``metadata.namespace`` (DNS-1123 label, default ``default``),
``metadata.labels`` (string map), ``metadata.annotations`` (string map; meshcore keeps only those it acts on,
:data:`KNOWN_ANNOTATIONS`), ``spec`` (the kind's schema); unknown fields anywhere are errors with a spelling
suggestion. Inert Kubernetes metadata (:data:`INERT_METADATA`) and a top-level ``status`` are accepted and ignored,
and Istio's root namespace ``istio-system`` is stored as meshcore's: each with a note (``notes=``). Across the whole
call: a (kind, namespace, name) given twice.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path as FsPath
from typing import Any, Mapping, Sequence

import yaml

from meshcore.errors import FieldError, ValidationError
from meshcore.naming import DEFAULT_NAMESPACE

from ..api._wire import deeper_than
from ._yaml import MAX_DEPTH, describe_yaml_error, iter_documents
from .model import Resource
from .registry import KINDS
from ..policies.authorization_policy.schema import DRY_RUN_ANNOTATIONS
from .kinds._fields import ROOT_NAMESPACE
from .schema import INVALID, Context, DNSLabel, LabelKey, Obj, Opaque, Path, Required, Str, StringMap, suggest, type_name

RESOURCE_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
STDIN_SOURCE = "<stdin>"

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")
_INERT_TOP_FIELDS = ("status",)
"""Written by a Kubernetes API server in an exported object (``kubectl get -o yaml``): accepted, ignored, noted."""

INERT_METADATA = ("creationTimestamp", "uid", "resourceVersion", "generation", "managedFields", "selfLink",
                  "ownerReferences", "finalizers", "generateName", "deletionTimestamp", "deletionGracePeriodSeconds")
"""Kubernetes object metadata with no meaning outside an API server: accepted so exported files load, ignored."""

_ISTIO_NETWORKING = ("networking.istio.io/v1", "networking.istio.io/v1beta1", "networking.istio.io/v1alpha3")
_ISTIO_SECURITY = ("security.istio.io/v1", "security.istio.io/v1beta1")
ISTIO_API_VERSIONS: dict[str, tuple[str, ...]] = {
    **{kind: _ISTIO_NETWORKING for kind in ("DestinationRule", "Gateway", "ServiceEntry", "Sidecar", "VirtualService")},
    **{kind: _ISTIO_SECURITY for kind in ("AuthorizationPolicy", "PeerAuthentication", "RequestAuthentication")},
}
"""The apiVersions of Istio's CRDs (istio/api ``customresourcedefinitions.gen.yaml``) for the kinds meshcore spells as
Istio does: a document with one of them is read as meshcore's own apiVersion of that kind, with a note, so an Istio
file loads as written."""

ISTIO_ROOT_NAMESPACE = "istio-system"
"""Istio's root namespace; meshcore's is ``meshcore-system``. A resource in ``istio-system`` is stored in
meshcore's root namespace (with a note), so a ported mesh-wide policy stays mesh-wide (a mesh-wide deny-all denies)."""

KNOWN_ANNOTATIONS = DRY_RUN_ANNOTATIONS
"""The annotations meshcore acts on: an AuthorizationPolicy's dry-run (evaluated and counted, not enforced)."""

METADATA = Obj(
    {
        "name": Required(DNSLabel()),
        "namespace": DNSLabel(),
        "labels": StringMap(key=LabelKey(), value=Str(max_len=63)),
        "annotations": StringMap(key=LabelKey()),
        **{f: Opaque() for f in INERT_METADATA},
    }
)


def _dry_run_problem(value: str) -> str | None:
    if value not in ("true", "false"):
        return f'must be "true" or "false", got {json.dumps(value)}'
    return None


def _metadata_notes(doc: Mapping, meta: dict, kind: str, add_note) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The namespace to store under and the annotations to keep; ``add_note(path, text)`` for what is dropped."""
    namespace = meta.get("namespace") or DEFAULT_NAMESPACE
    if namespace == ISTIO_ROOT_NAMESPACE:
        namespace = ROOT_NAMESPACE
        add_note("metadata.namespace", f"{ISTIO_ROOT_NAMESPACE!r} is Istio's root namespace: stored in meshcore's, "
                                       f"{ROOT_NAMESPACE!r} (a policy without a selector there applies mesh-wide)")
    for key in _INERT_TOP_FIELDS:
        if key in doc:
            add_note(key, "ignored: written by a Kubernetes API server, no meaning to meshcore")
    for key in INERT_METADATA:
        if key in meta:
            add_note(f"metadata.{key}", "ignored: Kubernetes object metadata, no meaning to meshcore")
    kept: list[tuple[str, str]] = []
    for key, value in sorted((meta.get("annotations") or {}).items()):
        if key in DRY_RUN_ANNOTATIONS and kind == "AuthorizationPolicy":
            kept.append((key, value))
        elif key in DRY_RUN_ANNOTATIONS:
            add_note(f'metadata.annotations["{key}"]', f"ignored: dry-run applies to AuthorizationPolicy only, not {kind}")
        else:
            add_note(f'metadata.annotations["{key}"]', "ignored: meshcore acts only on the annotations "
                                                        + ", ".join(KNOWN_ANNOTATIONS))
    return namespace, tuple(kept)


def validate_document(doc: Any, source: str, document: int | None,
                      notes: list[FieldError] | None = None) -> tuple[Resource | None, list[FieldError]]:
    """Validate one parsed document; return the resource (None when invalid) and every problem found.

    ``notes`` (when given) receives what was accepted but changed or dropped: inert Kubernetes metadata and
    ``status``, annotations meshcore does not act on, Istio's root namespace stored as meshcore's.
    """
    ctx = Context()
    root = Path()
    if not isinstance(doc, Mapping):
        ctx.add(root, f"a resource must be a mapping with apiVersion, kind, metadata and spec, got {type_name(doc)}")
        return None, ctx.issues.to_field_errors(source, document)

    for key in doc:
        if key not in _TOP_FIELDS and key not in _INERT_TOP_FIELDS:
            msg = f"unknown field {json.dumps(str(key))}"
            hint = suggest(str(key), _TOP_FIELDS)
            msg += f"; did you mean {json.dumps(hint)}?" if hint else "; known fields: " + ", ".join(_TOP_FIELDS)
            ctx.add(root.field(str(key)), msg)

    kind_name = doc.get("kind")
    spec_def = None
    if kind_name is None:
        ctx.add(root.field("kind"), "required field is missing; known kinds: " + ", ".join(KINDS))
    elif not isinstance(kind_name, str):
        ctx.add(root.field("kind"), f"must be a string, got {type_name(kind_name)}")
    elif kind_name not in KINDS:
        msg = f"unknown kind {json.dumps(kind_name)}"
        hint = suggest(kind_name, KINDS)
        if hint:
            msg += f"; did you mean {json.dumps(hint)}?"
        ctx.add(root.field("kind"), msg + " (known kinds: " + ", ".join(KINDS) + ")")
    else:
        spec_def = KINDS[kind_name]

    api_version = doc.get("apiVersion")
    if api_version is None:
        hint = f' (for {spec_def.kind}: "{spec_def.api_version}")' if spec_def else ""
        ctx.add(root.field("apiVersion"), "required field is missing" + hint)
    elif not isinstance(api_version, str):
        ctx.add(root.field("apiVersion"), f"must be a string, got {type_name(api_version)}")
    elif spec_def is not None and api_version != spec_def.api_version and api_version not in (
            istio := ISTIO_API_VERSIONS.get(spec_def.kind, ())):
        ctx.add(
            root.field("apiVersion"),
            f"must be {json.dumps(spec_def.api_version)}"
            + (f" (or Istio's {', '.join(istio)})" if istio else "")
            + f" for kind {spec_def.kind}, got {json.dumps(api_version)}",
        )

    metadata = doc.get("metadata")
    meta = INVALID
    if metadata is None:
        ctx.add(root.field("metadata"), "required field is missing (at least metadata.name)")
    else:
        meta = METADATA.check(metadata, root.field("metadata"), ctx)
        if meta is not INVALID:
            for key in DRY_RUN_ANNOTATIONS:
                value = (meta.get("annotations") or {}).get(key)
                problem = None if value is None else _dry_run_problem(value)
                if problem:
                    ctx.add(root.field("metadata").field("annotations").key(key), problem)

    spec = INVALID
    if spec_def is not None:
        if doc.get("spec") is None and spec_def.spec_required:
            ctx.add(root.field("spec"), "required field is missing")
        else:
            spec = spec_def.check_spec(doc.get("spec"), root.field("spec"), ctx)

    if ctx.issues or spec_def is None or meta is INVALID or spec is INVALID:
        return None, ctx.issues.to_field_errors(source, document)

    def add_note(path: str, text: str) -> None:
        if notes is not None:
            notes.append(FieldError(source, document, path, text))

    if api_version != spec_def.api_version:
        add_note("apiVersion", f"{api_version} is Istio's: read as {spec_def.api_version}")
    for path, text in ctx.notes.items:  # deprecated spellings read as the current ones
        add_note(path, text)
    namespace, annotations = _metadata_notes(doc, meta, spec_def.kind, add_note)
    resource = Resource(
        api_version=spec_def.api_version,
        kind=spec_def.kind,
        name=meta["name"],
        namespace=namespace,
        spec=spec,
        labels=tuple(sorted((meta.get("labels") or {}).items())),
        annotations=annotations,
    )
    _ = resource.typed  # parse, don't validate: the typed spec comes out of validation, once
    return resource, []


_too_deep = f"JSON error: the document nests deeper than {MAX_DEPTH} levels"


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse(text: str, source: str) -> tuple[list[tuple[int, Any]], list[FieldError]]:
    """Split ``text`` into ``(document index, data)`` pairs; syntax errors become FieldErrors.

    ``*.json`` sources are parsed as JSON (one object, or a list of objects = several documents);
    everything else as multi-document YAML. Empty YAML documents (a stray ``---``) are skipped but
    still count for the document numbers, so numbers match what the operator sees.
    """
    docs: list[tuple[int, Any]] = []
    if source.lower().endswith(".json"):
        try:
            data = json.loads(text, parse_constant=_refuse_constant)
        except json.JSONDecodeError as exc:
            return [], [FieldError(source, None, "", f"JSON syntax error at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
        except (RecursionError, ValueError) as exc:
            return [], [FieldError(source, None, "", _too_deep if isinstance(exc, RecursionError) else f"JSON error: {exc}")]
        if isinstance(data, (dict, list)) and deeper_than(data, MAX_DEPTH + 1):  # +1: the list of documents
            return [], [FieldError(source, None, "", _too_deep)]
        items = data if isinstance(data, list) else [data]
        return list(enumerate(items)), []
    count = 0
    try:
        for data in iter_documents(text):
            if data is not None:
                docs.append((count, data))
            count += 1
        return docs, []
    except yaml.YAMLError as exc:
        # the document being parsed when the error struck is the one after those already read
        return docs, [FieldError(source, count, "", describe_yaml_error(exc))]


def _check_duplicates(loaded: list[tuple[str, int | None, Resource]]) -> list[FieldError]:
    first: dict[tuple[str, str, str], tuple[str, int | None]] = {}
    errors: list[FieldError] = []
    for source, document, res in loaded:
        key = (res.kind, res.namespace, res.name)
        if key in first:
            src0, doc0 = first[key]
            where = src0 + (f" (document {doc0 + 1})" if doc0 is not None else "")
            errors.append(
                FieldError(
                    source,
                    document,
                    "metadata.name",
                    f"duplicate {res.kind} {res.namespace}/{res.name}: also defined in {where}; "
                    "each resource may appear once per apply",
                )
            )
        else:
            first[key] = (source, document)
    return errors


def _load_texts(texts: Sequence[tuple[str, str]], errors: list[FieldError],
                notes: list[FieldError] | None = None) -> list[Resource]:
    loaded: list[tuple[str, int | None, Resource]] = []
    for source, text in texts:
        docs, syntax = _parse(text, source)
        errors.extend(syntax)
        for index, data in docs:
            res, problems = validate_document(data, source, index, notes)
            errors.extend(problems)
            if res is not None:
                loaded.append((source, index, res))
    errors.extend(_check_duplicates(loaded))
    return [r for _, _, r in loaded]


def load_documents(text: str, source: str, notes: list[FieldError] | None = None) -> list[Resource]:
    """Parse and validate every document of ``text``; raise one ValidationError listing every problem.

    ``notes`` receives what was accepted but ignored (see :func:`validate_document`)."""
    errors: list[FieldError] = []
    resources = _load_texts([(source, text)], errors, notes)
    if errors:
        raise ValidationError(errors, summary=f"invalid resources in {source}")
    return resources


def expand_paths(paths: Sequence[str | FsPath]) -> tuple[list[tuple[str, FsPath | None]], list[FieldError]]:
    """Turn the given paths into ``(source name, file path)``; a directory yields its resource files, sorted.

    ``-`` yields ``("<stdin>", None)``. Missing paths and empty directories are reported as errors.
    """
    out: list[tuple[str, FsPath | None]] = []
    errors: list[FieldError] = []
    for raw in paths:
        if str(raw) == STDIN:
            out.append((STDIN_SOURCE, None))
            continue
        p = FsPath(raw)
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in RESOURCE_SUFFIXES)
            if not files:
                errors.append(FieldError(str(p), None, "", "directory has no *.yaml, *.yml or *.json files"))
            out.extend((str(f), f) for f in files)
        elif p.is_file():
            out.append((str(p), p))
        else:
            errors.append(FieldError(str(p), None, "", "no such file or directory"))
    return out, errors


_stdin_read: tuple[object, str] | None = None  # (the sys.stdin that was read, its text)


def read_stdin() -> str:
    """Standard input, read once: a command that validates ``-f -`` offline and then sends the same files to the
    control plane sees the same text both times (a second read would find nothing). Read again when
    ``sys.stdin`` is another object, or after :func:`forget_stdin`."""
    global _stdin_read
    if _stdin_read is None or _stdin_read[0] is not sys.stdin:
        _stdin_read = (sys.stdin, sys.stdin.read())
    return _stdin_read[1]


def forget_stdin() -> None:
    """The next :func:`read_stdin` reads again (an in-process caller running another command)."""
    global _stdin_read
    _stdin_read = None


def load_files(paths: Sequence[str | FsPath], notes: list[FieldError] | None = None) -> list[Resource]:
    """Load every resource from files, directories (``*.yaml|*.yml|*.json``, sorted) and ``-`` (stdin).

    All problems of all files are raised together as one ValidationError; duplicates are
    checked across all files of the call.
    """
    files, errors = expand_paths(paths)
    texts: list[tuple[str, str]] = []
    for source, path in files:
        try:
            texts.append((source, read_stdin() if path is None else path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(source, None, "", f"cannot read: {exc}"))
    resources = _load_texts(texts, errors, notes)
    if errors:
        raise ValidationError(errors, summary="invalid resources")
    return resources


def validate_set(resources: Sequence[Resource]) -> list[FieldError]:
    """Checks across resources, over everything that will be stored together (store contents + applied).

    A VirtualService's subsets must exist in the DestinationRule of their host, and a host has one
    DestinationRule and one VirtualService. Each error's source is the resource (``Kind/ns/name``).
    Not run by :func:`load_files` (a file may rely on resources already stored): callers that know
    the whole set (the operator API's apply, ``meshctl traffic``) call it.
    """
    from ..policies.destination_rule import schema as destination_rule
    from ..policies.virtual_service import schema as virtual_service
    from ..policies.service_entry import schema as service_entry
    from ..policies.sidecar import schema as sidecar

    return (destination_rule.validate_set(resources) + virtual_service.validate_set(resources)
            + service_entry.validate_set(resources) + sidecar.validate_set(resources))


__all__ = ["DRY_RUN_ANNOTATIONS", "INERT_METADATA", "ISTIO_ROOT_NAMESPACE", "KNOWN_ANNOTATIONS", "validate_set", "load_documents", "load_files", "validate_document", "expand_paths", "RESOURCE_SUFFIXES"]
