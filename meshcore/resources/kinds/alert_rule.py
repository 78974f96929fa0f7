"""AlertRule: a condition over one mesh signal that must hold ``for`` a while before it fires.

```yaml
apiVersion: telemetry.mesh.io/v1beta1
kind: AlertRule
metadata: {name: ratings-errors}
spec:
  signal: error_rate            # a name from meshcore.observe.signals.SIGNAL_LABELS
  match: {service: ratings}     # optional: label equality on the signal's labels
  op: ">"                       # > >= < <=
  threshold: 5%                 # number in the signal's unit; "5%" for rates, "500ms" for p99, "2h" for expiry
  for: 1m                       # how long the condition must hold before the alert fires (default 0s)
  keepFiringFor: 30s            # optional: keep firing this long after the condition stops holding
  severity: critical            # critical | warning (default) | info
  summary: "{service} answers {value} errors"
  description: "More than {threshold} of requests to {service} failed for {for}."
  labels: {team: ratings}       # optional, added to the alert's labels
  annotations: {runbook_url: https://runbooks.example/ratings}
```

``disabled: true`` switches a rule off; an AlertRule with the name of a shipped default rule replaces it
(see :mod:`meshcore.observe.default_rules`), so ``{disabled: true}`` alone disables that default.

AlertRule is not an xDS policy: no plugin in :mod:`meshcore.policies` reads it, so it never changes a
proxy's configuration; the control plane's alerting (:mod:`meshcore.controlplane.alerting`) evaluates it.
That is why it stays here, under :mod:`meshcore.resources.kinds`, rather than in a folder of
:mod:`meshcore.policies`: those folders hold the kinds that generation reads (schema, typed spec, plugin,
golden Envoy config), and AlertRule has no plugin and no Envoy output to keep goldens of. Its readers are the
observability side (:mod:`meshcore.observe.alerts`, :mod:`meshcore.observe.prom_rules`), which must not import
the generation path.
"""

from __future__ import annotations

import json
import math
import re
import string
from typing import Any

from meshcore.durations import format_duration, parse_duration
from meshcore.observe.signals import SIGNAL_LABELS
from meshcore.resources._kindspec import KindSpec
from meshcore.resources.schema import (
    INVALID,
    Bool,
    Context,
    Enum,
    Obj,
    Path,
    Schema,
    Str,
    StringMap,
    StrKey,
    type_name,
)

API_VERSION = "telemetry.mesh.io/v1beta1"
KIND_NAME = "AlertRule"

OPS = (">", ">=", "<", "<=")
SEVERITIES = ("critical", "warning", "info")
DEFAULT_SEVERITY = "warning"

# The unit of each signal, which decides how a threshold may be written and how a value is shown.
FRACTION, MILLISECONDS, SECONDS, PER_SECOND, FLAG, COUNT = "fraction", "ms", "seconds", "per_second", "flag", "count"
SIGNAL_UNITS: dict[str, str] = {
    "request_rate": PER_SECOND,
    "error_rate": FRACTION,
    "p99_ms": MILLISECONDS,
    "edge_request_rate": PER_SECOND,
    "edge_error_rate": FRACTION,
    "edge_p99_ms": MILLISECONDS,
    "version_edge_request_rate": PER_SECOND,
    "version_edge_error_rate": FRACTION,
    "version_edge_p99_ms": MILLISECONDS,
    "gateway_connection_rate": PER_SECOND,
    "gateway_connection_error_rate": FRACTION,
    "gateway_bytes_rate": PER_SECOND,  # bytes per second
    "circuit_breaker_overflow": PER_SECOND,
    "retry_exhausted": PER_SECOND,
    "policy_denied": PER_SECOND,
    "policy_denied_by_caller": PER_SECOND,
    "cert_expiry_seconds": SECONDS,
    "cert_life_left_ratio": FRACTION,
    "ca_root_expiry_seconds": SECONDS,
    "proxy_out_of_sync": FLAG,
    "metrics_unreachable": FLAG,
    "thread_restarts": COUNT,
    "resources_rejected": COUNT,
    "catalog_holding": FLAG,
    "store_suspect": FLAG,
}

_UNIT_HINTS = {
    FRACTION: 'a fraction 0..1 or a percentage such as "5%"',
    MILLISECONDS: 'milliseconds as a number or a duration such as "500ms" or "1s"',
    SECONDS: 'seconds as a number or a duration such as "2h" or "30d"',
    PER_SECOND: 'a rate per second as a number, or "N/s", "N/m" or "N/h"',
    FLAG: "a number (the signal is 0 or 1)",
    COUNT: "a number (the signal is a count)",
}
_RATE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*")
_PER = {"s": 1.0, "m": 60.0, "h": 3600.0}
_PROM_LABEL = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
RESERVED_LABELS = ("alertname", "severity")
"""Labels the alert sets itself; a rule's ``labels`` may not set them (``severity`` has its own field)."""


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse_threshold(signal: str, value: Any) -> float:
    """The threshold in the signal's own unit (fraction, ms, seconds, per second); ValueError saying why not."""
    unit = SIGNAL_UNITS.get(signal)
    if unit is None:
        raise ValueError(f"unknown signal {signal!r}")
    hint = _UNIT_HINTS[unit]
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be {hint}, got {type_name(value)}")
    out: float | None
    if isinstance(value, (int, float)):
        out = float(value)
    else:
        text = value.strip()
        out = _number(text)  # a bare number (quoted) means the signal's unit
        if out is None and unit == FRACTION and text.endswith("%"):
            pct = _number(text[:-1].strip())
            out = None if pct is None else pct / 100.0
        elif out is None and unit in (MILLISECONDS, SECONDS):
            try:
                secs = parse_duration(text).total_seconds()
            except ValueError:
                secs = None
            out = None if secs is None else (secs * 1000.0 if unit == MILLISECONDS else secs)
        elif out is None and unit == PER_SECOND and (m := _RATE.fullmatch(text)):
            out = float(m.group(1)) / _PER[m.group(2)]
        if out is None:
            raise ValueError(f"must be {hint}, got {json.dumps(value)}")
    if not math.isfinite(out) or out < 0:
        raise ValueError(f"must be {hint} (not negative), got {json.dumps(value)}")
    if unit == FRACTION and out > 1:
        raise ValueError(f'must be {hint}; {json.dumps(value)} is over 100% (write "{value}%" for a percentage)')
    return out


def format_value(signal: str, value: float) -> str:
    """A signal value as an operator reads it: ``7.3%``, ``1200ms``, ``1h30m``, ``0.52/s``."""
    unit = SIGNAL_UNITS.get(signal, FLAG)
    if not math.isfinite(value):
        return str(value)
    if unit == FRACTION:
        return f"{value * 100:.3g}%"
    if unit == MILLISECONDS:
        return f"{value:.4g}ms"
    if unit == SECONDS:
        if value <= 0:
            return "expired"
        from datetime import timedelta

        return format_duration(timedelta(seconds=round(value))) or "0s"
    if unit == PER_SECOND:
        return f"{value:.3g}/s"
    return f"{value:g}"


def template_fields(signal: str) -> tuple[str, ...]:
    """Placeholders a summary/description of a rule over ``signal`` may use."""
    names = set(SIGNAL_LABELS.get(signal, ())) | {"value", "threshold", "for", "severity", "alertname"}
    if any(lbl in names for lbl in ("destination", "spiffe_id")):
        names.add("service")  # the edge's destination, or the certificate's service account
    return tuple(sorted(names))


def template_placeholders(template: str) -> list[str]:
    """Names used as ``{name}`` in ``template``; ValueError on a malformed template (unbalanced braces)."""
    out = []
    for _literal, name, _spec, _conv in string.Formatter().parse(template):
        if name is not None:
            out.append(name)
    return out


class _Threshold(Schema):
    """Accepts what :func:`parse_threshold` might accept; the signal-specific check is a spec rule."""

    expected = "a number or a string such as \"5%\", \"500ms\", \"2h\" or \"1/s\""

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return self._wrong_type(value, path, ctx)
        return value


class _For(Schema):
    expected = 'a duration such as "30s", "1m" or "1h"'

    def check(self, value: Any, path: Path, ctx: Context) -> Any:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            return self._wrong_type(value, path, ctx)
        try:
            secs = parse_duration(value).total_seconds()
        except ValueError as exc:
            ctx.add(path, str(exc))
            return INVALID
        if secs < 0:
            ctx.add(path, f"must not be negative, got {json.dumps(value)}")
            return INVALID
        return value


class _LabelName(StrKey):
    """A Prometheus label name (so the rule exports to a valid Prometheus rule file)."""

    def check(self, key: Any, path: Path, ctx: Context) -> Any:
        key = super().check(key, path, ctx)
        if key is INVALID:
            return INVALID
        if not _PROM_LABEL.fullmatch(key) or key.startswith("__"):
            ctx.add(path, "label names must match [a-zA-Z_][a-zA-Z0-9_]* and not start with '__' (Prometheus rules)")
            return INVALID
        return key


def _check_rule(spec: dict, path: Path, ctx: Context) -> None:
    """Cross-field checks: required fields unless disabled, threshold and match against the signal, templates."""
    if spec.get("disabled"):
        return
    for name in ("signal", "op", "threshold"):
        if name not in spec:
            ctx.add(path.field(name), "required field is missing (only a rule with disabled: true may omit it)")
    signal = spec.get("signal")
    if signal is None:
        return
    if "threshold" in spec:
        try:
            parse_threshold(signal, spec["threshold"])
        except ValueError as exc:
            ctx.add(path.field("threshold"), f"{exc} (signal {signal})")
    allowed = SIGNAL_LABELS[signal]
    for key in spec.get("match") or {}:
        if key not in allowed:
            known = ", ".join(allowed) if allowed else "none: it has a single value"
            ctx.add(path.field("match").key(key), f"signal {signal} has no label {json.dumps(key)}; its labels: {known}")
    fields = template_fields(signal)
    texts = [(path.field("summary"), spec.get("summary")), (path.field("description"), spec.get("description"))]
    texts += [(path.field("annotations").key(k), v) for k, v in (spec.get("annotations") or {}).items()]
    for p, text in texts:
        if not text:
            continue
        try:
            names = template_placeholders(text)
        except ValueError as exc:
            ctx.add(p, f"malformed template ({exc}); write {{{{ and }}}} for literal braces")
            continue
        for name in names:
            if name not in fields:
                ctx.add(p, f"unknown placeholder {{{name}}} for signal {signal}; available: "
                           + ", ".join("{" + f + "}" for f in fields))
    for name in RESERVED_LABELS:
        if name in (spec.get("labels") or {}):
            ctx.add(path.field("labels").key(name), f"{name} is set by the alert itself"
                    + ("; use spec.severity" if name == "severity" else "; it is the rule's name"))


SPEC = Obj(
    {
        "signal": Enum(*SIGNAL_LABELS),
        "match": StringMap(),
        "op": Enum(*OPS),
        "threshold": _Threshold(),
        "for": _For(),
        "keepFiringFor": _For(),
        "severity": Enum(*SEVERITIES),
        "summary": Str(min_len=1, max_len=1024),
        "description": Str(min_len=1, max_len=4096),
        "labels": StringMap(key=_LabelName()),
        "annotations": StringMap(key=_LabelName()),
        "disabled": Bool(),
    },
    rules=[_check_rule],
)

KIND = KindSpec.from_schema(
    API_VERSION,
    KIND_NAME,
    SPEC,
    spec_required=True,
    summary="alert when a mesh signal (error rate, p99, cert expiry, ...) crosses a threshold for a while",
)


def alert_name(rule_name: str) -> str:
    """The ``alertname`` of a rule: its DNS-style name in CamelCase (``high-error-rate`` -> ``HighErrorRate``).

    Prometheus requires alert names to be valid metric names, which a ``-`` is not; the same name is
    used by meshcore's own evaluation, its webhooks and the exported rule file, so they agree."""
    parts = [p for p in re.split(r"[^a-zA-Z0-9]+", rule_name) if p]
    name = "".join(p[:1].upper() + p[1:] for p in parts) or "Alert"
    return name if not name[0].isdigit() else "Alert" + name


__all__ = [
    "API_VERSION",
    "KIND",
    "KIND_NAME",
    "OPS",
    "SEVERITIES",
    "DEFAULT_SEVERITY",
    "SIGNAL_UNITS",
    "RESERVED_LABELS",
    "alert_name",
    "format_value",
    "parse_threshold",
    "template_fields",
    "template_placeholders",
]
