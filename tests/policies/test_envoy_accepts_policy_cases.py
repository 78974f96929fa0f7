"""The real Envoy (``--mode validate``) accepts the config built for this round's new policy cases: redirect,
rewrite, directResponse, mirrors, connection pool options, dry-run shadow rules (a config Envoy would NACK fails
here first, not on a running proxy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from meshcore.compose import build_proxy
from meshcore.snapshot import ProxyInfo
from tests.traffic.test_build import _validate_with_envoy
from tests.xds.test_build_golden import _folder_case, _snapshot

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    "virtual_service/testdata/vm1-reviews-redirect-rewrite-direct.input.yaml",
    "virtual_service/testdata/vm1-reviews-istio-conventions.input.yaml",
    "virtual_service/testdata/vm1-reviews-field-coverage.input.yaml",
    "destination_rule/testdata/vm1-reviews-connection-pool.input.yaml",
    "destination_rule/testdata/vm1-reviews-port-level.input.yaml",
    "authorization_policy/testdata/vm1-dry-run.input.yaml",
    "request_authentication/testdata/vm2-details-jwt-fields.input.yaml",
    "request_authentication/testdata/vm2-details-jwt-discovery-scopes.input.yaml",
    "authorization_policy/testdata/gateway-ingress-authz.input.yaml",
    "virtual_service/testdata/vm1-reviews-cors.input.yaml",
    "service_entry/testdata/vm1-egress-tls-allow-any.input.yaml",
    "sidecar/testdata/vm1-scoped-registry-only.input.yaml",
    "destination_rule/testdata/vm1-reviews-istio-fields.input.yaml",
    "destination_rule/testdata/vm1-hash-algorithms.input.yaml",
    "destination_rule/testdata/vm1-external-proxy-protocol-tunnel.input.yaml",
    "sidecar/testdata/vm1-inbound-connection-pool.input.yaml",
    "virtual_service/testdata/vm1-reviews-ports-delegate.input.yaml",
    "authorization_policy/testdata/vm1-service-accounts.input.yaml",
    "destination_rule/testdata/vm1-reviews-port-locality.input.yaml",
    "destination_rule/testdata/vm1-reviews-port-zone-aware.input.yaml",
    "destination_rule/testdata/vm1-reviews-port-distribute.input.yaml",
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.split("/")[-1].removesuffix(".input.yaml"))
def test_envoy_accepts(case, tmp_path):
    text, node = _folder_case(ROOT / "meshcore" / "policies" / case)
    built = build_proxy(_snapshot(text), ProxyInfo(node=node, secrets_dir=str(tmp_path)))
    result = _validate_with_envoy(built, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
