"""Token revocation on the operator API (``meshctl token revoke``, ``meshctl token list --kind operator``).

* ``GET /v1/operators/tokens`` (admin): the operator API tokens (id = a prefix of the token's hash, name,
  role, times, state); never a token.
* ``POST /v1/tokens/revoke`` (admin), :class:`~meshcore.api.operator.TokenRevokeRequest`: revoke the one join
  token or operator token whose id starts with ``id`` (at least :data:`MIN_PREFIX` hex digits, as ``git``
  takes a commit prefix). An id that matches no token is 404; one that matches several is 409 naming them
  (nothing is revoked); revoking the last valid admin operator token is 409 unless ``force`` (nobody could
  then administer the control plane but from its host: ``meshcore-control-plane operator-token create``).

A revoked join token can no longer be used to join (also when it was not used yet; it stays listed with
state ``revoked`` until it is pruned like the others); a revoked operator token is removed, so the next
request with it is 401. Both act on every replica at once (the stores are shared state).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ..api.operator import OperatorTokenInfo, RevokedToken, TokenRevokeRequest, TokenRevokeResponse
from ..ca.model import parse_rfc3339
from ..errors import BadRequest, Conflict, NotFound
from ._http import Request
from .operators import ADMIN, AuthorizingRouter

if TYPE_CHECKING:
    from ..ca import JoinTokens
    from .operators import OperatorTokenStore

log = logging.getLogger("meshcore.controlplane")

MIN_PREFIX = 4
KINDS = ("join", "operator", "any")
_HEX = re.compile(r"[0-9a-f]{%d,64}" % MIN_PREFIX)


def check_token_id(text: str, error: type[Exception] = BadRequest) -> str:
    """A token id or id prefix as typed: lower-case hex, :data:`MIN_PREFIX` to 64 digits (``error`` otherwise)."""
    value = (text or "").strip().lower()
    if not _HEX.fullmatch(value):
        raise error(f"token id {text!r}: give the ID `meshctl token list` shows, or at least its first "
                    f"{MIN_PREFIX} hex digits")
    return value


@dataclass(frozen=True)
class _Match:
    kind: str
    hash: str
    owner: str
    role: str = ""
    valid: bool = True

    def view(self) -> RevokedToken:
        return RevokedToken(kind=self.kind, id=self.hash[:12], owner=self.owner, role=self.role)


def _expired(expires: str | None, now: datetime) -> bool:
    return bool(expires) and parse_rfc3339(str(expires)) <= now


def _matches(prefix: str, kind: str, tokens: "JoinTokens", operators: "OperatorTokenStore",
             now: datetime) -> list[_Match]:
    out: list[_Match] = []
    if kind in ("join", "any"):
        out += [_Match("join", e["hash"], e["node"]) for e in tokens.entries() if e["hash"].startswith(prefix)]
    if kind in ("operator", "any"):
        out += [_Match("operator", e["hash"], e["name"], e["role"], not _expired(e.get("expires"), now))
                for e in operators.entries() if e["hash"].startswith(prefix)]
    return out


def revoke_token(request: TokenRevokeRequest, tokens: "JoinTokens", operators: "OperatorTokenStore",
                 by: str = "?", now: datetime | None = None) -> TokenRevokeResponse:
    """Resolve ``request.id`` to exactly one token and revoke it (see the module docstring)."""
    prefix = check_token_id(request.id)
    if request.kind not in KINDS:
        raise BadRequest(f"kind {request.kind!r}: use one of {', '.join(KINDS)}")
    now = now or datetime.now(timezone.utc)
    found = _matches(prefix, request.kind, tokens, operators, now)
    what = {"join": "join token", "operator": "operator token", "any": "join or operator token"}[request.kind]
    if not found:
        raise NotFound(f"no {what} has an id starting with {prefix!r}; see `meshctl token list` "
                       "(and `--kind operator`)")
    if len(found) > 1:
        names = ", ".join(f"{m.kind} {m.hash[:12]} ({m.owner})" for m in found)
        raise Conflict(f"{prefix!r} matches {len(found)} tokens: {names}; give more of the id (nothing was revoked)")
    (match,) = found
    if match.kind == "operator" and match.role == ADMIN and match.valid and not request.force:
        admins = [e for e in operators.entries() if e["role"] == ADMIN and not _expired(e.get("expires"), now)]
        if len(admins) <= 1:
            raise Conflict(f"operator token {match.hash[:12]} ({match.owner}) is the last valid admin token: "
                           "after revoking it nobody can administer this control plane over its API. Create "
                           "another admin token first, or pass --force")
    done = tokens.revoke(match.hash) if match.kind == "join" else operators.revoke_hash(match.hash)
    if not done:
        raise NotFound(f"{match.kind} token {match.hash[:12]} is already revoked or gone")
    log.warning("token revoked kind=%s id=%s owner=%s by=%s", match.kind, match.hash[:12], match.owner, by)
    return TokenRevokeResponse(revoked=(match.view(),))


def operator_tokens(operators: "OperatorTokenStore") -> list[OperatorTokenInfo]:
    return [OperatorTokenInfo(id=e["id"], name=e["name"], role=e["role"], created=e["created"],
                              expires=e["expires"], state=e["state"]) for e in operators.list()]


def add_token_routes(r: AuthorizingRouter, *, tokens: "JoinTokens", operators: "OperatorTokenStore") -> None:
    def revoke(req: Request) -> Any:
        who = getattr(req, "operator", None)
        return revoke_token(TokenRevokeRequest.from_json(req.json()), tokens, operators,
                            by=who.name if who else "?")

    r.add("GET", "/v1/operators/tokens", lambda req: operator_tokens(operators), role=ADMIN)
    r.add("POST", "/v1/tokens/revoke", revoke, role=ADMIN)


__all__ = ["KINDS", "MIN_PREFIX", "add_token_routes", "check_token_id", "operator_tokens", "revoke_token"]
