"""Private: strict SPIFFE ID checks (on top of the ``spiffe`` library's parser)."""

from __future__ import annotations

from spiffe import SpiffeId, TrustDomain
from spiffe.errors import PySpiffeError

from meshcore.errors import MeshError

MAX_SPIFFE_ID_BYTES = 2048
MAX_TRUST_DOMAIN_BYTES = 255
_VALID_CACHE_SIZE = 4096  # IDs that passed, remembered: a signature checks its ID twice (policy, CA)
_valid: dict[str, SpiffeId] = {}


def parse_workload_id(value: str, error: type[MeshError]) -> SpiffeId:
    """Parse ``value`` as a SPIFFE ID with a path, in canonical form; raise ``error`` saying why not.

    The SPIFFE ID spec requires a lowercase scheme and trust domain; the library normalises case,
    so a non-canonical spelling is refused here rather than silently rewritten. An ID that passed
    is remembered (the check is a pure function of the string); one that fails is checked anew each time.
    """
    if type(value) is str:
        sid = _valid.get(value)
        if sid is not None:
            return sid
    sid = _parse_workload_id(value, error)
    if type(value) is str:
        if len(_valid) >= _VALID_CACHE_SIZE:
            _valid.clear()
        _valid[value] = sid
    return sid


def _parse_workload_id(value: str, error: type[MeshError]) -> SpiffeId:
    if not isinstance(value, str):
        raise error(f"SPIFFE ID must be a string, got {type(value).__name__}")
    if len(value.encode()) > MAX_SPIFFE_ID_BYTES:
        raise error(f"SPIFFE ID is longer than {MAX_SPIFFE_ID_BYTES} bytes")
    try:
        sid = SpiffeId(value)
    except PySpiffeError as exc:
        raise error(f"malformed SPIFFE ID {value!r}: {exc}") from exc
    if str(sid) != value:
        raise error(f"SPIFFE ID {value!r} is not in canonical form; use {str(sid)!r}")
    if not sid.path:
        raise error(f"SPIFFE ID {value!r} has no path; a workload identity needs one (spiffe://<td>/ns/<ns>/sa/<sa>)")
    if len(sid.trust_domain.name) > MAX_TRUST_DOMAIN_BYTES:
        raise error(f"trust domain of {value!r} is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    return sid


def check_trust_domain(name: str, error: type[MeshError]) -> str:
    """Return ``name`` when it is a canonical trust domain name, else raise ``error``."""
    try:
        td = TrustDomain(name)
    except PySpiffeError as exc:
        raise error(f"invalid trust domain {name!r}: {exc}") from exc
    if "://" in name or td.name != name:
        raise error(f"trust domain {name!r} is not in canonical form; use {td.name!r} (no scheme, lowercase)")
    if len(name) > MAX_TRUST_DOMAIN_BYTES:
        raise error(f"trust domain {name!r} is longer than {MAX_TRUST_DOMAIN_BYTES} bytes")
    return name
