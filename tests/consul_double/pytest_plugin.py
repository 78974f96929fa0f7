"""pytest fixtures for anything that talks to Consul.

``consul_http``: a fresh :class:`ConsulDouble` per test, or the real Consul named by
``CONSUL_HTTP_ADDR`` (token from ``CONSUL_HTTP_TOKEN``) when that is set. Against a real Consul,
tests must use ``consul_http.unique(...)`` names and ``consul_http.kv_prefix``; the fixture
removes agent services, catalog nodes and KV keys carrying the test's unique run id afterwards.
Tests that need the double itself (``reset_index``, ``set_check_status``) call
``consul_http.require_double()``, which skips with a reason against a real Consul.

``consul_acl``: always a double with ACLs on (a real Consul's ACL setup cannot be assumed):
``.token`` is the management token, ``.read_token`` a read-only one.

Enable with ``pytest_plugins = ["tests.consul_double.pytest_plugin"]`` in ``tests/conftest.py``.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Iterator
from urllib.parse import quote, urlsplit

import pytest
import requests

from .server import ConsulDouble


@dataclass
class ConsulEndpoint:
    """Where a test's Consul is and how to reach it."""

    address: str  # http://host:port (or https://)
    token: str | None
    is_double: bool
    double: ConsulDouble | None = None
    read_token: str | None = None
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])

    @property
    def node(self) -> str:
        """Node name of the agent behind ``address``."""
        return self._get("/v1/agent/self")["Config"]["NodeName"]

    @property
    def kv_prefix(self) -> str:
        """A KV prefix private to this test (cleaned up afterwards)."""
        return f"meshcore-test/{self.run_id}/"

    def unique(self, name: str) -> str:
        """``name`` made unique to this test, e.g. ``web-3f9a1c2e``; cleaned up afterwards on a real Consul."""
        return f"{name}-{self.run_id}"

    def env(self) -> dict[str, str]:
        """The environment a Consul client should see (``CONSUL_HTTP_ADDR``, ``CONSUL_HTTP_TOKEN``)."""
        env = {"CONSUL_HTTP_ADDR": self.address}
        if self.token:
            env["CONSUL_HTTP_TOKEN"] = self.token
        return env

    def require_double(self, why: str = "") -> ConsulDouble:
        if self.double is None:
            pytest.skip(f"needs the Consul test double, not the real Consul at {self.address}" + (f": {why}" if why else ""))
        return self.double

    # -------------------------------------------------------------- tiny HTTP helpers for tests
    def _headers(self) -> dict[str, str]:
        return {"X-Consul-Token": self.token} if self.token else {}

    def _get(self, path: str) -> dict:
        r = requests.get(self.address + path, headers=self._headers(), timeout=10)
        r.raise_for_status()
        return r.json()

    def put(self, path: str, body: object | None = None) -> requests.Response:
        """PUT JSON to Consul with this endpoint's token; raises on an HTTP error."""
        r = requests.put(self.address + path, data=json.dumps(body) if body is not None else b"",
                         headers=self._headers(), timeout=10)
        r.raise_for_status()
        return r

    def cleanup(self) -> None:
        """Remove everything carrying this test's run id (used against a real Consul)."""
        h = self._headers()
        services = requests.get(self.address + "/v1/agent/services", headers=h, timeout=10).json()
        for sid, svc in services.items():
            if self.run_id in sid and svc.get("Kind") != "connect-proxy":
                requests.put(self.address + f"/v1/agent/service/deregister/{quote(sid, safe='')}", headers=h, timeout=10)
        nodes = requests.get(self.address + "/v1/catalog/nodes", headers=h, timeout=10).json()
        for node in nodes:
            if self.run_id in node["Node"]:
                requests.put(self.address + "/v1/catalog/deregister", data=json.dumps({"Node": node["Node"]}), headers=h, timeout=10)
        requests.delete(self.address + f"/v1/kv/{self.kv_prefix}", params={"recurse": ""}, headers=h, timeout=10)


def _real_consul_address() -> str | None:
    addr = os.environ.get("CONSUL_HTTP_ADDR")
    if not addr:
        return None
    if "://" not in addr:
        ssl = os.environ.get("CONSUL_HTTP_SSL", "").lower() in ("1", "true")
        addr = ("https://" if ssl else "http://") + addr
    parts = urlsplit(addr)
    return f"{parts.scheme}://{parts.netloc}"


@pytest.fixture
def consul_http() -> Iterator[ConsulEndpoint]:
    real = _real_consul_address()
    if real:
        endpoint = ConsulEndpoint(address=real, token=os.environ.get("CONSUL_HTTP_TOKEN") or None, is_double=False)
        try:
            yield endpoint
        finally:
            endpoint.cleanup()
        return
    with ConsulDouble(node="node1") as double:
        yield ConsulEndpoint(address=double.address, token=None, is_double=True, double=double)


@pytest.fixture
def consul_acl() -> Iterator[ConsulEndpoint]:
    management, read = f"mgmt-{uuid.uuid4()}", f"read-{uuid.uuid4()}"
    with ConsulDouble(node="node1", acl_token=management, read_token=read) as double:
        yield ConsulEndpoint(address=double.address, token=management, is_double=True, double=double, read_token=read)
