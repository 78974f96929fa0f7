"""The control plane's features take narrow interfaces (controlplane/_contexts.py), so a test hands them
plain functions instead of a running daemon."""

from __future__ import annotations

import inspect

import pytest

from meshcore.controlplane import alerting, authz_dry_run, canary, dashboard_api, dry_run, federation_api
from meshcore.controlplane import operator_certs
from meshcore.errors import Unavailable
from meshcore.resources.dir_store import DirectoryStore

from ._api import empty_mesh


def test_no_feature_entry_point_takes_the_control_plane():
    entry_points = [alerting.for_control_plane, alerting.add_routes, canary.for_control_plane, canary.add_routes,
                    dashboard_api.collector_for, dashboard_api.add_routes, dashboard_api.summary,
                    federation_api.open_federation, federation_api.add_federation_routes, federation_api.export_bundle,
                    operator_certs.add_operator_cert_routes, dry_run.dry_run, authz_dry_run.authz_dry_run]
    for fn in entry_points:
        assert "cp" not in inspect.signature(fn).parameters, fn.__qualname__


def test_dry_run_before_the_first_snapshot_is_unavailable(tmp_path):
    with pytest.raises(Unavailable, match="no mesh snapshot yet"):
        dry_run.dry_run(DirectoryStore(tmp_path), empty_mesh(), [])


def test_canary_helpers_read_the_mesh_view_only():
    mesh = empty_mesh()
    assert canary._callers_of(mesh, "reviews") == {}
    assert canary._instances_with(mesh, "reviews", {"version": "v2"}) == 1  # catalog not read: do not refuse
    assert canary._synced_with(mesh, None) is False  # type: ignore[arg-type] - no snapshot: nothing is synced
