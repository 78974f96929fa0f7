"""Operators authenticated by a client certificate from the mesh CA (the other half of operator auth).

An operator certificate is an X.509-SVID ``spiffe://<td>/meshcore/operator/<name>``: ``meshctl
operator cert issue NAME --role admin`` makes the key where it runs and sends only a CSR; an admin
(token or certificate) has the control plane sign it. The role is **not** in the certificate: the
control plane keeps a role table (``<state-dir>/operator-certs.sealed``, sealed with the KEK like the
token store) of every operator certificate it issued (name, role, serial, not-after), so revoking a
name (``meshctl operator cert revoke NAME``) refuses its certificates at once, before they expire.

The certificate is presented on the operator API's TLS listener (``--operator-tls-bind``, same
routes as the plain HTTP one); there :class:`CertAuthorizingRouter` accepts a verified operator
certificate whose serial is in the table, and otherwise falls back to the bearer token.
"""

from __future__ import annotations

import builtins
import logging
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api.operator import OperatorCert, OperatorCertIssued, OperatorCertRequest, OperatorCertRevoked
from ..ca._sealed import SealedEntries, check_kek
from ..ca.model import parse_rfc3339, rfc3339
from ..durations import parse_duration
from ..errors import BadRequest, CAError, ConfigError, NotFound, map_exceptions
from ..naming import operator_spiffe_id, parse_operator_spiffe_id
from ..state import StateBackend
from ._http import Request
from .operators import ADMIN, READ_ONLY, AuthorizingRouter, Operator, OperatorAuthError, OperatorTokenStore, check_role

if TYPE_CHECKING:
    from ..ca import CertificateAuthority

log = logging.getLogger("meshcore.controlplane.operator_certs")

CERTS_FILE = "operator-certs.sealed"
SHARED_CERTS_KEY = "operators/certs.sealed"  # the table's key in shared state (Consul KV)
DEFAULT_TTL = timedelta(days=30)
MAX_TTL = timedelta(days=365)
_PURPOSE = "operator-certs"


def check_operator_name(name: str) -> str:
    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise ConfigError(f"operator name {name!r} must be a word of letters, digits, '-', '_' or '.' (e.g. alice)")
    return name


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


class OperatorCertStore:
    """The role table of issued operator certificates: ``name, role, serial, not_after, issued``."""

    def __init__(self, path: Path | str, kek: bytes, *, backend: StateBackend | None = None):
        """``path``: the sealed file in the state directory; with a shared ``backend`` (Consul KV) the table is its
        key ``operators/certs.sealed`` instead, followed by every replica."""
        check_kek(kek)
        self.path = Path(path)
        self._doc = SealedEntries.at(backend, self.path, SHARED_CERTS_KEY, kek, _PURPOSE, "operator certificate table")

    def _read(self) -> list[dict[str, Any]]:
        return self._doc.read()

    def close(self) -> None:
        self._doc.close()

    def record(self, name: str, role: str, serial: str, not_after: datetime) -> None:
        check_operator_name(name)
        check_role(role)
        now = _utcnow()
        entry = {"name": name, "role": role, "serial": serial.lower(), "not_after": rfc3339(not_after),
                 "issued": rfc3339(now)}
        self._doc.update(lambda entries: [*(e for e in entries if parse_rfc3339(e["not_after"]) > now), entry])
        log.info("operator certificate issued operator=%s role=%s serial=%s", name, role, serial)

    def authenticate(self, name: str, serial: str) -> Operator:
        """The operator of a verified certificate; :class:`OperatorAuthError` when it is not (or no longer) in
        the table."""
        wanted = int(serial, 16)
        for e in self._read():
            if e["name"] == name and int(e["serial"], 16) == wanted:
                if parse_rfc3339(e["not_after"]) <= _utcnow():
                    raise OperatorAuthError(f"operator certificate of {name!r} expired at {e['not_after']}")
                return Operator(name=name, role=e["role"])
        raise OperatorAuthError(f"operator certificate of {name!r} (serial {serial.lower()}) is revoked or was "
                                "not issued by this control plane")

    def list(self) -> builtins.list[OperatorCert]:
        now = _utcnow()
        return sorted((OperatorCert(name=e["name"], role=e["role"], serial=e["serial"], not_after=e["not_after"],
                                    issued=e["issued"],
                                    state="expired" if parse_rfc3339(e["not_after"]) <= now else "valid")
                       for e in self._read()), key=lambda e: (e.name, e.issued))

    def revoke(self, name: str) -> int:
        """Refuse every certificate of operator ``name`` from now on; returns how many there were."""
        removed = [0]

        def drop(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
            keep = [e for e in entries if e["name"] != name]
            removed[0] = len(entries) - len(keep)
            return keep

        self._doc.update(drop)
        return removed[0]


def _peer_serial(req: Request) -> str | None:
    import ssl

    conn = req.handler.connection
    if not isinstance(conn, ssl.SSLSocket):
        return None
    serial = (conn.getpeercert() or {}).get("serialNumber")
    return serial if isinstance(serial, str) else None


class CertAuthorizingRouter(AuthorizingRouter):
    """:class:`AuthorizingRouter` that also accepts an operator certificate (verified by the TLS
    listener against the mesh bundle) listed in the role table; other callers need a token."""

    def __init__(self, tokens: OperatorTokenStore, certs: OperatorCertStore, trust_domain: str):
        super().__init__(tokens)
        self._certs = certs
        self._trust_domain = trust_domain

    def authenticate(self, req: Request) -> Operator:
        for uri in req.peer_uri_sans():
            parsed = parse_operator_spiffe_id(uri)
            if parsed and parsed[0] == self._trust_domain:
                serial = _peer_serial(req)
                if serial:
                    return self._certs.authenticate(parsed[1], serial)
        return super().authenticate(req)


# --- routes --------------------------------------------------------------------------------------

def add_operator_cert_routes(r: AuthorizingRouter, *, ca: "CertificateAuthority", certs: OperatorCertStore,
                             https_address: Callable[[], str] = lambda: "") -> None:
    """``POST /v1/operators/certs`` (admin): sign an operator CSR; ``GET`` lists; ``DELETE .../{name}`` revokes."""

    def issue(req: Request) -> OperatorCertIssued:
        body = OperatorCertRequest.from_json(req.json())
        name = check_operator_name(body.name)  # a ConfigError: 400 by the error map
        role = check_role(body.role or READ_ONLY)
        with map_exceptions({ValueError: BadRequest}):
            ttl = parse_duration(body.ttl or "30d")
        if ttl <= timedelta(0) or ttl > MAX_TTL:
            raise BadRequest(f"ttl must be between 1s and {MAX_TTL.days}d")
        spiffe_id = operator_spiffe_id(ca.trust_domain, name)
        try:
            issued = ca.sign_csr(body.csr, spiffe_id=spiffe_id, ttl=ttl)
        except CAError as exc:
            raise CAError(f"cannot issue {spiffe_id}: {exc}") from exc
        certs.record(name, role, issued.serial, issued.not_after)
        who = getattr(req, "operator", None)
        log.warning("operator certificate issued operator=%s role=%s serial=%s by=%s", name, role, issued.serial,
                    who.name if who else "?")
        return OperatorCertIssued(name=name, role=role, spiffe_id=spiffe_id, serial=issued.serial,
                                  not_after=rfc3339(issued.not_after), chain=issued.chain_pem,
                                  bundle=ca.bundle_pem(), https=https_address())

    def revoke(req: Request) -> OperatorCertRevoked:
        name = req.params["name"]
        n = certs.revoke(name)
        if not n:
            raise NotFound(f"no operator certificate for {name!r}; see `meshctl operator cert list`")
        return OperatorCertRevoked(revoked=n, name=name)

    r.add("POST", "/v1/operators/certs", issue, role=ADMIN)
    r.add("GET", "/v1/operators/certs", lambda req: certs.list())
    r.add("DELETE", "/v1/operators/certs/{name}", revoke, role=ADMIN)


__all__ = ["CERTS_FILE", "CertAuthorizingRouter", "OperatorCertStore", "add_operator_cert_routes",
           "check_operator_name", "operator_spiffe_id", "parse_operator_spiffe_id"]
