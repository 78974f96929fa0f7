"""Federation and operator client certificates through a real control plane (in process) and meshctl.

The control plane serves its operator API on plain HTTP (tokens) and on TLS (``operator_tls_bind``:
operator certificates or tokens). ``meshctl`` runs as a subprocess, as an operator runs it.
"""

from __future__ import annotations

import contextlib
import io
import hashlib
import json
import os
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from meshcore import naming
from meshcore.agent.client import AgentClient
from meshcore.ca import CertificateAuthority, generate_kek_file, key_to_pem, make_csr, new_private_key
from meshcore.controlplane.daemon import ControlPlane, Settings
from meshcore.api.agent import federated_digest
from meshcore.federation import read_bundle_text

from ..policies._catalog import write_catalog
from ._api import call_api

ROOT = Path(__file__).resolve().parents[2]
OTHER = "other.example"


def _start(base: Path, kek: bytes) -> ControlPlane:
    plane = ControlPlane(Settings(state_dir=base / "state", catalog=f"files:{base / 'catalog'}",
                                  xds_bind="127.0.0.1:0", api_bind="127.0.0.1:0", http_bind="127.0.0.1:0",
                                  operator_tls_bind="127.0.0.1:0"), kek)
    plane.start()
    return plane


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("secapi")
    write_catalog(base / "catalog", [{"name": "details"}, {"name": "productpage"}, {"name": "reviews"}])
    kek = generate_kek_file(base / "kek")
    other = CertificateAuthority.open(base / "other-ca", trust_domain=OTHER, kek=kek)
    plane = _start(base, kek)
    try:
        yield {"base": base, "kek": kek, "cp": plane, "other": other}
    finally:
        plane.stop()


def meshctl(env, *args: str, token: bool = True, extra_env: dict | None = None,
            subprocess_run: bool = False) -> subprocess.CompletedProcess:
    """Run meshctl (in this process by default: the machine running the tests is busy; one test runs it
    as a real subprocess) with only the MESHCORE_* variables given."""
    cp = env["cp"]
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MESHCORE_")}
    if token:
        environ["MESHCORE_TOKEN_FILE"] = str(cp.settings.state_dir / "admin.token")
    environ.update(extra_env or {})
    argv = [*args]
    if "--server" not in args:
        argv += ["--server", cp.addresses["http"]]
    if subprocess_run:
        return subprocess.run([sys.executable, "-m", "meshcore.cli.main", *argv], capture_output=True, text=True,
                              timeout=60, cwd=env["base"], env=environ)
    from meshcore.cli.main import main

    saved = dict(os.environ)
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(environ)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.chdir(env["base"]):
            try:
                code = main(argv)
            except SystemExit as exc:
                code = exc.code
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def _joined_node(cp: ControlPlane, where: Path) -> AgentClient:
    token = cp.tokens.create("n1")
    key = new_private_key()
    issued = AgentClient(cp.addresses["api"], cp.settings.state_dir / "ca" / "bundle.pem").join(
        "n1", token, make_csr(key, naming.node_spiffe_id(cp.ca.trust_domain, "n1")))
    (where / "node.pem").write_text(issued.chain)
    (where / "node.key").write_text(key_to_pem(key))
    return AgentClient(cp.addresses["api"], cp.settings.state_dir / "ca" / "bundle.pem",
                       cert_file=where / "node.pem", key_file=where / "node.key")


# --- federation ---------------------------------------------------------------------------------------

def test_export_import_list_remove_and_agents_get_the_bundles(env, tmp_path):
    cp, other = env["cp"], env["other"]
    out = meshctl(env, "trust-bundle", "export", subprocess_run=True)
    assert out.returncode == 0, out.stderr
    exported = json.loads(out.stdout)
    assert {k["use"] for k in exported["keys"]} == {"x509-svid"} and exported["spiffe_sequence"] >= 1
    roots, _ = read_bundle_text(out.stdout, "export")
    assert [r.fingerprint(__import__("cryptography.hazmat.primitives.hashes", fromlist=["SHA256"]).SHA256())
            for r in roots] == [r.fingerprint(__import__("cryptography.hazmat.primitives.hashes",
                                                         fromlist=["SHA256"]).SHA256())
                                for r in read_bundle_text(cp.ca.bundle_pem(), "ca")[0]]
    pem = meshctl(env, "trust-bundle", "export", "-o", "pem", "--out", str(tmp_path / "ours.pem"))
    assert pem.returncode == 0 and (tmp_path / "ours.pem").read_text() == cp.ca.bundle_pem()

    # the other domain's operator exports theirs in the SPIFFE format; we import it
    from meshcore.federation import to_spiffe_bundle

    (tmp_path / "other.json").write_text(json.dumps(to_spiffe_bundle(other.bundle_pem(), sequence=1)))
    node = _joined_node(cp, tmp_path)
    assert node.bundle().federated == ()
    imp = meshctl(env, "trust-bundle", "import", "-f", str(tmp_path / "other.json"), "--trust-domain", OTHER)
    assert imp.returncode == 0, imp.stderr
    assert "imported 1 root(s) of trust domain other.example" in imp.stdout
    assert cp.engine.settings.federated_bundles == ((OTHER, other.bundle_pem()),)
    assert node.bundle().federated == ((OTHER, other.bundle_pem()),)  # what each agent writes for Envoy
    listed = json.loads(meshctl(env, "trust-bundle", "list", "-o", "json").stdout)
    assert [e["trust_domain"] for e in listed] == [OTHER] and listed[0]["spiffe_sequence"] == 1
    # n1 has called without X-Meshcore-Federated-Bundles (an agent of an older release): it is not tracked, it
    # holds nothing up; once it says it holds no federated roots ("none") it is listed as without them until a
    # call of its says it holds them (what the agent sends once Envoy has them)
    assert listed[0]["agents_without"] == []
    assert federated_digest([]) == "none"
    node.federated_digest = federated_digest([])
    node.bundle()
    listed = json.loads(meshctl(env, "trust-bundle", "list", "-o", "json").stdout)
    assert listed[0]["agents_without"] == ["n1"]
    assert "n1" in meshctl(env, "trust-bundle", "list").stdout
    node.federated_digest = federated_digest([(OTHER, other.bundle_pem())])
    node.bundle()
    listed = json.loads(meshctl(env, "trust-bundle", "list", "-o", "json").stdout)
    assert listed[0]["agents_without"] == []
    assert cp.agent_api.federated_acks() == {"n1": {OTHER: hashlib.sha256(other.bundle_pem().encode()).hexdigest()}}
    assert cp.agent_api.federated_acks(within=-1) == {}  # an agent that stopped calling drops out (held: stays)
    assert OTHER in meshctl(env, "trust-bundle", "list").stdout

    bad = meshctl(env, "trust-bundle", "import", "-f", str(tmp_path / "other.json"), "--trust-domain", "third.example")
    assert bad.returncode == 1 and "not 'third.example'" in bad.stderr
    own = meshctl(env, "trust-bundle", "import", "-f", str(tmp_path / "ours.pem"), "--trust-domain", "cluster.local")
    assert own.returncode == 1 and "own trust domain" in own.stderr

    rm = meshctl(env, "trust-bundle", "remove", OTHER)
    assert rm.returncode == 0, rm.stderr
    assert cp.engine.settings.federated_bundles == () and node.bundle().federated == ()
    assert meshctl(env, "trust-bundle", "remove", OTHER).returncode == 1


def test_import_needs_admin_and_survives_a_restart(env, tmp_path):
    cp, other = env["cp"], env["other"]
    ro = cp.operators.create("viewer", "read-only")
    (tmp_path / "other.pem").write_text(other.bundle_pem())
    refused = meshctl(env, "trust-bundle", "import", "-f", str(tmp_path / "other.pem"), "--trust-domain", OTHER,
                      token=False, extra_env={"MESHCORE_TOKEN": ro})
    assert refused.returncode == 1 and "needs role 'admin'" in refused.stderr
    assert meshctl(env, "trust-bundle", "list", token=False, extra_env={"MESHCORE_TOKEN": ro}).returncode == 0
    assert meshctl(env, "trust-bundle", "import", "-f", str(tmp_path / "other.pem"), "--trust-domain", OTHER).returncode == 0
    cp.stop()
    env["cp"] = restarted = _start(env["base"], env["kek"])
    assert restarted.engine.settings.federated_bundles == ((OTHER, other.bundle_pem()),)
    assert meshctl(env, "trust-bundle", "remove", OTHER).returncode == 0


# --- operator client certificates ------------------------------------------------------------------------

def _cert_env(paths: dict) -> dict:
    return {"MESHCORE_CERT": paths["cert"], "MESHCORE_KEY": paths["key"]}


def test_operator_certificates_authenticate_with_their_role_until_revoked(env, tmp_path):
    cp = env["cp"]
    issued = {}
    for name, role in (("alice", "admin"), ("bob", "read-only")):
        out = meshctl(env, "operator", "cert", "issue", name, "--role", role, "--out-dir", str(tmp_path), "-o", "json")
        assert out.returncode == 0, out.stderr
        issued[name] = json.loads(out.stdout)
        assert issued[name]["spiffe_id"] == f"spiffe://cluster.local/meshcore/operator/{name}"
        assert stat.S_IMODE(Path(issued[name]["key"]).stat().st_mode) == 0o600
    https = cp.addresses["https"]
    assert issued["alice"]["https"] == https

    # alice (admin) drives meshctl with her certificate alone: no token anywhere
    status = meshctl(env, "status", "-o", "json", "--server", https, token=False, extra_env=_cert_env(issued["alice"]))
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["control_plane"]["https"] == https
    tok = meshctl(env, "token", "create", "--node", "n9", "--server", https, token=False,
                  extra_env=_cert_env(issued["alice"]))
    assert tok.returncode == 0, tok.stderr
    # bob (read-only) may read, not write
    assert meshctl(env, "status", "-o", "json", "--server", https, token=False,
                   extra_env=_cert_env(issued["bob"])).returncode == 0
    denied = meshctl(env, "token", "create", "--node", "n9", "--server", https, token=False,
                     extra_env=_cert_env(issued["bob"]))
    assert denied.returncode == 1 and "operator 'bob' has role 'read-only'" in denied.stderr

    listed = json.loads(meshctl(env, "operator", "cert", "list", "-o", "json").stdout)
    assert {(c["name"], c["role"]) for c in listed} >= {("alice", "admin"), ("bob", "read-only")}
    assert meshctl(env, "operator", "cert", "revoke", "bob").returncode == 0
    revoked = meshctl(env, "status", "--server", https, token=False, extra_env=_cert_env(issued["bob"]))
    assert revoked.returncode == 1 and "revoked" in revoked.stderr


def _https_status(cp, cert: Path | None = None, key: Path | None = None, token: str | None = None) -> int:
    ctx = ssl.create_default_context(cafile=str(cp.settings.state_dir / "ca" / "bundle.pem"))
    if cert:
        ctx.load_cert_chain(str(cert), str(key))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    req = urllib.request.Request(cp.addresses["https"] + "/v1/status", headers=headers)
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_other_certificates_are_not_operators(env, tmp_path):
    cp, other = env["cp"], env["other"]
    node = _joined_node(cp, tmp_path)
    assert node.cert_file is not None
    assert _https_status(cp, tmp_path / "node.pem", tmp_path / "node.key") == 401  # a node is no operator
    admin = (cp.settings.state_dir / "admin.token").read_text().strip()
    assert _https_status(cp, tmp_path / "node.pem", tmp_path / "node.key", token=admin) == 200
    assert _https_status(cp, token=admin) == 200  # tokens work over TLS too
    # an operator-shaped identity from another CA never gets past the TLS handshake
    key = new_private_key()
    sid = f"spiffe://{OTHER}/meshcore/operator/alice"
    (tmp_path / "x.pem").write_text(other.sign_csr(make_csr(key, sid), spiffe_id=sid).chain_pem)
    (tmp_path / "x.key").write_text(key_to_pem(key))
    with pytest.raises((ssl.SSLError, urllib.error.URLError, ConnectionError)):
        _https_status(cp, tmp_path / "x.pem", tmp_path / "x.key")
    # a certificate for an operator name that was never issued through the API is refused
    sid = "spiffe://cluster.local/meshcore/operator/mallory"
    (tmp_path / "m.pem").write_text(cp.ca.sign_csr(make_csr(key, sid), spiffe_id=sid).chain_pem)
    assert _https_status(cp, tmp_path / "m.pem", tmp_path / "x.key") == 401


def test_certificate_without_tls_server_is_explained(env, tmp_path):
    out = meshctl(env, "status", token=False, extra_env={"MESHCORE_CERT": str(tmp_path / "a.crt"),
                                                          "MESHCORE_KEY": str(tmp_path / "a.key")})
    assert out.returncode == 1 and "TLS listener" in out.stderr


# --- authz dry-run --------------------------------------------------------------------------------------

def test_authz_dry_run_from_access_logs(env, tmp_path):
    log = Path(__file__).resolve().parents[1] / "authz" / "data" / "access.log"
    policy = tmp_path / "p.yaml"
    policy.write_text("""\
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: details-get}
spec:
  selector: {matchLabels: {app: details}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/productpage"]}}]
    to: [{operation: {methods: [GET]}}]
""")
    env["cp"].engine.ready.wait(10)
    out = meshctl(env, "authz", "dry-run", "-f", str(policy), "--access-log", str(log), "-o", "json")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    assert {(g["source_service"] or g["source"], g["method"]) for g in result["would_deny"]} == {
        ("productpage", "POST"), ("other.example/ns/default/sa/client", "GET"), ("reviews", "DELETE")}
    assert result["log_files"] == 1 and result["skipped_lines"] == 1
    table = meshctl(env, "authz", "dry-run", "-f", str(policy), "--access-log", str(log))
    assert "WOULD BE DENIED (allowed now):" in table.stdout and "default/details-get" not in table.stdout.split(
        "WOULD BE DENIED")[0]
    assert env["cp"].store.list() == []  # nothing applied
    # read-only operators may preview
    ro = env["cp"].operators.create("previewer", "read-only")
    assert meshctl(env, "authz", "dry-run", "-f", str(policy), "--access-log", str(log), token=False,
                   extra_env={"MESHCORE_TOKEN": ro}).returncode == 0
    # no --access-log and no proxy names an access log: say what to do
    none = meshctl(env, "authz", "dry-run", "-f", str(policy))
    assert none.returncode == 1 and "--access-log FILE" in none.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(policy.read_text().replace("GET", "get"))
    invalid = meshctl(env, "authz", "dry-run", "-f", str(bad), "--access-log", str(log))
    assert invalid.returncode == 1 and "methods[0]" in invalid.stderr


def _post(cp, path: str, body: dict) -> tuple[int, dict]:
    return call_api(cp, "POST", path, (cp.settings.state_dir / "admin.token").read_text().strip(), body)


def test_refused_operator_certificate_requests_are_answered_by_the_error_map(env):
    """A bad name (ConfigError), a bad ttl (ValueError at the boundary) and a bad CSR (CAError): 400 each,
    with the reason; never a 500."""
    cp = env["cp"]
    status, body = _post(cp, "/v1/operators/certs", {"name": "no spaces", "csr": "x"})
    assert status == 400 and "operator name" in body["error"]
    status, body = _post(cp, "/v1/operators/certs", {"name": "carol", "ttl": "soon", "csr": "x"})
    assert status == 400 and "soon" in body["error"]
    status, body = _post(cp, "/v1/operators/certs", {"name": "carol", "csr": "not a csr"})
    assert status == 400 and body["error"].startswith("cannot issue spiffe://")
    status, body = _post(cp, "/v1/trust-bundles", {"trust_domain": OTHER, "bundle": "not a bundle"})
    assert status == 422 and body["error"]
