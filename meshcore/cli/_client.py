"""How meshctl finds and calls the control plane's operator API."""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from ..errors import ControlPlaneUnavailable, MeshError

DEMO_STATE_DIR = ".meshcore-demo"


def discover_server(explicit: str | None = None, state_dir: str | None = None) -> str:
    """--server, then $MESHCORE_SERVER, then a demo in ./.meshcore-demo (or --state-dir), then the system one."""
    if explicit:
        return explicit.rstrip("/")
    if os.environ.get("MESHCORE_SERVER"):
        return os.environ["MESHCORE_SERVER"].rstrip("/")
    candidates = []
    if state_dir:
        candidates.append(Path(state_dir) / "controlplane" / "controlplane.json")
    candidates += [Path(DEMO_STATE_DIR) / "controlplane" / "controlplane.json",
                   Path("/var/lib/meshcore/controlplane.json")]
    for c in candidates:
        try:
            return json.loads(c.read_text())["http"].rstrip("/")
        except (OSError, ValueError, KeyError):
            continue
    return "http://127.0.0.1:15000"


class ApiError(MeshError):
    def __init__(self, status: int, message: str, body: dict | None = None):
        super().__init__(message)
        self.status = status
        self.body = body or {}


class Client:
    def __init__(self, server: str, timeout: float = 10.0):
        self.server = server
        self.timeout = timeout

    def call(self, method: str, path: str, body=None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"} if data else {})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read()
                ctype = resp.headers.get("Content-Type", "")
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = {"error": raw.decode(errors="replace")}
            raise ApiError(exc.code, payload.get("error", f"HTTP {exc.code}"), payload) from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ControlPlaneUnavailable(
                f"cannot reach the control plane at {self.server} ({getattr(exc, 'reason', exc)}); "
                "is it running? start the demo with `meshctl demo up`, or pass --server URL"
            ) from exc
        return json.loads(raw) if ctype.startswith("application/json") else raw.decode()

    def get(self, path: str):
        return self.call("GET", path)

    def post(self, path: str, body):
        return self.call("POST", path, body)
