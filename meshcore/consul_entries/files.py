"""Config entries from files, in the JSON or HCL form ``consul config write`` takes (IO at the edge).

One entry per file, or several as a JSON list; keys are decoded as Consul decodes them
(case-insensitive, snake_case accepted: ``default_subset`` -> ``DefaultSubset``), user-owned maps
(``Meta``, ``Config``, header maps) are kept as written.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import FieldError, ValidationError
from .model import ConfigEntry

_OPAQUE = frozenset({"Meta", "Config", "Set", "Add"})
_KEYED = frozenset({"Subsets", "Failover"})
_FIELDS = """
Kind Name Namespace Partition Meta Protocol Mode TransparentProxy MutualTLSMode MeshGateway Expose
ExternalSNI UpstreamConfig Defaults Overrides Limits MaxConnections MaxPendingRequests MaxConcurrentRequests
PassiveHealthCheck Interval MaxFailures EnforcingConsecutive5xx MaxEjectionPercent BaseEjectionTime
ConnectTimeoutMs BalanceInboundConnections LocalConnectTimeoutMs LocalRequestTimeoutMs MaxInboundConnections
Destination RateLimits EnvoyExtensions Config AccessLogs Routes Match HTTP PathExact PathPrefix PathRegex
Header Present Exact Prefix Suffix Regex Invert QueryParam Methods RequestTimeout IdleTimeout NumRetries
RetryOnConnectFailure RetryOnStatusCodes RetryOn PrefixRewrite Service ServiceSubset RequestHeaders
ResponseHeaders Add Set Remove Splits Weight DefaultSubset Subsets Filter OnlyPassing Redirect Datacenters
Targets Peer Failover ConnectTimeout LoadBalancer Policy HashPolicies Field FieldValue SourceIP Terminal
Sources Action Permissions Precedence Type Description LegacyID LegacyMeta JWT SamenessGroup Port
CreateIndex ModifyIndex LegacyCreateTime LegacyUpdateTime Cluster RequestTimeoutMs UseInDatacenter Listeners
Hosts TLS Services
""".split()
_BY_FOLDED = {name.lower(): name for name in _FIELDS}


def normalize_entry(value: Any, parent: str = "") -> Any:
    """Canonical CamelCase keys, as Consul's config entry decoder reads them (see the module docstring)."""
    if isinstance(value, list):
        return [normalize_entry(v, parent) for v in value]
    if not isinstance(value, dict) or parent in _OPAQUE:
        return value
    if parent in _KEYED:
        return {k: normalize_entry(v) for k, v in value.items()}
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = _BY_FOLDED.get(str(key).replace("_", "").replace("-", "").lower(), str(key))
        out[name] = normalize_entry(item, name)
    return out


def entry_of(raw: Any, source: str) -> ConfigEntry:
    """One decoded entry -> :class:`ConfigEntry`; a ValidationError names the source when it is no entry."""
    body = normalize_entry(raw)
    if not isinstance(body, dict) or not body.get("Kind") or not body.get("Name"):
        raise ValidationError([FieldError(source, None, "", "a config entry needs Kind and Name at the top level "
                                                            "(as `consul config write` does)")],
                              summary="invalid config entry")
    return ConfigEntry(kind=str(body["Kind"]).lower(), name=str(body["Name"]), body=body, source=source)


_HCL1_BLOCK = re.compile(r"^(\s*)([A-Za-z_][A-Za-z0-9_-]*)\s*\{", re.MULTILINE)


def hcl1_blocks_as_objects(text: str) -> str:
    """Consul reads config entries with HCL 1, where ``HTTP { PathPrefix = "/" }`` may stand inside a list's
    object (its documentation writes them so); HCL 2 allows blocks only at the top. Every ``Name {`` is
    rewritten ``Name = {``, the same value in both."""
    return _HCL1_BLOCK.sub(lambda m: f"{m.group(1)}{m.group(2)} = {{", text)


def entries_from_text(text: str, source: str) -> list[ConfigEntry]:
    from ..catalog.definitions import _parse_hcl, _parse_json  # the parsers the service-definition files use

    if source.endswith(".hcl"):
        raw = _parse_hcl(hcl1_blocks_as_objects(text), source)
    else:
        raw = _parse_json(text, source)
    items = raw if isinstance(raw, list) else [raw]
    return [entry_of(item, source) for item in items]


def _files(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(f for f in p.iterdir() if f.suffix in (".json", ".hcl") and f.is_file()))
        else:
            out.append(p)
    return out


def load_entry_files(paths: Sequence[str | Path]) -> list[ConfigEntry]:
    """Every entry of the given files and directories (``*.json``, ``*.hcl``); all errors at once."""
    entries: list[ConfigEntry] = []
    errors: list[FieldError] = []
    for f in _files(paths):
        try:
            entries.extend(entries_from_text(f.read_text(encoding="utf-8"), str(f)))
        except ValidationError as exc:
            errors.extend(exc.errors)
        except OSError as exc:
            errors.append(FieldError(str(f), None, "", f"cannot read: {exc.strerror or exc}"))
    if errors:
        raise ValidationError(errors, summary="invalid config entry files")
    return entries
