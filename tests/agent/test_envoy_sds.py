"""A real Envoy, run by the supervisor from the agent's bootstrap, picks up rotated secret files
without a restart (file-based SDS with ``watched_directory``)."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from datetime import timedelta

import pytest

from meshcore import naming
from meshcore.agent.bootstrap import render_bootstrap, write_bootstrap
from meshcore.agent.config import _default_envoy_path
from meshcore.agent.identity import CertSummary
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret, validation_context_secret
from meshcore.agent.supervisor import EnvoySupervisor, envoy_command

from ._helpers import issue

TD = naming.DEFAULT_TRUST_DOMAIN


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serials(admin: str) -> set[str]:
    """Serial numbers of the certificates Envoy currently holds (admin ``/certs``)."""
    with urllib.request.urlopen(f"http://{admin}/certs", timeout=2) as resp:
        data = json.loads(resp.read())
    out = set()
    for entry in data.get("certificates", []):
        for chain in entry.get("cert_chain", []):
            out.add(chain["serial_number"].lower().lstrip("0"))
    return out


def _wait(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = check()
            if last:
                return last
        except OSError as exc:
            last = exc
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what} (last: {last!r})")


def test_envoy_reloads_rotated_node_identity_without_restart(tmp_path, ca):
    secrets = SecretsDirectory(tmp_path / "secrets")
    secrets.prepare()
    node_id = naming.node_spiffe_id(TD, "vm1")
    chain, key = issue(ca, node_id, ttl=timedelta(minutes=5))
    secrets.write(tls_certificate_secret(naming.node_secret(), chain, key))
    secrets.write(validation_context_secret(naming.trust_bundle_secret(TD), ca.bundle_pem()))
    admin = f"127.0.0.1:{_free_port()}"
    bootstrap = tmp_path / "envoy" / "bootstrap.json"
    bootstrap.parent.mkdir()
    write_bootstrap(bootstrap, render_bootstrap(node="vm1", trust_domain=TD, xds_address=f"127.0.0.1:{_free_port()}",
                                                secrets_dir=secrets.path, admin_address=admin))
    sup = EnvoySupervisor(envoy_command(_default_envoy_path(), bootstrap, log_level="warning",
                                        log_path=tmp_path / "envoy.log"), stop_grace=5)
    sup.start()
    try:
        first = CertSummary.of(chain).serial.lstrip("0")
        _wait(lambda: first in _serials(admin), 20, "Envoy to load the node identity from its secret file")
        pid = sup.pid

        chain2, key2 = issue(ca, node_id, ttl=timedelta(minutes=5))
        second = CertSummary.of(chain2).serial.lstrip("0")
        assert secrets.write(tls_certificate_secret(naming.node_secret(), chain2, key2))
        serials = _wait(lambda: (s := _serials(admin)) and second in s and s, 20,
                        "Envoy to pick up the rotated node identity")
        assert first not in serials
        assert sup.pid == pid and sup.restarts == 0  # rotated in place: no restart
    finally:
        code = sup.stop()
    assert code == 0  # Envoy exits cleanly on SIGTERM
    assert sup.pid is None
