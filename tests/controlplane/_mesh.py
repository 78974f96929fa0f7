"""A generated mesh for the engine tests: a catalog, a pool of valid resources, random changes.

Resources come from the repository's examples (``examples/traffic``, ``examples/policies``), with
the bookinfo service names replaced by generated ones, and go through the real resource loader.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

from meshcore.catalog.model import Catalog, Node, ServiceInstance, Upstream
from meshcore.resources.loader import load_documents
from meshcore.resources.model import Resource
from meshcore.snapshot import MeshSettings, TelemetrySettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = [ROOT / "examples" / "traffic" / f for f in (
    "reviews-destination-rule.yaml", "reviews-canary.yaml", "ratings-abort.yaml", "ratings-delay-for-jason.yaml",
    "ratings-rate-limit.yaml")] + [ROOT / "examples" / "policies" / f for f in (
        "details-from-productpage.yaml", "permissive.yaml", "productpage-get-only.yaml")]
BOOKINFO = ("productpage", "details", "reviews", "ratings")


def node(n: int, address_suffix: int = 10) -> Node:
    return Node(name=f"vm{n}", address=f"10.0.{n}.{address_suffix}")


def instance(service: str, n: int, slot: int, upstreams: tuple[str, ...], version: str = "v1",
             healthy: bool = True, protocol: str = "http") -> ServiceInstance:
    ups = tuple(Upstream(destination_name=u, local_bind_port=20000 + slot * 10 + k) for k, u in enumerate(upstreams))
    meta: tuple[tuple[str, str], ...] = (("version", version),)
    if protocol != "http":
        meta = (("protocol", protocol),) + meta
    return ServiceInstance(service=service, id=f"{service}-vm{n}-{slot}", node=f"vm{n}", port=8000 + slot,
                           mesh_address=f"10.0.{n}.10", mesh_port=21000 + slot, meta=meta, healthy=healthy,
                           upstreams=ups)


def generated_catalog(services: int = 16, nodes: int = 10, seed: int = 7) -> Catalog:
    """``services`` services s0.. with 1-3 instances each over ``nodes`` nodes; each service calls
    2-3 higher-numbered services, and s0 (popular) is called by most."""
    rng = random.Random(seed)
    insts, slots = [], {n: 0 for n in range(nodes)}
    for s in range(services):
        ups = sorted({f"s{(s + k) % services}" for k in rng.sample(range(1, services), 2)} | ({"s0"} if s else set()))
        for i in range(rng.randint(1, 3)):
            n = rng.randrange(nodes)
            insts.append(instance(f"s{s}", n, slots[n], tuple(ups), version=f"v{i % 3 + 1}",
                                  protocol="tcp" if s == services - 1 else "http"))
            slots[n] += 1
    # An ingress gateway on a node of its own, in front of two services (Consul: kind ingress-gateway).
    gateway = replace(instance("ingress-gateway", nodes, 0, ("s0", "s1")), kind="ingress-gateway")
    return Catalog.of([node(n) for n in range(nodes + 1)], insts + [gateway])


def resource_pool(services: int = 16) -> list[list[Resource]]:
    """Variants of each example, renamed onto generated services: ``pool[i]`` are versions of one
    resource (same kind/namespace/name, different targets), so picking one is an add or a change."""
    pool = []
    for path in EXAMPLES:
        text = path.read_text()
        variants = []
        for shift in (1, 2, 5):
            names = {b: f"s{(i + shift) % services}" for i, b in enumerate(BOOKINFO)}
            renamed = re.sub(r"\b(" + "|".join(BOOKINFO) + r")\b", lambda m, names=names: names[m.group(1)], text)
            docs = load_documents(renamed, path.name)
            # Keep the resource's identity (kind/namespace/name) across variants: only its targets move.
            base = load_documents(text, path.name)
            variants.append([replace(d, name=b.name) for d, b in zip(docs, base)])
        for k in range(len(variants[0])):
            pool.append([v[k] for v in variants])
    return pool


class RandomChanges:
    """Random catalog, resource and settings changes against a current state."""

    def __init__(self, seed: int, services: int = 16, nodes: int = 10):
        self.rng = random.Random(seed)
        self.services = services
        self.nodes = nodes
        self.catalog = generated_catalog(services, nodes)
        self.pool = resource_pool(services)
        self.resources: dict = {}
        self.settings = MeshSettings()
        self.counter = 0
        self.last_changed: frozenset[str] = frozenset()  # services the last step changed (a source's hint)

    def step(self) -> str:
        """Apply one random change; returns what it was."""
        rng = self.rng
        kind = rng.choice(["add", "remove", "health", "health", "meta", "upstreams", "node", "dc", "res", "res",
                           "res-del", "settings"])
        insts = list(self.catalog.instances)
        nodes = list(self.catalog.nodes)
        before = set(insts)
        if kind == "add" or not insts:
            self.counter += 1
            service = f"s{rng.randrange(self.services + 2)}"  # sometimes a service no one knew
            ups = tuple(sorted({f"s{rng.randrange(self.services)}" for _ in range(2)} - {service}))
            n = rng.randrange(self.nodes)
            insts.append(instance(service, n, 30 + self.counter, ups, version=rng.choice(["v1", "v2", "v3"])))
        elif kind == "remove":
            insts.remove(rng.choice(insts))
        elif kind == "health":
            i = rng.randrange(len(insts))
            insts[i] = replace(insts[i], healthy=not insts[i].healthy)
        elif kind == "meta":
            i = rng.randrange(len(insts))
            # Sometimes the protocol or the identity too: what callers' listeners and clusters read.
            extra = rng.choice([(), (), (("protocol", "tcp"),), (("service-account", "other"),)])
            insts[i] = replace(insts[i], meta=(("version", rng.choice(["v1", "v2", "v3", "v4"])),) + extra)
        elif kind == "upstreams":
            i = rng.randrange(len(insts))
            ups = tuple(sorted({f"s{rng.randrange(self.services)}" for _ in range(3)} - {insts[i].service}))
            insts[i] = replace(insts[i], upstreams=tuple(
                Upstream(destination_name=u, local_bind_port=25000 + self.counter * 10 + k) for k, u in enumerate(ups)))
            self.counter += 1
        elif kind == "node":
            j = rng.randrange(len(nodes))
            nodes[j] = replace(nodes[j], meta=(("zone", rng.choice(["a", "b", "c"])),))
        elif kind == "dc":  # a node (and what runs on it) moves to another datacenter: localities change
            j = rng.randrange(len(nodes))
            dc = rng.choice(["dc1", "dc2"])
            nodes[j] = replace(nodes[j], datacenter=dc)
            insts = [replace(i, datacenter=dc) if i.node == nodes[j].name else i for i in insts]
        elif kind == "res":
            variants = rng.choice(self.pool)
            r = rng.choice(variants)
            self.resources[r.key] = r
        elif kind == "res-del" and self.resources:
            del self.resources[rng.choice(sorted(self.resources, key=str))]
        elif kind == "settings":
            self.settings = MeshSettings(telemetry=TelemetrySettings(
                access_log=rng.choice(["", "stdout"]), tracing_sampling=rng.choice([1.0, 10.0])))
        self.catalog = Catalog.of(nodes, insts)
        self.last_changed = frozenset(i.service for i in before.symmetric_difference(insts))
        return kind

    def resource_list(self) -> list[Resource]:
        return list(self.resources.values())
