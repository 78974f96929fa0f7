"""``meshctl analyze``: catalog-aware analysis of the applied resources plus the files given (``istioctl analyze``).

The applied set comes from the control plane (``--server``; ``--offline``: the files only), the catalog from
``--catalog`` (``files:DIR`` or ``consul``, as ``meshctl inventory`` reads it). A file's resource replaces the
applied one with the same kind, namespace and name, so the analysis is of the set as it would be after
``meshctl apply -f``. Exit status: 1 when any finding is an error, 0 when there are only warnings or none.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from ..analyze import ERROR, Finding, analyze
from ..analyze.checks import discovery_failures
from ..deploy.sources import CATALOG_HELP, catalog_spec, load_catalog
from ..errors import MeshError, ValidationError
from ..resources.model import Resource
from ._commands import HELP
from ._output import out, table, validate_locally
from ._run import dispatch

DESCRIPTION = (HELP.get("analyze", "") + " Each finding has a code (MC0101 ...), the resource and field path, "
               "and a suggestion; exits 1 on errors, 0 on warnings only.")


def _applied(args) -> list[Resource]:
    from ..api.operator import ResourceQuery
    from ..resources.loader import validate_document
    from ._client import client_for

    try:
        docs = client_for(args).resources(ResourceQuery())
    except MeshError as exc:
        raise MeshError(f"cannot read the applied resources: {exc}; analyze the files alone with --offline") from exc
    out_: list[Resource] = []
    for doc in docs:
        res, problems = validate_document(doc, "<applied>", None)
        if res is None:
            raise ValidationError(problems, "an applied resource no longer validates")
        out_.append(res)
    return out_


def _discovery_failures(args) -> dict[str, str]:
    from ._client import client_for

    try:
        sources = client_for(args).status().control_plane.sources
    except MeshError:
        return {}  # the applied set was read: a status answer missing here is no finding
    return {r.key: r.error for s in sources if s.name == "oidc-discovery" for r in s.rejected}


def merged(applied: Sequence[Resource], given: Sequence[Resource]) -> list[Resource]:
    """``applied`` with ``given`` applied over it (same key: the given one wins)."""
    by_key = {r.key: r for r in applied}
    by_key.update({r.key: r for r in given})
    return list(by_key.values())


def cross_check(resources: Sequence[Resource]) -> None:
    """The cross-resource checks ``apply`` runs (:func:`~meshcore.resources.loader.validate_set`), over the files'
    set: ``meshctl validate`` accepts only what ``apply`` of the same files to an empty store accepts."""
    from ..resources.loader import validate_set

    problems = validate_set(list(resources))
    if problems:
        raise ValidationError(problems, "the resources are invalid together (apply would refuse them; `meshctl "
                                        "analyze -f` checks them against the applied set)")


def _table(findings: list[Finding]) -> None:
    if not findings:
        print("no problems found")
        return
    table([[f.severity.upper(), f.code, f.resource, f.path, f.message + (f"; {f.suggestion}" if f.suggestion else "")]
           for f in findings], ["SEVERITY", "CODE", "RESOURCE", "PATH", "MESSAGE"])


def cmd_analyze(args) -> int:
    given = validate_locally(args.filename) if args.filename else []
    resources = merged([] if args.offline else _applied(args), given)
    catalog = load_catalog(catalog_spec(args.catalog)).catalog
    findings = analyze(resources, catalog)
    if not args.offline:  # what only the control plane knows: issuers whose OIDC discovery fails (MC0501)
        findings = sorted(findings + list(discovery_failures(resources, _discovery_failures(args))),
                          key=lambda f: (f.severity != ERROR, f.resource, f.path, f.code))
    out([f.to_dict() for f in findings], args.output, lambda _: _table(findings))
    return 1 if any(f.severity == ERROR for f in findings) else 0


def register(subparsers, common: argparse.ArgumentParser) -> None:
    sp = subparsers.add_parser("analyze", parents=[common], help=HELP.get("analyze"), description=DESCRIPTION)
    sp.add_argument("-f", "--filename", action="append", help="file, directory or - (repeatable): analyzed as applied")
    sp.add_argument("--catalog", metavar="SPEC", help=CATALOG_HELP)
    sp.add_argument("--offline", action="store_true", help="do not read the applied set: analyze the files alone")
    sp.set_defaults(fn=cmd_analyze)


def main(argv: list[str] | None = None) -> int:
    from ._commands import common_options

    p = argparse.ArgumentParser(prog="meshctl")
    register(p.add_subparsers(dest="command", required=True), common_options())
    return dispatch(p.parse_args(["analyze", *(sys.argv[1:] if argv is None else argv)]))


__all__ = ["cmd_analyze", "cross_check", "merged", "register"]
