"""Calling a control plane's operator API from a test: (status, decoded JSON body), errors included."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


def call_api(cp, method: str, path: str, token: str, body: dict | None = None, timeout: float = 20):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(cp.addresses["http"] + path, data=data, method=method,
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())
