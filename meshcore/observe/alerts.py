"""Alert evaluation over :class:`~meshcore.observe.signals.Signals` with Prometheus' semantics (pure, no IO).

Each rule is evaluated against every entry (label set) of its signal, so one rule yields one alert per
service, edge, node or certificate. An alert's life, as in Prometheus:

* **inactive** - the condition is false (or the signal has no entry for the label set);
* **pending** - the condition became true at ``active_since``; it has not held for ``for`` yet;
* **firing** - the condition has held for at least ``for`` (immediately when ``for`` is 0), since ``fired_at``;
* **resolved** - a *firing* alert whose condition is false again (for longer than the rule's
  ``keepFiringFor``, default 0): reported once with ``resolved_at``, then forgotten. A *pending* alert whose condition turns false is forgotten silently.

Time is the ``at`` of the Signals being evaluated, never the wall clock, so evaluation is deterministic.
The evaluator reads rules as :class:`Rule` values; :func:`effective_rules` merges the shipped defaults
with the operator's AlertRule resources (same name replaces the default, ``disabled: true`` drops it).
"""

from __future__ import annotations

import logging
import math
import operator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Sequence

from meshcore.api.operator import AlertRuleView, AlertView
from meshcore.durations import format_duration, parse_duration
from meshcore.resources.kinds.alert_rule import (
    DEFAULT_SEVERITY,
    KIND_NAME,
    alert_name,
    format_value,
    parse_threshold,
)
from meshcore.resources.model import Resource

from .signals import SIGNAL_LABELS, Labels, Signals

log = logging.getLogger("meshcore.observe.alerts")

PENDING, FIRING, RESOLVED = "pending", "firing", "resolved"
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le}
_SEVERITY_ORDER = {"critical": 0, "warning": 1, "info": 2}


def rfc3339(ts: float | None) -> str | None:
    """Unix time as RFC 3339 UTC with milliseconds (``2025-01-02T03:04:05.678Z``); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Rule:
    """One effective alert rule, parsed: thresholds in the signal's unit, ``for`` in seconds.

    ``origin`` says where it comes from: ``default``, or the resource key (``AlertRule/ns/name``) of the
    operator's rule, with ``overrides_default`` when that resource replaces a shipped rule.
    """

    name: str
    signal: str = ""
    op: str = ">"
    threshold: float = 0.0
    threshold_text: str = "0"
    for_seconds: float = 0.0
    keep_firing_for_seconds: float = 0.0
    severity: str = DEFAULT_SEVERITY
    match: Mapping[str, str] = field(default_factory=dict)
    summary: str = ""
    description: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    disabled: bool = False
    origin: str = "default"
    overrides_default: bool = False

    @property
    def alertname(self) -> str:
        return alert_name(self.name)

    @classmethod
    def from_resource(cls, res: Resource, origin: str | None = None) -> "Rule":
        """A Rule from a validated AlertRule resource (the loader has checked every field)."""
        spec = dict(res.spec or {})
        disabled = bool(spec.get("disabled"))
        signal = spec.get("signal", "")
        raw = spec.get("threshold", 0)
        threshold = parse_threshold(signal, raw) if signal and not disabled else 0.0
        return cls(
            name=res.name, signal=signal, op=spec.get("op", ">"), threshold=threshold,
            threshold_text=str(raw), for_seconds=parse_duration(spec.get("for", 0)).total_seconds(),
            keep_firing_for_seconds=parse_duration(spec.get("keepFiringFor", 0)).total_seconds(),
            severity=spec.get("severity", DEFAULT_SEVERITY), match=dict(spec.get("match") or {}),
            summary=spec.get("summary", ""), description=spec.get("description", ""),
            labels=dict(spec.get("labels") or {}), annotations=dict(spec.get("annotations") or {}),
            disabled=disabled, origin=origin or str(res.key),
        )

    def view(self) -> AlertRuleView:
        """What ``GET /v1/alerts/rules`` lists (and :meth:`from_view` reads back)."""
        return AlertRuleView(
            name=self.name, alertname=self.alertname, signal=self.signal, match=dict(self.match),
            op=self.op, threshold=self.threshold_text, threshold_value=self.threshold,
            for_text=format_duration_s(self.for_seconds), for_seconds=self.for_seconds,
            keep_firing_for_seconds=self.keep_firing_for_seconds,
            severity=self.severity, summary=self.summary, description=self.description,
            labels=dict(self.labels), annotations=dict(self.annotations), disabled=self.disabled,
            origin=self.origin, overrides_default=self.overrides_default,
        )

    def to_dict(self) -> dict:
        return self.view().to_json()

    @classmethod
    def from_view(cls, v: AlertRuleView) -> "Rule":
        return cls(
            name=v.name, signal=v.signal, op=v.op, threshold=v.threshold_value, threshold_text=v.threshold,
            for_seconds=v.for_seconds, keep_firing_for_seconds=v.keep_firing_for_seconds,
            severity=v.severity or DEFAULT_SEVERITY, match=dict(v.match), summary=v.summary,
            description=v.description, labels=dict(v.labels), annotations=dict(v.annotations),
            disabled=v.disabled, origin=v.origin, overrides_default=v.overrides_default,
        )

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Rule":
        """A rule from its ``GET /v1/alerts/rules`` JSON (checked: :class:`BadRequest` names a field that does
        not fit)."""
        return cls.from_view(AlertRuleView.from_json(dict(data), "rule"))

    def holds(self, value: float) -> bool:
        """Whether ``value`` meets the condition (NaN never does)."""
        return not math.isnan(value) and _OPS[self.op](value, self.threshold)

    def matches(self, entry: Labels) -> bool:
        have = dict(entry)
        return all(have.get(k) == v for k, v in self.match.items())


def format_duration_s(seconds: float) -> str:
    from datetime import timedelta

    return format_duration(timedelta(seconds=seconds)) or "0s"


def effective_rules(resources: Iterable[Resource], defaults: bool = True) -> list[Rule]:
    """The rules in force: the shipped defaults, replaced by name by the operator's AlertRules.

    ``resources`` may hold other kinds (a snapshot's resources); they are ignored. Disabled rules are
    included (``disabled=True``) so listings can show them; the evaluator skips them. When two operator
    rules in different namespaces share a name, the one whose namespace sorts first wins (a warning is
    logged): alert names are mesh-wide.
    """
    from .default_rules import default_rule_resources

    out: dict[str, Rule] = {}
    if defaults:
        for res in default_rule_resources():
            out[res.name] = Rule.from_resource(res, origin="default")
    seen: dict[str, str] = {}
    for res in sorted((r for r in resources if r.kind == KIND_NAME), key=lambda r: (r.namespace, r.name)):
        if res.name in seen:
            log.warning("AlertRule %s ignored: %s has the same name (alert names are mesh-wide)", res.key, seen[res.name])
            continue
        seen[res.name] = str(res.key)
        rule = Rule.from_resource(res)
        out[res.name] = replace(rule, overrides_default=res.name in out and out[res.name].origin == "default")
    return sorted(out.values(), key=lambda r: r.name)


@dataclass(frozen=True)
class Alert:
    """One alert instance: a rule applied to one label set of its signal."""

    name: str
    severity: str
    state: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    value: float
    active_since: float
    fired_at: float | None = None
    resolved_at: float | None = None
    signal: str = ""

    @property
    def fingerprint(self) -> str:
        """Alertmanager's fingerprint of the label set (FNV-1a 64 over sorted names and values), 16 hex digits."""
        return label_fingerprint(self.labels)

    def to_dict(self) -> dict:
        """The ``GET /v1/alerts`` entry: times in RFC 3339 (UTC), value in the signal's unit."""
        return self.view().to_json()

    def view(self) -> AlertView:
        return AlertView(
            name=self.name, severity=self.severity, state=self.state, labels=dict(self.labels),
            annotations=dict(self.annotations), value=self.value,
            value_text=format_value(self.signal, self.value) if self.signal else f"{self.value:g}",
            signal=self.signal, active_since=rfc3339(self.active_since), fired_at=rfc3339(self.fired_at),
            resolved_at=rfc3339(self.resolved_at), fingerprint=self.fingerprint,
        )


_FNV_OFFSET, _FNV_PRIME = 14695981039346656037, 1099511628211


def label_fingerprint(labels: Mapping[str, str]) -> str:
    """Prometheus' ``LabelSet.Fingerprint``: FNV-1a 64 over ``name 0xff value 0xff`` in name order."""
    h = _FNV_OFFSET
    for name in sorted(labels):
        for chunk in (name.encode(), b"\xff", str(labels[name]).encode(), b"\xff"):
            for byte in chunk:
                h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


class _Missing(dict):
    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def _service_of(entry: Mapping[str, str]) -> str | None:
    if "service" in entry:
        return entry["service"]
    if "destination" in entry:
        return entry["destination"]
    sid = entry.get("spiffe_id", "")
    if "/sa/" in sid:
        return sid.rsplit("/sa/", 1)[1]
    return None


def _render(template: str, context: Mapping[str, str]) -> str:
    try:
        return template.format_map(_Missing(context))
    except (ValueError, IndexError, AttributeError):  # the loader rejects these; never fail an evaluation
        return template


def _default_summary(rule: Rule, entry: Mapping[str, str]) -> str:
    where = ", ".join(f"{k}={v}" for k, v in sorted(entry.items()))
    return f"{rule.signal}{' ' + where if where else ''} is {{value}} ({rule.op} {{threshold}})"


def _annotations(rule: Rule, entry: Mapping[str, str], value: float) -> dict[str, str]:
    context = {**entry, "value": format_value(rule.signal, value),
               "threshold": format_value(rule.signal, rule.threshold),
               "for": format_duration_s(rule.for_seconds), "severity": rule.severity, "alertname": rule.alertname}
    service = _service_of(entry)
    if service is not None:
        context["service"] = service
    out = {k: _render(v, context) for k, v in rule.annotations.items()}
    out["summary"] = _render(rule.summary or _default_summary(rule, entry), context)
    if rule.description:
        out["description"] = _render(rule.description, context)
    return out


def alert_labels(rule: Rule, entry: Mapping[str, str]) -> dict[str, str]:
    """Signal labels, then the rule's labels (they win), then ``alertname`` and ``severity``."""
    return {**entry, **rule.labels, "alertname": rule.alertname, "severity": rule.severity}


@dataclass
class _Active:
    active_since: float
    fired_at: float | None
    value: float
    labels: dict[str, str]
    annotations: dict[str, str]
    severity: str
    signal: str = ""
    last_true: float = 0.0


class AlertEvaluator:
    """Keeps the pending and firing alerts of a rule set across evaluations.

    ``evaluate(signals)`` returns every pending and firing alert, plus the alerts resolved by this
    evaluation (state ``resolved``; they are not returned again). Not thread-safe: one caller
    evaluates (the control plane's alerting serializes calls)."""

    def __init__(self, rules: Iterable[Rule | Resource] = ()):
        self._rules: dict[str, Rule] = {}
        self._active: dict[tuple[str, Labels], _Active] = {}
        self._last: list[Alert] = []
        self.set_rules(rules)

    @property
    def rules(self) -> list[Rule]:
        return list(self._rules.values())

    def set_rules(self, rules: Iterable[Rule | Resource]) -> None:
        """Replace the rule set. Alerts of rules that still exist keep their state (re-checked at the next
        evaluation against the new condition); firing alerts of removed or disabled rules resolve then."""
        parsed = [r if isinstance(r, Rule) else Rule.from_resource(r) for r in rules]
        self._rules = {r.name: r for r in parsed if not r.disabled}

    def active(self) -> list[Alert]:
        """The pending and firing alerts as of the last evaluation."""
        return [a for a in self._last if a.state != RESOLVED]

    def evaluate(self, signals: Signals) -> list[Alert]:
        now = signals.at
        out: list[Alert] = []
        seen: set[tuple[str, Labels]] = set()
        for rule in self._rules.values():
            if rule.signal not in SIGNAL_LABELS:
                continue
            for entry, value in signals.get(rule.signal).items():
                if not rule.matches(entry) or not rule.holds(float(value)):
                    continue
                key = (rule.name, entry)
                seen.add(key)
                entry_map = dict(entry)
                state = self._active.get(key)
                if state is None:
                    state = self._active[key] = _Active(now, None, value, {}, {}, rule.severity, rule.signal, now)
                state.value = float(value)
                state.labels = alert_labels(rule, entry_map)
                state.annotations = _annotations(rule, entry_map, float(value))
                state.severity = rule.severity
                state.last_true = now
                if state.fired_at is None and now - state.active_since >= rule.for_seconds:
                    state.fired_at = now
                out.append(self._alert(rule.name, state, FIRING if state.fired_at is not None else PENDING))
        for key in [k for k in self._active if k not in seen]:
            state = self._active[key]
            name, entry = key
            kept = self._rules.get(name)
            if state.fired_at is not None and kept is not None and now - state.last_true < kept.keep_firing_for_seconds:
                out.append(self._alert(name, state, FIRING))  # keepFiringFor: rides out a short gap
                continue
            del self._active[key]
            if state.fired_at is None:
                continue  # a pending alert that stopped holding is dropped without a notice
            current = self._current_value(name, entry, signals)
            if current is not None:
                state.value = current
            out.append(self._alert(name, state, RESOLVED, resolved_at=now))
        out.sort(key=lambda a: (_SEVERITY_ORDER.get(a.severity, 9), a.name, sorted(a.labels.items())))
        self._last = out
        return out

    def _current_value(self, name: str, entry: Labels, signals: Signals) -> float | None:
        rule = self._rules.get(name)
        if rule is None:
            return None
        value = signals.get(rule.signal).get(entry)
        return None if value is None else float(value)

    @staticmethod
    def _alert(name: str, state: _Active, status: str, resolved_at: float | None = None) -> Alert:
        return Alert(name=name, severity=state.severity, state=status, labels=dict(state.labels),
                     annotations=dict(state.annotations), value=state.value, active_since=state.active_since,
                     fired_at=state.fired_at, resolved_at=resolved_at, signal=state.signal)


# --- Alertmanager webhook payload (pure) --------------------------------------------------------

ZERO_TIME = "0001-01-01T00:00:00Z"
"""Alertmanager's ``endsAt`` for an alert that has not ended."""


def _common(maps: Sequence[Mapping[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = dict(maps[0])
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


def webhook_payload(alerts: Sequence[Alert], *, receiver: str, external_url: str,
                    generator_url: str = "", group_by: Sequence[str] = ("alertname",)) -> dict:
    """An Alertmanager webhook (version 4) body for one group of alerts (firing and/or resolved).

    ``status`` is ``firing`` while any alert in it fires, else ``resolved``; firing alerts end at
    Alertmanager's zero time, resolved ones at their ``resolved_at``."""
    group_labels = {k: alerts[0].labels[k] for k in group_by if alerts and k in alerts[0].labels}
    group_key = "{}:{" + ",".join(f'{k}="{v}"' for k, v in sorted(group_labels.items())) + "}"
    items = []
    for a in alerts:
        items.append({
            "status": RESOLVED if a.state == RESOLVED else FIRING,
            "labels": dict(a.labels), "annotations": dict(a.annotations),
            "startsAt": rfc3339(a.fired_at if a.fired_at is not None else a.active_since),
            "endsAt": rfc3339(a.resolved_at) if a.resolved_at is not None else ZERO_TIME,
            "generatorURL": generator_url, "fingerprint": a.fingerprint,
        })
    return {
        "version": "4", "groupKey": group_key, "truncatedAlerts": 0,
        "status": FIRING if any(i["status"] == FIRING for i in items) else RESOLVED,
        "receiver": receiver, "groupLabels": group_labels,
        "commonLabels": _common([a.labels for a in alerts]),
        "commonAnnotations": _common([a.annotations for a in alerts]),
        "externalURL": external_url, "alerts": items,
    }


__all__ = [
    "Alert", "AlertEvaluator", "Rule", "effective_rules", "alert_labels", "label_fingerprint", "rfc3339",
    "webhook_payload", "PENDING", "FIRING", "RESOLVED", "ZERO_TIME",
]
