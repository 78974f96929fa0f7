"""Automated canary analysis as a pure state machine: measure, decide, record.

A canary moves a service's traffic from a **stable** subset to a **canary** subset in steps
(``10,25,50,100`` percent). At each step it waits one ``interval`` and judges the canary subset by
what the calling Envoys measured over that interval: error rate (5xx share), p99 latency and request
count. The control plane's IO side (:mod:`meshcore.controlplane.canary`) measures and applies weights;
everything here is plain data and decisions, no clock, network or disk: time is an argument.

Rules, in order, each time :func:`evaluate` is called with the measurement since the step started:

* at least ``min_requests`` requests and a limit exceeded -> **rollback** at once (even mid-interval):
  all traffic back to the stable subset, the canary ``failed`` with the reason;
* the interval is not over yet -> no decision (keep measuring);
* fewer than ``min_requests`` requests -> **hold** (measure the step again); after ``max_holds``
  holds in a row -> **rollback** (a canary nobody calls cannot be judged);
* otherwise -> **advance** to the next step, or **promote** after the last one (100% canary).

Every decision is a :class:`Decision` with the action, the reason in words and the numbers it was
based on, appended to the state's history (what ``meshctl canary status`` shows).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from ..durations import parse_duration
from ..errors import ConfigError

PROGRESSING = "progressing"
PROMOTED = "promoted"
FAILED = "failed"
ABORTED = "aborted"
PHASES = (PROGRESSING, PROMOTED, FAILED, ABORTED)
FINISHED = (PROMOTED, FAILED, ABORTED)

START, ADVANCE, HOLD, PROMOTE, ROLLBACK, ABORT, RESUME = (
    "start", "advance", "hold", "promote", "rollback", "abort", "resume")

DEFAULT_STEPS = (10, 25, 50, 100)
DEFAULT_MIN_REQUESTS = 20
DEFAULT_MAX_HOLDS = 5


# --- parsing operator input ------------------------------------------------------------------------------


def parse_steps(text: str | list | tuple) -> tuple[int, ...]:
    """``"10,25,50,100"`` (or a list) -> ``(10, 25, 50, 100)``: whole percentages, rising, 1..100."""
    parts = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p).strip() for p in text]
    if not parts or parts == [""]:
        raise ConfigError("--steps: give the canary weights in percent, e.g. --steps 10,25,50,100")
    steps: list[int] = []
    for p in parts:
        p = p.rstrip("%")
        if not p.isdigit() or not 1 <= int(p) <= 100:
            raise ConfigError(f"--steps {text!r}: {p!r} is not a whole percentage from 1 to 100")
        if steps and int(p) <= steps[-1]:
            raise ConfigError(f"--steps {text!r}: weights must rise step by step (e.g. 10,25,50,100)")
        steps.append(int(p))
    return tuple(steps)


def parse_rate(text: str | float | int) -> float:
    """``"1%"`` -> 0.01; a bare number is percent too (``"0.5"`` -> 0.005)."""
    try:
        value = float(str(text).strip().removesuffix("%")) / 100
    except ValueError:
        raise ConfigError(f"--max-error-rate {text!r}: write a percentage such as 1% or 0.5%") from None
    if not 0 <= value <= 1 or math.isnan(value):
        raise ConfigError(f"--max-error-rate {text!r}: must be between 0% and 100%")
    return value


def parse_ms(text: str | float | int, flag: str = "--max-p99") -> float:
    """``"500ms"``, ``"1.5s"`` -> milliseconds; a bare number is milliseconds."""
    if isinstance(text, (int, float)) or str(text).strip().replace(".", "", 1).isdigit():
        value = float(text)
    else:
        try:
            value = parse_duration(text).total_seconds() * 1000
        except ValueError as exc:
            raise ConfigError(f"{flag} {text!r}: {exc}") from None
    if value <= 0:
        raise ConfigError(f"{flag} {text!r}: must be above 0, e.g. 500ms")
    return value


def parse_interval(text: str | float | int) -> float:
    """``"1m"`` -> 60.0 seconds; at least 1s (Envoy's counters need time to say anything)."""
    try:
        seconds = parse_duration(text).total_seconds()
    except ValueError as exc:
        raise ConfigError(f"--interval {text!r}: {exc}") from None
    if not 1 <= seconds <= 86400:
        raise ConfigError(f"--interval {text!r}: must be between 1s and 24h")
    return seconds


# --- data ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanarySpec:
    """What the operator asked for (``meshctl canary start``)."""

    service: str
    canary: str  # subset that receives the new version's traffic, e.g. v2
    stable: str  # subset that gets the rest, and everything back on rollback, e.g. v1
    steps: tuple[int, ...] = DEFAULT_STEPS
    interval_s: float = 60.0
    max_error_rate: float = 0.01  # fraction of 5xx answers, 0..1
    max_p99_ms: float | None = None
    min_requests: int = DEFAULT_MIN_REQUESTS
    max_holds: int = DEFAULT_MAX_HOLDS
    label: str = "version"  # workload label new subsets select on
    namespace: str = "default"

    def __post_init__(self) -> None:
        if self.canary == self.stable:
            raise ConfigError(f"canary and stable subset are both {self.canary!r}; "
                              f"give --from the subset that serves now and --to the new one")
        parse_steps(list(self.steps))
        if self.min_requests < 0 or self.max_holds < 1:
            raise ConfigError("--min-requests must be 0 or more and --max-holds 1 or more")

    def to_dict(self) -> dict:
        out = asdict(self)
        out["steps"] = list(self.steps)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "CanarySpec":
        return cls(**{**data, "steps": tuple(data["steps"])})


@dataclass(frozen=True)
class Measurement:
    """The canary subset's numbers over a span of time, summed over every calling Envoy."""

    requests: int
    errors: int
    p99_ms: float | None
    seconds: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


@dataclass(frozen=True)
class Decision:
    """One recorded decision: what, why, and the numbers it was based on."""

    at: float  # epoch seconds
    action: str  # start | advance | hold | promote | rollback | abort | resume
    weight: int  # canary weight while measured (before the decision)
    next_weight: int  # canary weight after it
    reason: str
    requests: int | None = None
    error_rate: float | None = None
    p99_ms: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def log_line(self, service: str) -> str:
        rate = "-" if self.error_rate is None else f"{self.error_rate * 100:.2f}%"
        p99 = "-" if self.p99_ms is None else f"{self.p99_ms:.1f}ms"
        req = "-" if self.requests is None else str(self.requests)
        return (f"canary service={service} step={self.weight} requests={req} error_rate={rate} p99={p99} "
                f"decision={self.action} next={self.next_weight} reason={self.reason!r}")


@dataclass(frozen=True)
class CanaryState:
    """Where a canary is. ``weight`` is the canary subset's current share; ``step`` indexes ``spec.steps``."""

    spec: CanarySpec
    phase: str
    step: int
    weight: int
    started_at: float
    step_started_at: float
    holds: int = 0
    reason: str = ""
    finished_at: float | None = None
    decisions: tuple[Decision, ...] = field(default_factory=tuple)

    @property
    def finished(self) -> bool:
        return self.phase in FINISHED

    def weights(self) -> dict[str, int]:
        """The split this state wants: ``{stable: 100 - w, canary: w}`` without zero entries."""
        out = {self.spec.stable: 100 - self.weight, self.spec.canary: self.weight}
        return {k: v for k, v in out.items() if v > 0}

    def to_dict(self) -> dict:
        return {
            "service": self.spec.service, "phase": self.phase, "step": self.step, "weight": self.weight,
            "steps": list(self.spec.steps), "started_at": self.started_at, "step_started_at": self.step_started_at,
            "holds": self.holds, "reason": self.reason, "finished_at": self.finished_at,
            "weights": self.weights(), "spec": self.spec.to_dict(),
            "decisions": [d.to_dict() for d in self.decisions],
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CanaryState":
        if data.get("phase") not in PHASES:
            raise ConfigError(f"canary state has unknown phase {data.get('phase')!r}")
        return cls(spec=CanarySpec.from_dict(data["spec"]), phase=data["phase"], step=int(data["step"]),
                   weight=int(data["weight"]), started_at=float(data["started_at"]),
                   step_started_at=float(data["step_started_at"]), holds=int(data.get("holds", 0)),
                   reason=data.get("reason", ""), finished_at=data.get("finished_at"),
                   decisions=tuple(Decision(**d) for d in data.get("decisions", [])))


# --- transitions -----------------------------------------------------------------------------------------


def start(spec: CanarySpec, now: float) -> CanaryState:
    """A new canary at its first step."""
    first = spec.steps[0]
    d = Decision(now, START, 0, first, f"canary {spec.canary} gets {first}%, {spec.stable} the rest")
    return CanaryState(spec, PROGRESSING, 0, first, now, now, decisions=(d,))


def _limit_exceeded(spec: CanarySpec, m: Measurement) -> str:
    if m.error_rate > spec.max_error_rate:
        return (f"error rate {m.error_rate * 100:.2f}% over the limit {spec.max_error_rate * 100:.2f}% "
                f"({m.errors} of {m.requests} requests failed)")
    if spec.max_p99_ms is not None and m.p99_ms is not None and m.p99_ms > spec.max_p99_ms:
        return f"p99 latency {m.p99_ms:.1f}ms over the limit {spec.max_p99_ms:g}ms"
    return ""


def evaluate(state: CanaryState, m: Measurement, now: float) -> Decision | None:
    """The decision for ``state`` given ``m`` (measured since the step started) at ``now``; None = keep measuring."""
    if state.finished:
        return None
    spec = state.spec
    nums: dict[str, Any] = dict(requests=m.requests, error_rate=round(m.error_rate, 6),
                                p99_ms=None if m.p99_ms is None else round(m.p99_ms, 3))
    if m.requests >= max(spec.min_requests, 1):
        exceeded = _limit_exceeded(spec, m)
        if exceeded:
            return Decision(now, ROLLBACK, state.weight, 0, exceeded + f"; all traffic back to {spec.stable}", **nums)
    if now - state.step_started_at < spec.interval_s:
        return None
    if m.requests < spec.min_requests or m.requests == 0:
        if state.holds + 1 >= spec.max_holds:
            return Decision(now, ROLLBACK, state.weight, 0,
                            f"only {m.requests} request(s) reached {spec.canary} in each of {spec.max_holds} "
                            f"intervals (need {spec.min_requests}); cannot judge it, all traffic back to "
                            f"{spec.stable}", **nums)
        return Decision(now, HOLD, state.weight, state.weight,
                        f"only {m.requests} request(s) in the interval (need {spec.min_requests}); "
                        f"measuring {state.weight}% again", **nums)
    within = f"error rate {m.error_rate * 100:.2f}% <= {spec.max_error_rate * 100:.2f}%" + (
        "" if spec.max_p99_ms is None else
        f", p99 {'-' if m.p99_ms is None else f'{m.p99_ms:.1f}ms'} <= {spec.max_p99_ms:g}ms")
    if state.step + 1 >= len(spec.steps):
        return Decision(now, PROMOTE, state.weight, 100, f"{within} at the last step; {spec.canary} promoted "
                                                         f"to 100%", **nums)
    nxt = spec.steps[state.step + 1]
    return Decision(now, ADVANCE, state.weight, nxt, f"{within}; {spec.canary} goes to {nxt}%", **nums)


def abort(state: CanaryState, now: float, why: str = "aborted by the operator") -> Decision:
    return Decision(now, ABORT, state.weight, 0, f"{why}; all traffic back to {state.spec.stable}")


def resume(state: CanaryState, now: float) -> Decision:
    return Decision(now, RESUME, state.weight, state.weight,
                    f"control plane restarted; measuring {state.weight}% again from now")


def apply(state: CanaryState, d: Decision) -> CanaryState:
    """The state after decision ``d`` (recorded in the history)."""
    history = state.decisions + (d,)
    if d.action == ADVANCE:
        return replace(state, step=state.step + 1, weight=d.next_weight, step_started_at=d.at, holds=0,
                       decisions=history)
    if d.action in (HOLD, RESUME):
        return replace(state, step_started_at=d.at, holds=state.holds + (d.action == HOLD), decisions=history)
    if d.action == PROMOTE:
        return replace(state, phase=PROMOTED, weight=100, reason=d.reason, finished_at=d.at, decisions=history)
    if d.action == ROLLBACK:
        return replace(state, phase=FAILED, weight=0, reason=d.reason, finished_at=d.at, decisions=history)
    if d.action == ABORT:
        return replace(state, phase=ABORTED, weight=0, reason=d.reason, finished_at=d.at, decisions=history)
    raise ConfigError(f"unknown canary decision {d.action!r}")


__all__ = [
    "PROGRESSING", "PROMOTED", "FAILED", "ABORTED", "PHASES", "FINISHED",
    "START", "ADVANCE", "HOLD", "PROMOTE", "ROLLBACK", "ABORT", "RESUME",
    "CanarySpec", "CanaryState", "Decision", "Measurement",
    "parse_steps", "parse_rate", "parse_ms", "parse_interval",
    "start", "evaluate", "abort", "resume", "apply",
]
