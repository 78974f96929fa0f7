"""Load mesh resources from YAML/JSON text and files, reporting every problem at once.

Each problem is a :class:`~meshcore.errors.FieldError` ``(source, document, path, message)``;
all of them, across every file and document of one call, are raised together as one
:class:`~meshcore.errors.ValidationError`. Nothing is returned unless everything is valid, so
a caller that applies the result applies all or nothing.

Checked per document: ``apiVersion`` (must match the kind), ``kind`` (must be registered),
``metadata.name`` (DNS-1123 label), ``metadata.namespace`` (DNS-1123 label, default ``default``),
``metadata.labels`` (string map), ``spec`` (the kind's schema); unknown fields anywhere are errors
with a spelling suggestion. Across the whole call: a (kind, namespace, name) given twice.
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
from .schema import INVALID, Context, DNSLabel, LabelKey, Obj, Path, Required, Str, StringMap, suggest, type_name

RESOURCE_SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"
STDIN_SOURCE = "<stdin>"

_TOP_FIELDS = ("apiVersion", "kind", "metadata", "spec")

METADATA = Obj(
    {
        "name": Required(DNSLabel()),
        "namespace": DNSLabel(),
        "labels": StringMap(key=LabelKey(), value=Str(max_len=63)),
    }
)


def validate_document(doc: Any, source: str, document: int | None) -> tuple[Resource | None, list[FieldError]]:
    """Validate one parsed document; return the resource (None when invalid) and every problem found."""
    ctx = Context()
    root = Path()
    if not isinstance(doc, Mapping):
        ctx.add(root, f"a resource must be a mapping with apiVersion, kind, metadata and spec, got {type_name(doc)}")
        return None, ctx.issues.to_field_errors(source, document)

    for key in doc:
        if key not in _TOP_FIELDS:
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
    elif spec_def is not None and api_version != spec_def.api_version:
        ctx.add(
            root.field("apiVersion"),
            f"must be {json.dumps(spec_def.api_version)} for kind {spec_def.kind}, got {json.dumps(api_version)}",
        )

    metadata = doc.get("metadata")
    meta = INVALID
    if metadata is None:
        ctx.add(root.field("metadata"), "required field is missing (at least metadata.name)")
    else:
        meta = METADATA.check(metadata, root.field("metadata"), ctx)

    spec = INVALID
    if spec_def is not None:
        if doc.get("spec") is None and spec_def.spec_required:
            ctx.add(root.field("spec"), "required field is missing")
        else:
            spec = spec_def.check_spec(doc.get("spec"), root.field("spec"), ctx)

    if ctx.issues or spec_def is None or meta is INVALID or spec is INVALID:
        return None, ctx.issues.to_field_errors(source, document)
    resource = Resource(
        api_version=spec_def.api_version,
        kind=spec_def.kind,
        name=meta["name"],
        namespace=meta.get("namespace") or DEFAULT_NAMESPACE,
        spec=spec,
        labels=tuple(sorted((meta.get("labels") or {}).items())),
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


def _load_texts(texts: Sequence[tuple[str, str]], errors: list[FieldError]) -> list[Resource]:
    loaded: list[tuple[str, int | None, Resource]] = []
    for source, text in texts:
        docs, syntax = _parse(text, source)
        errors.extend(syntax)
        for index, data in docs:
            res, problems = validate_document(data, source, index)
            errors.extend(problems)
            if res is not None:
                loaded.append((source, index, res))
    errors.extend(_check_duplicates(loaded))
    return [r for _, _, r in loaded]


def load_documents(text: str, source: str) -> list[Resource]:
    """Parse and validate every document of ``text``; raise one ValidationError listing every problem."""
    errors: list[FieldError] = []
    resources = _load_texts([(source, text)], errors)
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


def load_files(paths: Sequence[str | FsPath]) -> list[Resource]:
    """Load every resource from files, directories (``*.yaml|*.yml|*.json``, sorted) and ``-`` (stdin).

    All problems of all files are raised together as one ValidationError; duplicates are
    checked across all files of the call.
    """
    files, errors = expand_paths(paths)
    texts: list[tuple[str, str]] = []
    for source, path in files:
        try:
            texts.append((source, sys.stdin.read() if path is None else path.read_text(encoding="utf-8")))
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(FieldError(source, None, "", f"cannot read: {exc}"))
    resources = _load_texts(texts, errors)
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

    return destination_rule.validate_set(resources) + virtual_service.validate_set(resources)


__all__ = ["validate_set", "load_documents", "load_files", "validate_document", "expand_paths", "RESOURCE_SUFFIXES"]
