"""Consul service-definition files (JSON and HCL) -> NodeDefinition -> ServiceInstance / agent payload."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from meshcore.catalog.definitions import (
    NodeDefinition,
    build_node,
    load_node_dir,
    parse_definition,
)
from meshcore.catalog.model import ServiceInstance, Upstream
from meshcore.errors import ValidationError

AGENT_HCL = """\
node_name      = "vm1"
advertise_addr = "10.0.0.11"
datacenter     = "dc1"
data_dir       = "/opt/consul"
server         = false
retry_join     = ["10.0.0.2"]
node_meta {
  rack = "r1"
}
"""

PRODUCTPAGE_HCL = """\
service {
  name = "productpage"
  id   = "productpage-1"
  port = 9080
  tags = ["v1", "frontend"]
  meta = {
    version  = "v1"
    protocol = "http"
  }
  check {
    id       = "productpage-http"
    http     = "http://127.0.0.1:9080/health"
    interval = "10s"
    timeout  = "2s"
  }
  connect {
    sidecar_service {
      port = 21000
      proxy {
        upstreams = [
          { destination_name = "reviews", local_bind_port = 9081 },
          { destination_name = "details", local_bind_port = 9082, local_bind_address = "127.0.0.2", datacenter = "dc2" },
        ]
      }
    }
  }
}
"""

PRODUCTPAGE_JSON = {
    "service": {
        "name": "productpage",
        "id": "productpage-1",
        "port": 9080,
        "tags": ["v1", "frontend"],
        "meta": {"version": "v1", "protocol": "http"},
        "check": {"id": "productpage-http", "http": "http://127.0.0.1:9080/health", "interval": "10s", "timeout": "2s"},
        "connect": {
            "sidecar_service": {
                "port": 21000,
                "proxy": {
                    "upstreams": [
                        {"destination_name": "reviews", "local_bind_port": 9081},
                        {
                            "destination_name": "details",
                            "local_bind_port": 9082,
                            "local_bind_address": "127.0.0.2",
                            "datacenter": "dc2",
                        },
                    ]
                },
            }
        },
    }
}

EXPECTED_INSTANCE = ServiceInstance(
    service="productpage",
    id="productpage-1",
    node="vm1",
    port=9080,
    mesh_address="10.0.0.11",
    mesh_port=21000,
    local_service_address="127.0.0.1",
    address="",
    kind="",
    tags=("v1", "frontend"),
    meta=(("protocol", "http"), ("version", "v1")),
    healthy=True,
    upstreams=(
        Upstream("reviews", 9081, "127.0.0.1", None),
        Upstream("details", 9082, "127.0.0.2", "dc2"),
    ),
    datacenter="dc1",
)


def node_dir(root: Path, name: str, files: dict[str, str | dict]) -> Path:
    d = root / name
    d.mkdir(parents=True, exist_ok=True)
    for fname, content in files.items():
        (d / fname).write_text(content if isinstance(content, str) else json.dumps(content, indent=2))
    return d


def errors(fn, *args, **kw):
    with pytest.raises(ValidationError) as exc:
        fn(*args, **kw)
    return [str(e) for e in exc.value.errors]


def test_hcl_and_json_give_the_same_instance(tmp_path):
    hcl = load_node_dir(node_dir(tmp_path / "h", "vm1", {"agent.hcl": AGENT_HCL, "productpage.hcl": PRODUCTPAGE_HCL}))
    js = load_node_dir(
        node_dir(
            tmp_path / "j",
            "vm1",
            {
                "agent.json": {"node_name": "vm1", "advertise_addr": "10.0.0.11", "node_meta": {"rack": "r1"}},
                "productpage.json": PRODUCTPAGE_JSON,
            },
        )
    )
    assert hcl.instances() == js.instances() == (EXPECTED_INSTANCE,)
    assert hcl.to_node() == js.to_node()
    assert hcl.to_node().meta == (("rack", "r1"),)
    assert hcl.services[0].to_agent_payload() == js.services[0].to_agent_payload()


def test_agent_payload_shape(tmp_path):
    node = load_node_dir(node_dir(tmp_path, "vm1", {"agent.hcl": AGENT_HCL, "productpage.hcl": PRODUCTPAGE_HCL}))
    assert node.services[0].to_agent_payload() == {
        "Name": "productpage",
        "ID": "productpage-1",
        "Port": 9080,
        "Tags": ["v1", "frontend"],
        "Meta": {"protocol": "http", "version": "v1"},
        "Checks": [{"CheckID": "productpage-http", "HTTP": "http://127.0.0.1:9080/health", "Interval": "10s", "Timeout": "2s"}],
        "Connect": {
            "SidecarService": {
                "Port": 21000,
                "Proxy": {
                    "LocalServiceAddress": "127.0.0.1",
                    "LocalServicePort": 9080,
                    "Upstreams": [
                        {"DestinationType": "service", "DestinationName": "reviews", "LocalBindPort": 9081, "LocalBindAddress": "127.0.0.1"},
                        {
                            "DestinationType": "service",
                            "DestinationName": "details",
                            "LocalBindPort": 9082,
                            "LocalBindAddress": "127.0.0.2",
                            "Datacenter": "dc2",
                        },
                    ],
                },
            }
        },
    }


def test_bad_upstream_port_reports_file_and_path(tmp_path):
    bad = PRODUCTPAGE_HCL.replace("local_bind_port = 9081", "local_bind_port = 0")
    d = node_dir(tmp_path, "vm1", {"agent.hcl": AGENT_HCL, "productpage.hcl": bad})
    assert errors(load_node_dir, d) == [
        "vm1/productpage.hcl: service.connect.sidecar_service.proxy.upstreams[0].local_bind_port: must be an integer 1-65535 (got 0)"
    ]


def test_every_error_of_every_file_at_once(tmp_path):
    svc = {
        "services": [
            {"name": "a", "port": "80", "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_nme": "b", "local_bind_port": 1}]}}}},
            {"name": "b", "port": 81, "check": {"http": "http://x"}},
        ]
    }
    d = node_dir(tmp_path, "vm1", {"agent.hcl": 'advertise_addr = "not-an-ip"\n', "svc.json": svc})
    assert errors(load_node_dir, d) == [
        'vm1/agent.hcl: advertise_addr: must be an IP address, got "not-an-ip"',
        'vm1/svc.json: services[0].port: must be an integer 1-65535 (got string "80")',
        'vm1/svc.json: services[0].connect.sidecar_service.proxy.upstreams[0].destination_nme: unknown field "destination_nme"; did you mean "destination_name"?',
        "vm1/svc.json: services[0].connect.sidecar_service.proxy.upstreams[0].destination_name: required field is missing",
        "vm1/svc.json: services[1].check.interval: required for a http check",
    ]


def test_defaults_follow_consul(tmp_path):
    hcl = textwrap.dedent(
        """\
        bind_addr = "10.0.0.12"
        service {
          name = "reviews"
          port = 9080
          connect { sidecar_service {} }
        }
        service {
          name = "legacy-db"
          port = 5432
        }
        """
    )
    node = load_node_dir(node_dir(tmp_path, "vm2", {"reviews.hcl": hcl}))
    assert (node.name, node.address, node.datacenter) == ("vm2", "10.0.0.12", "dc1")
    reviews, db = node.services
    assert reviews.id == "reviews"
    assert (reviews.local_service_address, reviews.local_service_port, reviews.sidecar_port) == ("127.0.0.1", 9080, 21000)
    assert db.to_instance(node) is None  # no sidecar: not in the mesh
    assert [i.service for i in node.instances()] == ["reviews"]
    assert "Connect" not in db.to_agent_payload()


def test_sidecar_ports_are_assigned_around_taken_ones(tmp_path):
    services = {
        "services": [
            {"name": "a", "port": 21000, "connect": {"sidecar_service": {}}},
            {"name": "b", "port": 8080, "connect": {"sidecar_service": {"port": 21001}}},
            {"name": "c", "port": 8081, "connect": {"sidecar_service": {}}},
        ]
    }
    node = load_node_dir(node_dir(tmp_path, "vm1", {"a.hcl": 'advertise_addr = "10.0.0.1"', "s.json": services}))
    assert [s.sidecar_port for s in node.services] == [21002, 21001, 21003]


def test_ingress_gateway_uses_its_own_port_and_proxy_upstreams(tmp_path):
    hcl = textwrap.dedent(
        """\
        service {
          name = "ingress"
          kind = "ingress-gateway"
          port = 8080
          proxy {
            upstreams = [{ destination_name = "productpage", local_bind_port = 9080 }]
          }
        }
        """
    )
    node = load_node_dir(node_dir(tmp_path, "edge", {"a.hcl": 'advertise_addr = "10.0.0.9"', "ingress.hcl": hcl}))
    [inst] = node.instances()
    assert (inst.kind, inst.port, inst.mesh_port, inst.mesh_address) == ("ingress-gateway", 8080, 8080, "10.0.0.9")
    assert inst.upstreams == (Upstream("productpage", 9080),)
    assert node.services[0].to_agent_payload() == {
        "Name": "ingress",
        "ID": "ingress",
        "Port": 8080,
        "Kind": "ingress-gateway",
        "Proxy": {
            "Upstreams": [
                {"DestinationType": "service", "DestinationName": "productpage", "LocalBindPort": 9080, "LocalBindAddress": "127.0.0.1"}
            ]
        },
    }


def test_kind_specific_rules():
    errs = errors(
        parse_definition,
        json.dumps(
            {
                "services": [
                    {"name": "gw", "kind": "ingress-gateway", "connect": {"sidecar_service": {}}},
                    {"name": "web", "port": 80, "proxy": {"upstreams": []}},
                    {"name": "nop", "connect": {"sidecar_service": {}}},
                ]
            }
        ),
        "n/s.json",
    )
    assert errs == [
        "n/s.json: services[0].connect.sidecar_service: an ingress gateway is itself a proxy; it has no sidecar",
        'n/s.json: services[0].port: required for kind "ingress-gateway" (the port the gateway listens on)',
        "n/s.json: services[1].proxy: only valid with kind = \"ingress-gateway\"; a sidecar's proxy settings go in connect.sidecar_service.proxy",
        "n/s.json: services[2].port: required with connect.sidecar_service (or set connect.sidecar_service.proxy.local_service_port)",
    ]


def test_node_level_checks(tmp_path):
    one = {"service": {"name": "web", "port": 80, "connect": {"sidecar_service": {"port": 21000}}}}
    two = {"service": {"name": "api", "id": "web", "port": 81, "connect": {"sidecar_service": {"port": 21000}}}}
    d = node_dir(tmp_path, "vm1", {"1.json": one, "2.json": two})
    assert errors(load_node_dir, d) == [
        "vm1: advertise_addr: the node has no address: set advertise_addr (or bind_addr) in one of its files",
        "vm1/2.json: service.id: service ID 'web' is already defined in vm1/1.json (service); give each instance its own id",
    ]
    two["service"]["id"] = "api"
    (d / "2.json").write_text(json.dumps(two))
    (d / "0.hcl").write_text('bind_addr = "0.0.0.0"\n')
    assert errors(load_node_dir, d) == [
        "vm1: bind_addr: 0.0.0.0 is not an address other nodes can reach; set advertise_addr",
        "vm1/2.json: service.connect.sidecar_service.port: port 21000 is already used on this node by 'web' (vm1/1.json)",
    ]


def test_later_files_override_node_settings():
    a = parse_definition('node_name = "x"\nadvertise_addr = "10.0.0.1"\nnode_meta {\n a = "1"\n b = "1"\n}\n', "d/a.hcl")
    b = parse_definition('{"advertise_addr": "10.0.0.2", "datacenter": "east", "node_meta": {"b": "2"}}', "d/b.json")
    assert build_node([a, b], "dir") == NodeDefinition("x", "10.0.0.2", "east", (("a", "1"), ("b", "2")), ())
    assert build_node([parse_definition('advertise_addr = "10.0.0.3"', "d/c.hcl")], "dir").name == "dir"


def test_hcl_syntax_error_has_a_line():
    [msg] = errors(parse_definition, 'service {\n  name = "web"\n  port = \n}\n', "vm1/web.hcl")
    assert msg == "vm1/web.hcl: HCL syntax error at line 3, column 10: unexpected '}'"


def test_json_syntax_error_has_a_line():
    assert errors(parse_definition, '{"service": {\n "name": "web",\n}}', "vm1/web.json") == [
        "vm1/web.json: JSON syntax error at line 3, column 1: Expecting property name enclosed in double quotes"
    ]


def test_consul_key_spellings_and_meta_rules():
    errs = errors(
        parse_definition,
        json.dumps({"service": {"Name": "web", "Port": 80, "Meta": {"consul-x": "1", "bad key": "v"}}}),
        "n/w.json",
    )
    assert errs == [
        'n/w.json: service.Meta["consul-x"]: meta keys starting with "consul-" are reserved by Consul',
        "n/w.json: service.Meta[\"bad key\"]: meta keys must be 1-128 ASCII letters, digits, '-' or '_'",
    ]
    ok = parse_definition(
        json.dumps({"service": {"Name": "web", "Port": 80, "Connect": {"SidecarService": {"Proxy": {"Upstreams": [{"DestinationName": "db", "LocalBindPort": 5432}]}}}}}),
        "n/w.json",
    )
    assert ok.services[0].upstreams == (Upstream("db", 5432),)


def test_multiple_hcl_service_blocks_and_services_list():
    text = textwrap.dedent(
        """\
        service {
          name = "a"
        }
        service {
          name = "b"
          port = "x"
        }
        services = [{ name = "c" }]
        """
    )
    assert errors(parse_definition, text, "n/m.hcl") == ['n/m.hcl: service[1].port: must be an integer 1-65535 (got string "x")']
    ok = parse_definition(text.replace('"x"', "1"), "n/m.hcl")
    assert [s.name for s in ok.services] == ["a", "b", "c"]


@pytest.mark.parametrize("name", ["Web", "web_1", "web.v2", "x" * 64, "-web"])
def test_service_names_are_dns_labels(tmp_path, name):
    svc = {"service": {"name": name, "port": 80, "connect": {"sidecar_service": {"port": 21000}}}}
    d = node_dir(tmp_path, "vm1", {"agent.hcl": AGENT_HCL, "svc.json": svc})
    (problem,) = errors(load_node_dir, d)
    assert problem.startswith("vm1/svc.json: service.name: ")
    assert "is not a valid name: " in problem or "at most 63 characters" in problem


@pytest.mark.parametrize("name", ["VM_1", "vm.example", "x" * 64])
def test_node_names_are_dns_labels(tmp_path, name):
    agent = AGENT_HCL.replace('node_name      = "vm1"\n', "")
    d = node_dir(tmp_path, name, {"agent.hcl": agent})  # the directory's name is the node's
    problems = errors(load_node_dir, d)
    assert any("node_name: node name" in p and "is not valid" in p for p in problems), problems
    (d / "agent.hcl").write_text(agent + 'node_name = "Bad/../n2"\n')
    assert any("node_name: \"Bad/../n2\" is not a valid name" in p for p in errors(load_node_dir, d))


def test_mesh_gateway_lan_and_wan_and_upstream_gateway_modes(tmp_path):
    gateway = {"service": {"name": "mesh-gateway", "kind": "mesh-gateway", "port": 8443,
                           "tagged_addresses": {"lan": {"address": "10.0.0.9", "port": 8443},
                                                "wan": {"address": "192.0.2.9", "port": 9443}}}}
    web = {"service": {"name": "web", "port": 80, "connect": {"sidecar_service": {"port": 21000, "proxy": {
        "mesh_gateway": {"mode": "local"},
        "upstreams": [{"destination_name": "store", "datacenter": "dc2", "local_bind_port": 9001},
                      {"destination_name": "api", "destination_peer": "dc3", "local_bind_port": 9002,
                       "mesh_gateway": {"mode": "remote"}}]}}}}}
    node = load_node_dir(node_dir(tmp_path, "gw1", {"a.hcl": 'advertise_addr = "10.0.0.9"', "gw.json": gateway,
                                                   "web.json": web}))
    gw = next(i for i in node.instances() if i.kind == "mesh-gateway")
    assert (gw.mesh_address, gw.mesh_port, gw.wan_address, gw.wan_port) == ("10.0.0.9", 8443, "192.0.2.9", 9443)
    assert next(s for s in node.services if s.kind).to_agent_payload()["TaggedAddresses"] == {
        "lan": {"Address": "10.0.0.9", "Port": 8443}, "wan": {"Address": "192.0.2.9", "Port": 9443}}
    webi = next(i for i in node.instances() if i.service == "web")
    assert webi.upstreams == (Upstream("store", 9001, datacenter="dc2", mesh_gateway="local", mesh_gateway_scope="proxy"),
                              Upstream("api", 9002, datacenter="dc3", mesh_gateway="remote",
                                       mesh_gateway_scope="upstream"))
    payload = next(s for s in node.services if s.name == "web").to_agent_payload()
    proxy = payload["Connect"]["SidecarService"]["Proxy"]
    assert [u.get("MeshGateway") for u in proxy["Upstreams"]] == [None, {"Mode": "remote"}]
    assert proxy["MeshGateway"] == {"Mode": "local"}  # proxy-wide, as written
    errs = errors(parse_definition, json.dumps({"services": [
        {"name": "mgw", "kind": "mesh-gateway", "tagged_addresses": {"lan": {"address": "10.0.0.1", "port": 1},
                                                                    "side": {"address": "10.0.0.1", "port": 2}}},
        {"name": "x", "port": 1, "connect": {"sidecar_service": {"proxy": {"mesh_gateway": {"mode": "sideways"}}}}},
    ]}), "n/s.json")
    assert any("services[0].port: required for kind \"mesh-gateway\"" in e for e in errs)
    assert any("services[0].tagged_addresses.side" in e for e in errs)
    assert any("services[1].connect.sidecar_service.proxy.mesh_gateway.mode" in e for e in errs)
