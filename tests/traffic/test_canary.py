"""The canary state machine (pure): parsing, each decision with its reason and numbers, and the history."""

from __future__ import annotations

import json

import pytest

from meshcore.errors import ConfigError
from meshcore.traffic import canary as sm

T0 = 1_700_000_000.0


def spec(**kw) -> sm.CanarySpec:
    base = dict(service="reviews", canary="v2", stable="v1", steps=(10, 25, 50, 100), interval_s=60,
                max_error_rate=0.01, max_p99_ms=500.0, min_requests=20, max_holds=3)
    return sm.CanarySpec(**{**base, **kw})


def ok(requests=100, errors=0, p99=120.0) -> sm.Measurement:
    return sm.Measurement(requests=requests, errors=errors, p99_ms=p99, seconds=60)


# --- parsing ------------------------------------------------------------------------------------------------


def test_parse_steps():
    assert sm.parse_steps("10,25,50,100") == (10, 25, 50, 100)
    assert sm.parse_steps(["5%", "50"]) == (5, 50)
    for bad in ("", "10,5", "0,10", "10,101", "10,ten", "10,10"):
        with pytest.raises(ConfigError):
            sm.parse_steps(bad)


def test_parse_rate_ms_interval():
    assert sm.parse_rate("1%") == pytest.approx(0.01)
    assert sm.parse_rate("0.5") == pytest.approx(0.005)
    assert sm.parse_rate(5) == pytest.approx(0.05)
    assert sm.parse_ms("500ms") == 500 and sm.parse_ms("1.5s") == 1500 and sm.parse_ms("250") == 250
    assert sm.parse_interval("1m") == 60 and sm.parse_interval("2s") == 2
    for fn, bad in ((sm.parse_rate, "lots"), (sm.parse_rate, "150%"), (sm.parse_ms, "fast"), (sm.parse_ms, "0ms"),
                    (sm.parse_interval, "10ms"), (sm.parse_interval, "soon")):
        with pytest.raises(ConfigError):
            fn(bad)


def test_spec_refuses_same_subsets_and_bad_limits():
    with pytest.raises(ConfigError, match="both 'v2'"):
        spec(stable="v2")
    with pytest.raises(ConfigError):
        spec(max_holds=0)


# --- decisions ----------------------------------------------------------------------------------------------


def test_start_is_first_step_with_split_weights():
    st = sm.start(spec(), T0)
    assert (st.phase, st.step, st.weight) == (sm.PROGRESSING, 0, 10)
    assert st.weights() == {"v1": 90, "v2": 10}
    assert [d.action for d in st.decisions] == [sm.START]


def test_no_decision_before_the_interval_ends_when_within_limits():
    st = sm.start(spec(), T0)
    assert sm.evaluate(st, ok(), T0 + 59) is None


def test_advance_through_every_step_then_promote():
    st = sm.start(spec(), T0)
    now = T0
    weights = []
    for _ in range(3):
        now += 60
        d = sm.evaluate(st, ok(), now)
        assert d.action == sm.ADVANCE and d.requests == 100 and d.error_rate == 0 and d.p99_ms == 120
        st = sm.apply(st, d)
        weights.append(st.weight)
    assert weights == [25, 50, 100]
    assert st.weights() == {"v2": 100}
    now += 60
    d = sm.evaluate(st, ok(), now)
    assert d.action == sm.PROMOTE and "promoted" in d.reason
    st = sm.apply(st, d)
    assert (st.phase, st.weight, st.finished, st.finished_at) == (sm.PROMOTED, 100, True, now)
    assert sm.evaluate(st, ok(), now + 600) is None  # finished: nothing more to decide


def test_last_step_below_100_promotes_to_100():
    st = sm.start(spec(steps=(20, 50)), T0)
    st = sm.apply(st, sm.evaluate(st, ok(), T0 + 60))
    d = sm.evaluate(st, ok(), T0 + 120)
    assert (d.action, d.weight, d.next_weight) == (sm.PROMOTE, 50, 100)
    assert sm.apply(st, d).weights() == {"v2": 100}


def test_error_rate_over_limit_rolls_back_at_once_mid_interval():
    st = sm.start(spec(), T0)
    d = sm.evaluate(st, ok(requests=40, errors=2), T0 + 5)
    assert d.action == sm.ROLLBACK
    assert "error rate 5.00% over the limit 1.00%" in d.reason and "2 of 40" in d.reason
    assert (d.requests, d.error_rate) == (40, 0.05)
    st = sm.apply(st, d)
    assert (st.phase, st.weight, st.weights()) == (sm.FAILED, 0, {"v1": 100})
    assert st.reason == d.reason


def test_p99_over_limit_rolls_back():
    d = sm.evaluate(sm.start(spec(), T0), ok(p99=812.5), T0 + 60)
    assert d.action == sm.ROLLBACK and "p99 latency 812.5ms over the limit 500ms" in d.reason


def test_no_p99_limit_ignores_latency():
    d = sm.evaluate(sm.start(spec(max_p99_ms=None), T0), ok(p99=9000), T0 + 60)
    assert d.action == sm.ADVANCE


def test_limits_need_min_requests():
    st = sm.start(spec(), T0)
    # 5 of 10 failed, but 10 < min_requests: not judged mid-interval, held at its end
    assert sm.evaluate(st, ok(requests=10, errors=5), T0 + 5) is None
    d = sm.evaluate(st, ok(requests=10, errors=5), T0 + 60)
    assert d.action == sm.HOLD and "only 10 request(s)" in d.reason and d.next_weight == 10


def test_holds_then_rolls_back_when_nothing_can_be_judged():
    st = sm.start(spec(max_holds=3), T0)
    now = T0
    for _ in range(2):
        now += 60
        d = sm.evaluate(st, ok(requests=0), now)
        assert d.action == sm.HOLD
        st = sm.apply(st, d)
        assert st.step_started_at == now and st.weight == 10
    d = sm.evaluate(st, ok(requests=0), now + 60)
    assert d.action == sm.ROLLBACK and "cannot judge" in d.reason
    assert st.holds == 2


def test_advance_resets_holds():
    st = sm.start(spec(max_holds=3), T0)
    st = sm.apply(st, sm.evaluate(st, ok(requests=1), T0 + 60))
    assert st.holds == 1
    st = sm.apply(st, sm.evaluate(st, ok(), T0 + 120))
    assert (st.holds, st.weight) == (0, 25)


def test_abort_and_resume():
    st = sm.start(spec(), T0)
    st = sm.apply(st, sm.resume(st, T0 + 30))
    assert st.step_started_at == T0 + 30 and st.decisions[-1].action == sm.RESUME
    st = sm.apply(st, sm.abort(st, T0 + 31))
    assert (st.phase, st.weights()) == (sm.ABORTED, {"v1": 100})
    assert "aborted by the operator" in st.reason


def test_state_round_trips_through_json_and_logs_a_line():
    st = sm.start(spec(), T0)
    st = sm.apply(st, sm.evaluate(st, ok(requests=50, errors=0, p99=80), T0 + 60))
    data = json.loads(json.dumps(st.to_dict()))
    again = sm.CanaryState.from_dict(data)
    assert again == st
    assert data["weights"] == {"v1": 75, "v2": 25} and data["steps"] == [10, 25, 50, 100]
    line = st.decisions[-1].log_line("reviews")
    assert line.startswith("canary service=reviews step=10 requests=50 error_rate=0.00% p99=80.0ms decision=advance")
    with pytest.raises(ConfigError):
        sm.CanaryState.from_dict({**data, "phase": "sleeping"})
