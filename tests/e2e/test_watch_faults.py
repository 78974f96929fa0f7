"""End to end (issue 12, finding 9): a resource document with a nonsense spec written into the control plane's
store behind meshctl's back does not freeze the mesh. Real Envoys, Consul (the double) as the catalog: the
document is rejected and named in ``/v1/status``, and health changes still reach Envoy within seconds."""

from __future__ import annotations

import json

from meshcore.demo.launcher import wait_until

from . import test_consul_mesh as base

consul = base.consul  # the same module-scoped mesh as test_consul_mesh, booted for this file
mesh = base.mesh

BAD = {"apiVersion": "security.mesh.io/v1beta1", "kind": "AuthorizationPolicy",
       "metadata": {"name": "nonsense", "namespace": "default"}, "spec": {"selector": "x"}}


def _resources_source(mesh) -> dict:
    return next(s for s in mesh.status()["control_plane"]["sources"] if s["name"] == "resources")


def test_a_bad_stored_document_is_named_and_health_changes_still_reach_envoy(mesh, consul):
    import requests

    address, token = consul
    headers = {"X-Consul-Token": token} if token else {}
    folder = mesh.state / "controlplane" / "resources" / "AuthorizationPolicy" / "default"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "nonsense.json").write_text(json.dumps(BAD))  # behind meshctl's back
    wait_until(lambda: _resources_source(mesh).get("rejected"), 20, "the control plane to reject the document")
    (rejected,) = _resources_source(mesh)["rejected"]
    assert "AuthorizationPolicy/default/nonsense" in rejected["key"] and "spec.selector" in rejected["error"]

    # A health change after it still reaches Envoy (the finding: a killed app stayed in the endpoints).
    assert base._reviews_instances(mesh.url) == {"reviews-v1"}
    requests.put(f"{address}/v1/agent/check/pass/reviews-v1b-ttl", headers=headers, timeout=10).raise_for_status()
    wait_until(lambda: "reviews-v1b" in base._reviews_instances(mesh.url, 10), 10, "reviews-v1b to get traffic",
               interval=0.1)
    requests.put(f"{address}/v1/agent/check/fail/reviews-v1b-ttl", headers=headers, timeout=10).raise_for_status()
    wait_until(lambda: base._reviews_instances(mesh.url, 10) == {"reviews-v1"}, 10, "reviews-v1b to leave",
               interval=0.1)
    mesh.wait_synced(30)
    status = mesh.status()["control_plane"]
    assert not status.get("build_error")
    assert all(t["restarts"] == 0 for t in status["threads"]), status["threads"]

    (folder / "nonsense.json").unlink()
    wait_until(lambda: not _resources_source(mesh).get("rejected"), 20, "the rejection to clear")
