"""``meshctl authz dry-run -f policy.yaml [--access-log FILE ...]``: calls a new policy would deny.

Reads the observed inbound calls from Envoy JSON access logs (``--access-log``, repeatable; without
it, the ``access_log`` files that ``meshctl status -o json`` names for the proxies, where they exist
on this machine), counts the distinct ones, and has the control plane decide each with the current
policies and with the new ones. Lists the calls whose verdict would change (allow -> deny first),
grouped by source, destination, method and path. Nothing is applied.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from pathlib import Path

from ..errors import MeshError
from ..api.operator import AuthzDryRunRequest, AuthzDryRunResponse, AuthzFlip, AuthzObservedCall, StatusResponse
from ._client import client_for
from ._output import out, read_files, validate_locally


def access_logs_from_status(status: StatusResponse) -> list[Path]:
    """The proxies' access-log files (``proxies[].access_log``) that exist on this machine."""
    out = []
    for proxy in status.proxies:
        path = proxy.access_log
        if path.startswith("/") and Path(path).is_file():
            out.append(Path(path))
    return sorted(set(out))


def observed_calls(paths: list[Path]) -> tuple[Counter, int]:
    from ..authz.dry_run import read_access_log  # the authz package (catalog, CA) only when this command runs

    counts: Counter = Counter()
    skipped = 0
    for path in paths:
        try:
            with open(path, encoding="utf-8", errors="replace") as fh:
                _, bad = read_access_log(fh, counts)
        except OSError as exc:
            raise MeshError(f"{path}: cannot read the access log: {exc.strerror}") from exc
        skipped += bad
    return counts, skipped


def _print_table(result: AuthzDryRunResponse) -> None:
    def section(title: str, groups: tuple[AuthzFlip, ...]) -> None:
        if not groups:
            return
        print(title)
        rows = [[g.source_service or g.source, g.destination, g.method or "(tcp)", g.path or "",
                 str(g.count), g.after.policy or g.after.reason] for g in groups]
        headers = ["SOURCE", "DESTINATION", "METHOD", "PATH", "COUNT", "DECIDED BY"]
        widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
        for row in [headers] + rows:
            print("  " + "  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
        print()

    section("WOULD BE DENIED (allowed now):", result.would_deny)
    section("WOULD BE ALLOWED (denied now):", result.would_allow)
    if not result.would_deny and not result.would_allow:
        print("no observed call would change its verdict")
    print(f"{result.observed} observed inbound call(s), {result.distinct} distinct, from "
          f"{result.log_files} log file(s); {result.unchanged} unchanged")
    for svc, n in result.unknown_destinations.items():
        print(f"note: {n} call(s) to {svc!r}, which is not in the catalog now, were not evaluated")
    for caveat in result.caveats:
        print(f"note: {caveat}")


def cmd_authz_dry_run(args) -> int:
    validate_locally(args.filename)  # offline first: file and field paths for every mistake
    client = client_for(args)
    if args.access_log:
        paths = [Path(p) for p in args.access_log]
    else:
        paths = access_logs_from_status(client.status())
        if not paths:
            raise MeshError("no access log found: no proxy in `meshctl status -o json` names an access_log file on "
                            "this machine; enable access logs, or pass --access-log FILE (repeatable)")
    counts, skipped = observed_calls(paths)
    calls = tuple(AuthzObservedCall(**call.to_dict(), count=n) for call, n in counts.items())
    result = client.authz_dry_run(AuthzDryRunRequest(files=tuple(read_files(args.filename)), calls=calls))
    out(dataclasses.replace(result, log_files=len(paths), skipped_lines=skipped), args.output, _print_table)
    return 0


def register(authz_subparsers, common: argparse.ArgumentParser) -> None:
    """Add ``dry-run`` under ``meshctl authz``."""
    dr = authz_subparsers.add_parser(
        "dry-run", parents=[common], help="Which observed calls new policies would deny (or allow), before applying.",
        description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    dr.add_argument("-f", "--filename", action="append", required=True, help="policy file, directory or - (repeatable)")
    dr.add_argument("--access-log", action="append", metavar="FILE",
                    help="Envoy JSON access log to read calls from (repeatable; default: the proxies' access_log "
                         "files from `meshctl status`)")
    dr.set_defaults(fn=cmd_authz_dry_run)


__all__ = ["access_logs_from_status", "cmd_authz_dry_run", "observed_calls", "register"]
