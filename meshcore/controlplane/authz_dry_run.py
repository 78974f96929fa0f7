"""``POST /v1/authz/dry-run`` (read-only: changes nothing): decide observed calls under new policies.

Body: ``{"files": [{"name", "content"}], "calls": [{"service", "node", "source_principal",
"source_ip", "method", "path", "host", "count"}]}``. ``meshctl authz dry-run`` reads the access
logs on its machine and sends the distinct calls with their counts; the control plane holds the
catalog and current resources, so it decides (see :func:`meshcore.authz.dry_run.dry_run`).
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Callable

from ..api.operator import AuthzDryRunResponse
from ..authz.dry_run import ObservedCall, dry_run
from ..errors import BadRequest, MeshError, PayloadTooLarge, Unavailable
from ._http import Request

if TYPE_CHECKING:
    from ..snapshot import MeshSnapshot

MAX_CALLS = 100_000


def authz_dry_run(snapshot: Callable[[], "MeshSnapshot | None"], req: Request, parse: Callable) -> AuthzDryRunResponse:
    body, resources = parse(req)  # validates the policy files like apply does (422 with field paths)
    raw = body.get("calls")
    if not isinstance(raw, list):
        raise BadRequest('body needs "calls": [{"service": ..., "source_principal": ..., "count": N}, ...]')
    if len(raw) > MAX_CALLS:
        raise PayloadTooLarge(f"more than {MAX_CALLS} distinct calls; narrow the access logs given")
    calls: Counter = Counter()
    for i, item in enumerate(raw):
        try:
            count = int(item.get("count", 1)) if isinstance(item, dict) else 0
            calls[ObservedCall.from_dict(item)] += max(count, 0)
        except (ValueError, TypeError, AttributeError) as exc:
            raise BadRequest(f"calls[{i}]: {exc}") from exc
    snap = snapshot()
    if snap is None:
        raise Unavailable("the control plane has no mesh snapshot yet (catalog or store not read); retry shortly")
    answer = dry_run(snap, resources, calls)
    try:
        return AuthzDryRunResponse.from_json(answer, "authz dry run")
    except BadRequest as exc:  # the evaluator's own answer: not the caller's fault
        raise MeshError(f"cannot describe the authz dry run: {exc}") from exc


__all__ = ["authz_dry_run"]
