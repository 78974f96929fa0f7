"""``POST /v1/nodes/{name}/revoke`` (admin) and ``GET /v1/nodes/revocations``: ``meshctl node revoke``.

Revoking a node (a lost or compromised VM) records it in the CA state (``revoked.jsonl``, append-only)
and takes effect at once: the agent API refuses every certificate issued to the node until then
(renew-node, sign, services, bundle, recovery), and the node's open ADS streams end. The node can
come back only by joining with a new join token (``meshctl token create --node NAME``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..ca.model import rfc3339
from ..errors import BadRequest
from ._http import Request
from .operators import ADMIN, AuthorizingRouter

if TYPE_CHECKING:
    from ..ca import CertificateAuthority
    from ..ca._revocations import Revocation

log = logging.getLogger(__name__)

MAX_REASON = 512


def revocation_json(rev: Revocation) -> dict[str, Any]:
    return {"kind": rev.kind, "subject": rev.subject, "revoked_at": rfc3339(rev.revoked_at), "reason": rev.reason,
            "by": rev.by}


def add_node_routes(r: AuthorizingRouter, *, ca: CertificateAuthority) -> None:
    """Mount the node revocation routes on the operator API (revoking needs the admin role)."""

    def revoke(req: Request) -> dict[str, Any]:
        name = req.params["name"]
        data = req.json()
        if not isinstance(data, dict):
            raise BadRequest("the body must be a JSON object, e.g. {\"reason\": \"VM lost\"}")
        reason = data.get("reason", "")
        if not isinstance(reason, str):
            raise BadRequest("reason: must be a string")
        if len(reason) > MAX_REASON or any(ord(c) < 32 for c in reason):
            raise BadRequest(f"reason: at most {MAX_REASON} printable characters on one line")
        who = getattr(req, "operator", None)
        rev = ca.revoke_node(name, reason=reason, by=who.name if who is not None else "")
        return revocation_json(rev)

    def listing(req: Request) -> dict[str, Any]:
        return {"revocations": [revocation_json(r) for r in ca.revocations()]}

    r.add("POST", "/v1/nodes/{name}/revoke", revoke, role=ADMIN)
    r.add("GET", "/v1/nodes/revocations", listing)


__all__ = ["add_node_routes", "revocation_json"]
