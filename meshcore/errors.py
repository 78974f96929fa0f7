"""The one exception tree of meshcore.

Every error meshcore raises on purpose derives from :class:`MeshError`. Third-party
exceptions are translated at the boundary (``raise CatalogError(...) from exc``) so that
callers only ever catch these. Each error carries a message that says what went wrong,
where, and when it helps, what to do next.
"""

from __future__ import annotations

from dataclasses import dataclass


class MeshError(Exception):
    """Base of every meshcore error."""


class ConfigError(MeshError):
    """A setting, flag or file given to a meshcore program is wrong."""


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


class CatalogError(MeshError):
    """The service catalog (Consul or files) could not be read or is inconsistent."""


class ConsulError(CatalogError):
    """Talking to Consul failed."""


class ConsulAuthError(ConsulError):
    """Consul refused the ACL token (HTTP 403)."""


class StoreError(MeshError):
    """The resource store could not be read or written."""


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


class AgentError(MeshError):
    """The VM agent could not join, obtain certificates or run Envoy."""


class ControlPlaneUnavailable(MeshError):
    """The control plane could not be reached."""
