"""The canary controller in a real control plane (operator API, resource store, engine), measured by a probe
function instead of Envoys (the e2e test in tests/e2e/test_canary.py measures real Envoys)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest

from meshcore.ca import generate_kek_file
from meshcore.controlplane import canary as cc
from meshcore.errors import MeshError
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.observe.graph import parse_envoy_prometheus
from meshcore.state import DirBackend
from meshcore.traffic import canary as sm

from ..e2e._topology import write_catalog
from ..state._wait import wait_for

OK = sm.Measurement(requests=100, errors=0, p99_ms=40.0, seconds=1)
FAILING = sm.Measurement(requests=100, errors=30, p99_ms=40.0, seconds=1)
IDLE = sm.Measurement(requests=0, errors=0, p99_ms=None, seconds=1)


class FixedProbe:
    """Answers whatever ``self.now`` holds (the test changes it); counts resets."""

    def __init__(self, m: sm.Measurement):
        self.now, self.resets = m, 0

    def reset(self) -> None:
        self.resets += 1

    def measure(self) -> sm.Measurement:
        return self.now


def started_control_plane(base) -> ControlPlane:
    """A control plane in ``base`` over the e2e topology's catalog files (no proxies), serving on free ports."""
    write_catalog(base / "catalog")
    plane = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0"),
                         generate_kek_file(base / "kek"))
    plane.start()
    assert plane.engine.ready.wait(20)
    plane.token = (base / "state" / "admin.token").read_text().strip()
    return plane


@pytest.fixture(scope="module")
def cp(tmp_path_factory):
    plane = started_control_plane(tmp_path_factory.mktemp("canary-cp"))
    wired = plane.canaries
    try:
        yield plane
    finally:
        wired.stop()
        plane.stop()


def _call(cp, method: str, path: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cp.addresses["http"] + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {cp.token}"})
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _controller(cp, probe: FixedProbe, subdir: str) -> cc.CanaryController:
    writer = cc.StoreTrafficWriter(cp.store, synced=lambda r: cc._synced_with(cp.mesh, r))
    return cc.CanaryController(DirBackend(cp.settings.state_dir), writer, prefix=f"{subdir}/", probe_for=lambda spec: probe,
                               ready=cp.engine.ready.is_set, check_every=0.05,
                               instances_with=lambda s, labels: cc._instances_with(cp.mesh, s, labels))


@pytest.fixture
def use(cp, request):
    """Swap in a controller with a fixed probe for one test; the control plane's own comes back after."""
    original = cp.canaries
    made = []

    def make(probe: FixedProbe, subdir: str | None = None) -> cc.CanaryController:
        c = _controller(cp, probe, subdir or f"canaries-{request.node.name}")
        cp.canaries = c
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()
    cp.canaries = original
    _call(cp, "POST", "/v1/resources/delete", {"keys": ["VirtualService/default/reviews"]})


def _wait_phase(cp, service: str, phases: tuple[str, ...], timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, st = _call(cp, "GET", f"/v1/canaries/{service}")
        assert status == 200, st
        if st["phase"] in phases:
            return st
        time.sleep(0.05)
    pytest.fail(f"canary for {service} not {phases} within {timeout}s: {st}")


def _default_route(cp, service: str = "reviews") -> list:
    _, vss = _call(cp, "GET", f"/v1/resources?kind=VirtualService&name={service}")
    return vss[0]["spec"]["http"][-1]["route"]


# --- tests -----------------------------------------------------------------------------------------------------


def test_healthy_canary_is_promoted_and_every_step_stored(cp, use):
    probe = FixedProbe(OK)
    use(probe)
    status, st = _call(cp, "POST", "/v1/canaries", {"service": "reviews", "from": "v1", "to": "v2",
                                                   "steps": "50,100", "interval": "1s", "min_requests": 5})
    assert status == 200, st
    assert st["phase"] == "progressing" and st["weights"] == {"v1": 50, "v2": 50}
    assert sorted(_default_route(cp), key=lambda d: d["destination"]["subset"]) == [
        {"destination": {"host": "reviews", "subset": "v1"}, "weight": 50},
        {"destination": {"host": "reviews", "subset": "v2"}, "weight": 50}]
    _, drs = _call(cp, "GET", "/v1/resources?kind=DestinationRule&name=reviews")
    assert {s["name"] for s in drs[0]["spec"]["subsets"]} == {"v1", "v2"}
    final = _wait_phase(cp, "reviews", ("promoted", "failed", "aborted"))
    assert final["phase"] == "promoted", final
    assert [d["action"] for d in final["decisions"]] == ["start", "advance", "promote"]
    assert final["decisions"][1]["requests"] == 100 and final["decisions"][1]["next_weight"] == 100
    assert _default_route(cp) == [{"destination": {"host": "reviews", "subset": "v2"}}]
    assert probe.resets >= 2  # measured afresh at every step
    # the whole service's snapshot follows the store
    snap = cp.engine.snapshot
    assert any(r.kind == "VirtualService" and r.name == "reviews" for r in snap.resources)


def test_failing_canary_rolls_back_at_once_with_reason(cp, use):
    probe = FixedProbe(OK)
    use(probe)
    status, st = _call(cp, "POST", "/v1/canaries", {"service": "reviews", "from": "v1", "to": "v3",
                                                   "steps": [10, 50, 100], "interval": "1h",
                                                   "max_error_rate": "1%", "min_requests": 20})
    assert status == 200, st
    probe.now = FAILING  # within the first (hour-long) step: the rollback must not wait for the interval
    final = _wait_phase(cp, "reviews", ("promoted", "failed", "aborted"), timeout=10)
    assert final["phase"] == "failed"
    assert "error rate 30.00% over the limit 1.00%" in final["reason"]
    last = final["decisions"][-1]
    assert (last["action"], last["weight"], last["next_weight"], last["requests"]) == ("rollback", 10, 0, 100)
    assert _default_route(cp) == [{"destination": {"host": "reviews", "subset": "v1"}}]
    status, listed = _call(cp, "GET", "/v1/canaries")
    assert status == 200 and [s["service"] for s in listed] == ["reviews"]


def test_conflict_abort_and_refusals(cp, use):
    use(FixedProbe(IDLE))
    body = {"service": "reviews", "from": "v1", "to": "v2", "interval": "1h"}
    assert _call(cp, "POST", "/v1/canaries", body)[0] == 200
    status, err = _call(cp, "POST", "/v1/canaries", body)
    assert status == 409 and "already progressing" in err["error"]
    status, st = _call(cp, "POST", "/v1/canaries/reviews/abort", {})
    assert status == 200 and st["phase"] == "aborted" and st["weights"] == {"v1": 100}
    assert _default_route(cp) == [{"destination": {"host": "reviews", "subset": "v1"}}]
    assert _call(cp, "POST", "/v1/canaries/reviews/abort", {})[0] == 409
    assert _call(cp, "GET", "/v1/canaries/details")[0] == 404
    assert _call(cp, "POST", "/v1/canaries/details/abort", {})[0] == 404
    status, err = _call(cp, "POST", "/v1/canaries", {**body, "steps": "50,10"})
    assert status == 400 and "rise" in err["error"]
    status, err = _call(cp, "POST", "/v1/canaries", {**body, "to": "v9"})
    assert status == 400 and "no instance of reviews carries version=v9" in err["error"]
    # the stable subset defaults to what the service is routed to now (v1 after the abort)...
    status, st = _call(cp, "POST", "/v1/canaries", {"service": "reviews", "to": "v3", "interval": "1h"})
    assert status == 200 and st["spec"]["stable"] == "v1", st
    _call(cp, "POST", "/v1/canaries/reviews/abort", {})
    # ...and must be given when the whole service is served
    status, err = _call(cp, "POST", "/v1/canaries", {"service": "details", "to": "v2"})
    assert status == 400 and "--from" in err["error"]


def test_a_running_canary_resumes_after_a_restart(cp, use):
    probe = FixedProbe(IDLE)
    first = use(probe, "canaries-restart")
    st = first.start(sm.CanarySpec(service="reviews", canary="v2", stable="v1", steps=(30, 100), interval_s=1,
                                   min_requests=5, max_holds=1000))
    assert st.weights == {"v1": 70, "v2": 30}  # the controller answers with the API's type (CanaryStatus)
    time.sleep(1.3)
    first.stop()  # the control plane goes away mid-canary
    saved = json.loads((cp.settings.state_dir / "canaries-restart" / "reviews.json").read_text())
    assert saved["phase"] == "progressing" and saved["weight"] == 30
    probe.now = OK
    second = use(probe, "canaries-restart")  # a new control plane process reads the same state dir
    assert second.get("reviews").phase == "progressing"
    assert second.resume_all() == ["reviews"]
    final = _wait_phase(cp, "reviews", ("promoted", "failed", "aborted"))
    actions = [d["action"] for d in final["decisions"]]
    assert final["phase"] == "promoted" and "resume" in actions and actions[-1] == "promote", actions
    assert actions.index("resume") < actions.index("advance")


def test_control_plane_wiring_lists_and_holds_without_proxies(cp):
    """The control plane's own controller (Envoy probe): no proxy calls reviews here, so the step holds."""
    assert _call(cp, "GET", "/v1/canaries")[0] == 200
    status, st = _call(cp, "POST", "/v1/canaries", {"service": "ratings", "from": "v1", "to": "v1x",
                                                   "interval": "1s"})
    assert status == 400  # no ratings instance carries version=v1x
    status, st = _call(cp, "POST", "/v1/canaries", {"service": "reviews", "from": "v1", "to": "v2",
                                                   "interval": "1s", "max_holds": 50})
    assert status == 200, st
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        st = _call(cp, "GET", "/v1/canaries/reviews")[1]
        if st["decisions"][-1]["action"] == "hold":
            break
        time.sleep(0.1)
    assert st["decisions"][-1]["action"] == "hold" and st["decisions"][-1]["requests"] == 0
    assert (cp.settings.state_dir / "canaries" / "reviews.json").exists()
    assert _call(cp, "POST", "/v1/canaries/reviews/abort", {})[1]["phase"] == "aborted"


# --- the Envoy probe over Envoy's Prometheus text ----------------------------------------------------------------


def _envoy_text(total: int, errors: int, fast: int, cluster: str = "outbound_reviews|productpage|v2") -> str:
    labels = f'envoy_cluster_name="{cluster}"'
    return "\n".join([
        "# TYPE envoy_cluster_upstream_rq_total counter",
        f"envoy_cluster_upstream_rq_total{{{labels}}} {total}",
        "# TYPE envoy_cluster_upstream_rq_xx counter",
        f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="2",{labels}}} {total - errors}',
        f'envoy_cluster_upstream_rq_xx{{envoy_response_code_class="5",{labels}}} {errors}',
        "# TYPE envoy_cluster_upstream_rq_time histogram",
        f'envoy_cluster_upstream_rq_time_bucket{{{labels},le="10"}} {fast}',
        f'envoy_cluster_upstream_rq_time_bucket{{{labels},le="1000"}} {total}',
        f'envoy_cluster_upstream_rq_time_bucket{{{labels},le="+Inf"}} {total}',
        f"envoy_cluster_upstream_rq_time_sum{{{labels}}} 1",
        f"envoy_cluster_upstream_rq_time_count{{{labels}}} {total}",
        "# TYPE envoy_cluster_upstream_rq_total counter",
        'envoy_cluster_upstream_rq_total{envoy_cluster_name="outbound_reviews|productpage|v1"} 99999',
        "",
    ])


def test_envoy_probe_counts_the_canary_subset_since_reset():
    texts = {"n1": _envoy_text(100, 1, 100), "n9": _envoy_text(7, 0, 7)}
    callers = {"n1": "n1-admin"}
    probe = cc.EnvoyProbe("reviews", "v2", lambda: dict(callers),
                          scrape=lambda admin: parse_envoy_prometheus(texts[admin.split("-")[0]]))
    probe.reset()
    texts["n1"] = _envoy_text(300, 21, 200)  # 200 more requests, 20 failed, 100 of them slow
    callers["n9"] = "n9-admin"  # a caller that appeared after reset: its old counts are not this span's
    m = probe.measure()
    assert (m.requests, m.errors) == (200, 20) and m.error_rate == pytest.approx(0.1)
    assert 10 < m.p99_ms <= 1000
    texts["n9"] = _envoy_text(17, 5, 17)
    m = probe.measure()
    assert (m.requests, m.errors) == (210, 25)


def test_subset_clusters_picks_the_service_and_subset_only():
    stats = parse_envoy_prometheus(_envoy_text(5, 0, 5) + _envoy_text(3, 0, 3, "outbound_ratings|reviews|v2"))
    assert set(cc.subset_clusters(stats, "reviews", "v2")) == {"outbound_reviews|productpage|v2"}
    assert cc.subset_clusters(stats, "reviews", "v3") == {}


def test_canaries_run_on_the_leader_only_and_resume_on_a_new_term(cp, use):
    from ._leadership import ManualLeadership

    lead = ManualLeadership("cp-b", leader="cp-a")
    probe = FixedProbe(OK)
    c = use(probe)
    c._leadership = lead  # this replica's controller, wired as for_control_plane does
    lead.subscribe(c._leadership_changed)
    body = {"service": "reviews", "from": "v1", "to": "v2", "steps": "50,100", "interval": "30s", "min_requests": 5}
    status, err = _call(cp, "POST", "/v1/canaries", body)
    assert status == 409 and "'cp-a'" in err["error"], err  # names the leader
    lead.set(True)
    status, st = _call(cp, "POST", "/v1/canaries", body)
    assert status == 200 and st["phase"] == "progressing", st
    assert c._threads.get("reviews") is not None
    lead.set(False, leader="cp-c")  # leadership lost: the loop stops at once, the run stays recorded
    deadline = time.monotonic() + 10
    while c._threads.get("reviews") is not None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert c._threads.get("reviews") is None
    assert c.get("reviews").phase == "progressing"
    status, err = _call(cp, "POST", "/v1/canaries/reviews/abort")
    assert status == 409 and "'cp-c'" in err["error"]
    lead.set(True)  # a new term: the run resumes from its recorded state
    deadline = time.monotonic() + 10
    while [d.action for d in c.get("reviews").decisions] != ["start", "resume"] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert [d.action for d in c.get("reviews").decisions] == ["start", "resume"]
    status, _ = _call(cp, "POST", "/v1/canaries/reviews/abort")
    assert status == 200


# --- runs in the shared state: a new leader continues where the old one left off ----------------------------------


class RecordingWriter:
    """A :class:`TrafficWriter` that records each split it is asked to put into effect (no resource store)."""

    def __init__(self) -> None:
        self.applied: list[dict[str, int]] = []

    def current_default(self, service: str) -> str:
        return "v1"

    def subset_labels(self, service: str, subset: str, label: str) -> dict[str, str]:
        return {label: subset}

    def apply(self, spec: sm.CanarySpec, weights: dict[str, int]) -> None:
        self.applied.append(dict(weights))


def _shared_backend(consul_http):
    from meshcore.catalog._consul_settings import ConsulSettings
    from meshcore.state import ConsulStateBackend

    return ConsulStateBackend(ConsulSettings.from_env(consul_http.env()), prefix=consul_http.kv_prefix + "state/")


def test_a_new_leader_continues_a_canary_where_the_old_one_left_it(consul_http):
    """Two replicas' controllers over one Consul KV: the follower shows the leader's run as it goes; when
    leadership moves, the new leader re-applies the recorded weights and carries the run to its end."""
    from ._leadership import ManualLeadership

    probe = FixedProbe(OK)
    lead_a, lead_b = ManualLeadership("cp-a", leading=True), ManualLeadership("cp-b", leader="cp-a")
    writers = {"cp-a": RecordingWriter(), "cp-b": RecordingWriter()}
    made = {name: cc.CanaryController(_shared_backend(consul_http), writers[name], probe_for=lambda spec: probe,
                                      check_every=0.05, leadership=lead)
            for name, lead in (("cp-a", lead_a), ("cp-b", lead_b))}
    a, b = made["cp-a"], made["cp-b"]
    try:
        a.start(sm.CanarySpec(service="reviews", canary="v2", stable="v1", steps=(10, 50, 100), interval_s=1,
                              min_requests=5, max_holds=1000))
        wait_for(lambda: a.get("reviews").weight == 50, 20, what="cp-a to advance to 50%")
        probe.now = IDLE  # the step holds from here: nothing more happens until the new leader measures
        wait_for(lambda: b.list() and b.get("reviews").weight == 50, 20, what="cp-b to show cp-a's run at 50%")
        assert [d.action for d in b.get("reviews").decisions] == ["start", "advance"]
        with pytest.raises(cc.CanaryConflict, match="'cp-a'"):  # the follower names the leader
            b.abort("reviews")

        lead_a.set(False, leader="")  # cp-a is gone (its loop stops at once) ...
        wait_for(lambda: a._threads.get("reviews") is None, 20, what="cp-a's loop to stop")
        assert writers["cp-b"].applied == []
        probe.now = OK
        lead_b.set(True)  # ... and cp-b leads: it reads the run from KV and resumes it at 50%
        wait_for(lambda: b.get("reviews").phase == "promoted", 20, what="cp-b to promote the canary")
        assert writers["cp-b"].applied[0] == {"v1": 50, "v2": 50}  # the recorded weights re-applied first
        assert writers["cp-b"].applied[-1].get("v2") == 100
        actions = [d.action for d in b.get("reviews").decisions]
        assert actions[:3] == ["start", "advance", "resume"] and actions[-1] == "promote", actions
        lead_a.set(False, leader="cp-b")
        wait_for(lambda: a.get("reviews").phase == "promoted", 20, what="cp-a (a follower now) to show the promotion")
    finally:
        a.stop()
        b.stop()


def test_a_deposed_leader_cannot_record_a_canary_step(consul_http):
    """Each record goes behind the leader lock's check-session: a replica whose session no longer holds the
    key gets its write refused (nothing recorded), so it cannot overwrite the new leader's record."""
    from ._leadership import ManualLeadership

    backend = _shared_backend(consul_http)
    stale = [{"KV": {"Verb": "check-session", "Key": consul_http.kv_prefix + "leader",
                     "Session": "00000000-0000-0000-0000-000000000000"}}]
    c = cc.CanaryController(backend, RecordingWriter(), probe_for=lambda spec: FixedProbe(OK),
                            leadership=ManualLeadership("cp-a", leading=True), fence=lambda: stale)
    try:
        with pytest.raises(MeshError):
            c.start(sm.CanarySpec(service="reviews", canary="v2", stable="v1", steps=(10, 100), interval_s=1))
        assert backend.list("canaries/") == []
    finally:
        c.stop()
