"""The generated mesh of the scale benchmark: a seeded plan, written as Consul service-definition files
(the file source) or registered in a Consul HTTP API (the Consul double), and the changes scenarios make.

Shape (defaults): 1,000 services with 5,000 instances on 1,000 nodes. Every service declares 3-5
upstreams: one of the few *popular* services (each upstream of about half the mesh) and 2-4 others
drawn at random, so most services are consumed by a handful of others (*leaf* services). Instances are
spread over the nodes at random; every instance gets its own service, sidecar and upstream ports on its
node. Node addresses are loopback addresses (127/8), so the few nodes that run a real Envoy bind them.
"""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from meshcore import naming

SERVICE_PORT_BASE = 9000  # + slot on the node
MESH_PORT_BASE = 21000  # + slot on the node
UPSTREAM_PORT_BASE = 30000  # + slot * 8 + k on the node


@dataclass
class Instance:
    service: str
    id: str
    node: str
    port: int
    mesh_port: int
    upstreams: list[tuple[str, int]]  # (destination service, local bind port)
    version: str = "v1"


@dataclass
class MeshPlan:
    services: list[str]
    popular: list[str]
    upstreams: dict[str, list[str]]  # service -> the services it calls
    nodes: dict[str, str]  # node -> address
    instances: list[Instance]
    consumers: dict[str, set[str]] = field(default_factory=dict)  # service -> services that call it

    def __post_init__(self) -> None:
        for svc, ups in self.upstreams.items():
            for up in ups:
                self.consumers.setdefault(up, set()).add(svc)

    def on_node(self, node: str) -> list[Instance]:
        return [i for i in self.instances if i.node == node]

    def nodes_calling(self, service: str) -> set[str]:
        """Nodes whose proxies have ``service`` as an upstream (their config depends on its endpoints)."""
        callers = self.consumers.get(service, set())
        return {i.node for i in self.instances if i.service in callers}

    def nodes_hosting(self, service: str) -> set[str]:
        return {i.node for i in self.instances if i.service == service}

    def upstream_bindings(self, node: str) -> int:
        return sum(len(i.upstreams) for i in self.on_node(node))

    def next_slot(self, node: str, taken: set[int] | None = None) -> int:
        """The lowest free port slot on ``node``, also avoiding ``taken`` (slots of instances not added yet)."""
        used = {i.port - SERVICE_PORT_BASE for i in self.on_node(node)} | (taken or set())
        return next(s for s in range(10_000) if s not in used)


def node_address(index: int) -> str:
    """127.200.0.1, 127.200.0.2, ...: an unusual corner of loopback, 250 hosts per /24."""
    return f"127.{200 + index // 62500}.{index // 250 % 250}.{index % 250 + 1}"


def generate(services: int, instances: int, nodes: int, *, popular: int = 0, seed: int = 11) -> MeshPlan:
    rng = random.Random(seed)
    names = [f"svc-{i:04d}" for i in range(services)]
    n_popular = popular or max(1, services // 200)
    popular_names = names[:n_popular]
    others = names[n_popular:] or names
    ups: dict[str, list[str]] = {}
    for svc in names:
        k = rng.randint(3, 5)
        # One popular upstream for half the services (so each popular one serves about half the mesh).
        chosen: list[str] = [rng.choice(popular_names)] if rng.random() < 0.5 and svc not in popular_names else []
        pool = [s for s in others if s != svc]
        while len(chosen) < min(k, len(pool)):
            c = rng.choice(pool)
            if c not in chosen:
                chosen.append(c)
        ups[svc] = sorted(chosen)
    node_names = [f"node-{i:04d}" for i in range(nodes)]
    addrs = {n: node_address(i) for i, n in enumerate(node_names)}
    # Each service gets instances // services instances (the remainder to the first ones), on random nodes;
    # every node gets at least one instance while there are instances to place.
    per = [instances // services + (1 if i < instances % services else 0) for i in range(services)]
    placement = list(node_names) + [rng.choice(node_names) for _ in range(max(0, instances - nodes))]
    rng.shuffle(placement)
    slots: dict[str, int] = {}
    out: list[Instance] = []
    it = iter(placement)
    for svc, count in zip(names, per):
        for j in range(count):
            node = next(it)
            slot = slots.get(node, 0)
            slots[node] = slot + 1
            out.append(Instance(
                service=svc, id=f"{svc}-{j}", node=node, port=SERVICE_PORT_BASE + slot, mesh_port=MESH_PORT_BASE + slot,
                upstreams=[(u, UPSTREAM_PORT_BASE + slot * 8 + k) for k, u in enumerate(ups[svc])],
                version=f"v{j % 3 + 1}"))
    return MeshPlan(services=names, popular=popular_names, upstreams=ups, nodes=addrs, instances=out)


def repick_ports(plan: MeshPlan, node: str, free_port: Callable[[str], int]) -> None:
    """Give every port of ``node`` a free one (for the nodes that run a real Envoy, which binds them)."""
    addr = plan.nodes[node]
    for inst in plan.on_node(node):
        inst.mesh_port = free_port(addr)
        inst.upstreams = [(u, free_port(addr)) for u, _ in inst.upstreams]


# --- the file source ------------------------------------------------------------------------------

def definition(plan: MeshPlan, inst: Instance) -> dict:
    addr = plan.nodes[inst.node]
    return {"service": {
        "name": inst.service, "id": inst.id, "port": inst.port, "meta": {"version": inst.version},
        "connect": {"sidecar_service": {"port": inst.mesh_port, "proxy": {
            "local_service_address": addr,
            "upstreams": [{"destination_name": u, "local_bind_address": addr, "local_bind_port": p}
                          for u, p in inst.upstreams]}}}}}


def write_files(plan: MeshPlan, root: Path) -> None:
    for node, addr in plan.nodes.items():
        d = root / node
        d.mkdir(parents=True, exist_ok=True)
        (d / "node.json").write_text(json.dumps({"node_name": node, "advertise_addr": addr, "datacenter": "dc1"}))
    for inst in plan.instances:
        (root / inst.node / f"{inst.id}.json").write_text(json.dumps(definition(plan, inst)))


# --- Consul ---------------------------------------------------------------------------------------

def _registrations(plan: MeshPlan, inst: Instance) -> list[dict]:
    addr = plan.nodes[inst.node]
    base = {"Node": inst.node, "Address": addr, "Datacenter": "dc1", "SkipNodeUpdate": True}
    return [
        {**base, "Service": {"Service": inst.service, "ID": inst.id, "Port": inst.port,
                             "Meta": {"version": inst.version}}},
        {**base, "Service": {
            "Kind": "connect-proxy", "Service": f"{inst.service}-sidecar-proxy", "ID": f"{inst.id}-sidecar-proxy",
            "Port": inst.mesh_port, "Address": addr,
            "Proxy": {"DestinationServiceName": inst.service, "DestinationServiceID": inst.id,
                      "LocalServiceAddress": addr, "LocalServicePort": inst.port,
                      "Upstreams": [{"DestinationType": "service", "DestinationName": u, "LocalBindAddress": addr,
                                     "LocalBindPort": p} for u, p in inst.upstreams]}}},
    ]


class ConsulWriter:
    """Registers the plan in a Consul HTTP API (``/v1/catalog/register``), a few connections in parallel."""

    def __init__(self, url: str, token: str = ""):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 8500
        self.headers = {"Content-Type": "application/json", **({"X-Consul-Token": token} if token else {})}

    def _put_all(self, path: str, bodies: Iterable[dict]) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            for body in bodies:
                conn.request("PUT", path, body=json.dumps(body), headers=self.headers)
                resp = conn.getresponse()
                data = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"PUT {path}: HTTP {resp.status}: {data[:200]!r}")
        finally:
            conn.close()

    def register_plan(self, plan: MeshPlan, workers: int = 4) -> None:
        nodes = [{"Node": n, "Address": a, "Datacenter": "dc1"} for n, a in plan.nodes.items()]
        self._put_all("/v1/catalog/register", nodes)
        bodies = [b for inst in plan.instances for b in _registrations(plan, inst)]
        chunks = [bodies[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda c: self._put_all("/v1/catalog/register", c), chunks))

    def register(self, plan: MeshPlan, inst: Instance) -> None:
        self._put_all("/v1/catalog/register", _registrations(plan, inst))

    def deregister(self, inst: Instance) -> None:
        self._put_all("/v1/catalog/deregister", [{"Node": inst.node, "ServiceID": f"{inst.id}-sidecar-proxy"},
                                                 {"Node": inst.node, "ServiceID": inst.id}])


# --- changes --------------------------------------------------------------------------------------

class CatalogChanges:
    """Adds and removes instances through whichever source the control plane reads."""

    def __init__(self, plan: MeshPlan, files_root: Path | None = None, consul: ConsulWriter | None = None):
        self.plan, self.root, self.consul = plan, files_root, consul
        self._n = 0
        # Slots handed out by new_instance until the instance is removed: a burst makes several instances
        # before adding any, and two on one node must not get the same ports (the catalog would reject both).
        self._reserved: dict[str, set[int]] = {}

    def new_instance(self, service: str, node: str) -> Instance:
        self._n += 1
        reserved = self._reserved.setdefault(node, set())
        slot = self.plan.next_slot(node, reserved)
        reserved.add(slot)
        template = next(i for i in self.plan.instances if i.service == service)
        return Instance(service=service, id=f"{service}-bench-{self._n}", node=node, port=SERVICE_PORT_BASE + slot,
                        mesh_port=MESH_PORT_BASE + slot,
                        upstreams=[(u, UPSTREAM_PORT_BASE + slot * 8 + k) for k, (u, _) in enumerate(template.upstreams)])

    def add(self, inst: Instance) -> None:
        self.plan.instances.append(inst)
        if self.consul is not None:
            self.consul.register(self.plan, inst)
        else:
            assert self.root is not None
            path = self.root / inst.node / f"{inst.id}.json"
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(definition(self.plan, inst)))
            tmp.rename(path)

    def remove(self, inst: Instance) -> None:
        self.plan.instances.remove(inst)
        self._reserved.get(inst.node, set()).discard(inst.port - SERVICE_PORT_BASE)
        if self.consul is not None:
            self.consul.deregister(inst)
        else:
            assert self.root is not None
            (self.root / inst.node / f"{inst.id}.json").unlink()


def endpoint_cluster(service: str) -> str:
    return naming.upstream_endpoints(service)


def destination_rule(host: str, max_connections: int) -> str:
    return (f"apiVersion: networking.mesh.io/v1beta1\nkind: DestinationRule\nmetadata:\n  name: bench-{host}\n"
            f"spec:\n  host: {host}\n  trafficPolicy:\n    connectionPool:\n      tcp:\n"
            f"        maxConnections: {max_connections}\n")


def mesh_wide_policy(marker: str) -> str:
    """An ALLOW policy in the root namespace without a selector: applies to every workload of the mesh."""
    return ("apiVersion: security.mesh.io/v1beta1\nkind: AuthorizationPolicy\nmetadata:\n  name: bench-mesh-wide\n"
            "  namespace: meshcore-system\nspec:\n  rules:\n  - from:\n    - source:\n"
            f"        principals: [\"cluster.local/ns/default/sa/*\", \"cluster.local/ns/{marker}/sa/bench\"]\n")
