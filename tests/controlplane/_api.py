"""Calling a control plane's operator API from a test, and a MeshView of nothing for features tested alone."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from meshcore.controlplane._contexts import MeshView


def call_api(cp, method: str, path: str, token: str, body: dict | None = None, timeout: float = 20):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cp.addresses["http"] + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def empty_mesh(**overrides) -> MeshView:
    """A mesh before anything was read: no snapshot, catalog or proxies (override any part)."""
    parts = dict(snapshot=lambda: None, catalog=lambda: None, proxies=dict, build_for=lambda n: None,
                 published=lambda n: None, synced=lambda n: False, connected_nodes=list, cache_status=lambda n: {},
                 ready=lambda: False)
    parts.update(overrides)
    return MeshView(**parts)  # type: ignore[arg-type]
