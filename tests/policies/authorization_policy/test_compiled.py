"""RBAC stages compiled once per (policies, what the compile read of the instance) and shared."""

from __future__ import annotations

from dataclasses import replace

import pytest

from meshcore.policies.authorization_policy import _compiled
from meshcore.catalog.model import ServiceInstance
from meshcore.policies.authorization_policy._compiled import compiled_stages
from meshcore.policies.authorization_policy.rbac import rbac_stages
from meshcore.resources.loader import load_documents

def policies(method: str) -> tuple:
    return tuple(load_documents(f"""
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {{name: mesh-wide, namespace: meshcore-system}}
spec:
  rules:
  - to:
    - operation: {{methods: ["{method}"], ports: ["8080"]}}
""", "mesh-wide.yaml"))


POLICIES = policies("GET")

WEB = ServiceInstance(service="web", id="web-1", node="vm1", port=8080, mesh_address="10.0.0.1", mesh_port=21000)


@pytest.fixture(autouse=True)
def fresh_memo(monkeypatch):
    monkeypatch.setattr(_compiled, "_memo", None)


def counting():
    calls = []

    def compile_stages(selected, instance, trust_domain):
        calls.append(instance.port)
        return rbac_stages(selected, instance, trust_domain)
    return compile_stages, calls


def test_instances_differing_in_what_the_compile_does_not_read_share_the_stages():
    compile_stages, calls = counting()
    first = compiled_stages(POLICIES, POLICIES, WEB, "cluster.local", compile_stages)
    other = replace(WEB, service="api", id="api-7", node="vm9", mesh_address="10.0.0.9")
    assert compiled_stages(POLICIES, POLICIES, other, "cluster.local", compile_stages) is first
    assert calls == [8080]
    assert first == rbac_stages(POLICIES, other, "cluster.local")


def test_a_value_the_compile_read_compiles_again_with_the_right_result():
    compile_stages, calls = counting()
    on_port = compiled_stages(POLICIES, POLICIES, WEB, "cluster.local", compile_stages)
    off_port = compiled_stages(POLICIES, POLICIES, replace(WEB, port=9090), "cluster.local", compile_stages)
    assert calls == [8080, 9090] and on_port != off_port
    assert off_port == rbac_stages(POLICIES, replace(WEB, port=9090), "cluster.local")
    assert compiled_stages(POLICIES, POLICIES, WEB, "other.domain", compile_stages) is not on_port  # trust domain


def test_new_policies_start_a_new_memo():
    compile_stages, calls = counting()
    compiled_stages(POLICIES, POLICIES, WEB, "cluster.local", compile_stages)
    again = policies("POST")
    stages = compiled_stages(again, again, WEB, "cluster.local", compile_stages)
    assert len(calls) == 2 and stages == rbac_stages(again, WEB, "cluster.local")
