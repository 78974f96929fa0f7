"""The one exception tree of meshcore, and the one table from its classes to HTTP statuses.

Every error meshcore raises on purpose derives from :class:`MeshError`. Third-party
exceptions are translated at the boundary (``raise CatalogError(...) from exc``, or
:func:`map_exceptions`) so that callers only ever catch these. Each error carries a message that
says what went wrong, where, and when it helps, what to do next.

The tree::

    MeshError
    +-- ConfigError                 a setting, flag or file is wrong
    |   +-- BundleError             a trust bundle is unreadable or unacceptable
    |   +-- ValueProblem            one deploy value does not fit its type (also a ValueError)
    +-- ValidationError             input failed validation (every violation, with field paths)
    +-- CatalogError > ConsulError > ConsulAuthError
    +-- StoreError > ConflictError, StoreAuthError
    +-- CAError > JoinTokenError, SigningRefused
    +-- XdsError > SnapshotInvalid, MissingSubset, StreamAborted, NoTrustStore
    +-- AgentError > AgentRequestError, OperatorActionRequired
    +-- ControlPlaneUnavailable
    +-- ApiError                    an API answered with an error status (client side)
    +-- RequestError                a request cannot be served as asked (server side)
    |   +-- BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
    |   |   PayloadTooLarge, Unavailable
    |   +-- HttpError               one with an explicit status (prefer a class of the table)
    |   +-- OperatorAuthError (Unauthorized): operator credentials missing, unknown or expired
    |   +-- CanaryNotFound (NotFound), CanaryConflict (Conflict)
    +-- WebhookDeliveryError        an alert notification could not be delivered (retryable)
    +-- DiscoveryError              an issuer's OpenID Connect discovery failed (retryable)
    +-- DemoError, RemoteError, InventoryError

Servers answer an error with :func:`http_status` (the :data:`HTTP_STATUS` table, nearest class
wins) and :func:`error_body` (``{"error": message, ...details}``); nothing else turns a
``MeshError`` into a status.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any


class MeshError(Exception):
    """Base of every meshcore error."""

    def api_details(self) -> dict[str, Any]:
        """Machine-readable fields an API answer carries beside ``error`` (none by default)."""
        return {}


class ConfigError(MeshError):
    """A setting, flag or file given to a meshcore program is wrong."""


class BundleError(ConfigError):
    """A trust bundle could not be read or is not acceptable as a domain's roots; the message says why."""


class ValueProblem(ConfigError, ValueError):
    """One deploy value does not fit its type; the message says what would."""


@dataclass(frozen=True)
class FieldError:
    """One violation found while validating input, located precisely.

    ``source`` is a file name (or ``<stdin>``/``<api>``), ``document`` the 0-based index of the
    YAML document inside it, ``path`` a field path such as ``spec.rules[0].to[0].operation.methods[2]``.
    """

    source: str
    document: int | None
    path: str
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.document is not None:
            where += f" (document {self.document + 1})"
        if self.path:
            where += f": {self.path}"
        return f"{where}: {self.message}"


class ValidationError(MeshError):
    """Input failed validation; ``errors`` lists every violation, not just the first."""

    def __init__(self, errors: list[FieldError] | tuple[FieldError, ...], summary: str = "invalid input"):
        self.errors = tuple(errors)
        lines = [f"{summary}: {len(self.errors)} error(s)"] + [f"  - {e}" for e in self.errors]
        super().__init__("\n".join(lines))

    def api_details(self) -> dict[str, Any]:
        return {"errors": [{"source": e.source, "document": e.document, "path": e.path, "message": e.message}
                           for e in self.errors]}


class CatalogError(MeshError):
    """The service catalog (Consul or files) could not be read or is inconsistent."""


class ConsulError(CatalogError):
    """Talking to Consul failed."""


class ConsulAuthError(ConsulError):
    """Consul refused the ACL token (HTTP 403)."""


class StoreError(MeshError):
    """The resource store could not be read or written."""


class StoreAuthError(StoreError):
    """Consul refused the resource store's ACL token (HTTP 403): not transient, the token must be fixed."""


class ConflictError(StoreError):
    """A compare-and-set write lost a race; re-read and retry."""


class CAError(MeshError):
    """The certificate authority could not complete an operation."""


class JoinTokenError(CAError):
    """A join token is unknown, expired, already used, or scoped to another node."""


class SigningRefused(CAError):
    """The CA refused to sign a CSR; the message says why."""


class XdsError(MeshError):
    """Building or publishing Envoy configuration failed."""


class SnapshotInvalid(XdsError):
    """A built per-proxy snapshot failed validation or cross-checks; it was not published."""

    def __init__(self, node: str, problems: list[str]):
        self.node = node
        self.problems = tuple(problems)
        super().__init__(f"config for node {node!r} rejected: " + "; ".join(self.problems))


class MissingSubset(XdsError):
    """A route names a subset no DestinationRule defines (message says which and where to add it)."""


class OutOfScope(XdsError):
    """A route names a destination the caller's Sidecar does not let it reach."""


class RouteProblem(XdsError):
    """A VirtualService's routes cannot be built as declared (a missing or cyclic delegate, a destination port its
    host lacks); the message says which and what to do."""


class EgressProblem(XdsError):
    """An egress listener cannot be built as declared (the message says where and why)."""


class NoTrustStore(XdsError):
    """A proxy has no CA bundle to verify an https JWKS server with (its host has none, the mesh config names none)."""


class DiscoveryError(MeshError):
    """An issuer's OpenID Connect discovery failed (unreachable, not TLS-verified, no ``jwks_uri``); retryable."""


class StatsUnparsable(MeshError, ValueError):
    """An Envoy stats line the focused parser does not read (the text then goes to prometheus_client's parser)."""


class StreamAborted(XdsError):
    """End an xDS stream with gRPC status ``code`` (a ``grpc.StatusCode``) and ``details``: raised by the
    protocol code, answered by the ADS server."""

    def __init__(self, code: Any, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


class AgentError(MeshError):
    """The VM agent could not join, obtain certificates or run Envoy."""


class AgentRequestError(AgentError):
    """The control plane answered a request with an error status; ``reason`` is its message verbatim."""

    def __init__(self, method: str, path: str, status: int, reason: str):
        self.method = method
        self.path = path
        self.status = status
        self.reason = reason
        super().__init__(reason)

    @property
    def retryable(self) -> bool:
        """5xx and 429 are the server's trouble and worth retrying; other 4xx need an operator."""
        return self.status >= 500 or self.status == 429


class OperatorActionRequired(AgentError):
    """The agent cannot continue until an operator acts (the message says what to do); exit 2."""


class ControlPlaneUnavailable(MeshError):
    """The control plane could not be reached."""


class ApiError(MeshError):
    """A meshcore API answered with an error status (client side): ``status`` and the decoded ``body``."""

    def __init__(self, status: int, message: str, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


# --- server side: a request that cannot be served as asked ---------------------------------------

class RequestError(MeshError):
    """A request cannot be served as asked; its status comes from :data:`HTTP_STATUS`.

    ``extra`` adds machine-readable fields to the answer (``{"error": message, **extra}``)."""

    def __init__(self, message: str, extra: Mapping[str, Any] | None = None):
        super().__init__(message)
        self.message = message
        self.extra = dict(extra or {})

    def api_details(self) -> dict[str, Any]:
        return dict(self.extra)


class BadRequest(RequestError):
    """The request is malformed: a missing or ill-typed field, a body that is not JSON."""


class BodyCut(BadRequest):
    """The client stopped sending its request body (closed, malformed, or too slow): nothing more can be read."""


class Unauthorized(RequestError):
    """The request carries no credentials, or ones that are not valid."""


class Forbidden(RequestError):
    """The caller is known but may not do this."""


class NotFound(RequestError):
    """What the request names does not exist."""


class MethodNotAllowed(RequestError):
    """The path exists, but not with this method."""


class MethodNotImplemented(RequestError):
    """A method the server does not implement on any path (e.g. TRACE, CONNECT)."""


class Conflict(RequestError):
    """The request does not fit the current state (already running, rotation in progress, ...)."""


class PayloadTooLarge(RequestError):
    """The request body is over the server's limit."""


class HeadersTooLarge(PayloadTooLarge, OSError):
    """A request's line and headers went on past the HTTP layer's limit (an ``OSError`` as well, since it is
    raised from inside the connection's reads)."""


class LengthRequired(RequestError):
    """A request with a body came without a usable ``Content-Length`` (none, or ``Transfer-Encoding``)."""


class Unavailable(RequestError):
    """The server cannot answer yet (no snapshot, catalog not read, a part not running); retry shortly."""


class HttpError(RequestError):
    """A request error with an explicit HTTP status, for the rare answer no class of :data:`HTTP_STATUS` names.
    Prefer raising a class of the table (``BadRequest``, ``NotFound``, ...)."""

    def __init__(self, status: int, message: str, extra: Mapping[str, Any] | None = None):
        super().__init__(message, extra)
        self.status = status


class OperatorAuthError(Unauthorized):
    """A request's operator credentials are missing, unknown or expired."""


class CanaryNotFound(NotFound):
    """No canary for that service."""


class CanaryConflict(Conflict):
    """The request does not fit the canary's state (already running, already finished)."""


# --- other edges -----------------------------------------------------------------------------------

class WebhookDeliveryError(MeshError):
    """An alert notification could not be delivered and is worth retrying (connection problem, 429, 5xx)."""


class DemoError(MeshError):
    """The local demo mesh could not be started or stopped."""


class RemoteError(MeshError):
    """A host could not be reached, or a command on it failed."""


class InventoryError(MeshError):
    """The inventory cannot be read, or names no host meshctl can reach."""


# --- the one error map -----------------------------------------------------------------------------

#: Error class -> HTTP status. :func:`http_status` uses the nearest class in an exception's MRO, so a
#: subclass answers with its own row or else its parent's. Every API server answers through it.
HTTP_STATUS: Mapping[type[MeshError], int] = {
    MeshError: 500,
    ConfigError: 400,
    BundleError: 422,
    ValidationError: 422,
    CatalogError: 503,
    StoreError: 503,
    ConflictError: 409,
    CAError: 400,
    JoinTokenError: 403,
    SigningRefused: 403,
    XdsError: 500,
    ControlPlaneUnavailable: 503,
    RequestError: 400,
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    MethodNotImplemented: 501,
    Conflict: 409,
    PayloadTooLarge: 413,
    LengthRequired: 411,
    Unavailable: 503,
}


def http_status(exc: BaseException) -> int:
    """The HTTP status that answers ``exc``: its nearest class in :data:`HTTP_STATUS` (an :class:`HttpError`
    says its own); 500 for anything else."""
    if isinstance(exc, HttpError):
        return exc.status
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)  # type: ignore[call-overload]
        if status is not None:
            return status
    return 500


def error_body(exc: BaseException) -> dict[str, Any]:
    """The JSON answer for ``exc``: ``{"error": message, **details}`` (details only from a MeshError)."""
    details = exc.api_details() if isinstance(exc, MeshError) else {}
    return {"error": str(exc), **details}


@contextlib.contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[MeshError]], prefix: str = "") -> Iterator[None]:
    """Translate third-party exceptions at a boundary (as httpx's ``map_exceptions``)::

        with map_exceptions({ValueError: BadRequest}, prefix="ttl: "):
            ttl = parse_duration(text)

    The first matching entry wins; its class is raised with ``prefix + str(exc)``, ``from`` the original.
    A MeshError passes through untouched."""
    try:
        yield
    except MeshError:
        raise
    except Exception as exc:
        for source, target in mapping.items():
            if isinstance(exc, source):
                raise target(f"{prefix}{exc}") from exc
        raise
