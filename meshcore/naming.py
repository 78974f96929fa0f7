"""Every name meshcore gives to something: SPIFFE IDs and xDS resource names.

Nothing else in meshcore formats these strings; change a scheme here and everything follows.
"""

from __future__ import annotations

DEFAULT_TRUST_DOMAIN = "cluster.local"
DEFAULT_NAMESPACE = "default"
MAX_LABEL = 63


# --- the one rule for names that become identities, file names and log fields -------------

def dns_label_problem(value: object, max_len: int = MAX_LABEL) -> str | None:
    """Which RFC 1123 label rule ``value`` breaks (lowercase letters, digits and '-', starting and ending
    with a letter or digit, at most ``max_len`` characters), or None when it is a valid label.

    Node names, service names, namespaces and resource names all follow it: each becomes a path segment
    of a SPIFFE ID, part of file names on the VMs and a log field. No dots: ``web.v2`` would be read as
    a host name (``<service>.<namespace>``) and as a Consul DNS tag query (``<tag>.<service>.service.consul``),
    which is why Consul warns that such a name is not discoverable by DNS.
    """
    if not isinstance(value, str):
        return f"must be a string, got {type(value).__name__}"
    if not value:
        return "must not be empty"
    if len(value) > max_len:
        return f"must be at most {max_len} characters (got {len(value)})"
    bad = sorted({c for c in value if not (c.isascii() and (c.islower() or c.isdigit() or c == "-"))})
    if bad:
        shown = ", ".join(repr(c) for c in bad[:8])
        return f"must contain only lowercase letters, digits and '-' (found {shown})"
    if not value[0].isalnum():
        return "must start with a lowercase letter or digit"
    if not value[-1].isalnum():
        return "must end with a lowercase letter or digit"
    return None


def check_name(what: str, value: object, error: type[Exception] = ValueError) -> str:
    """``value`` when it is a valid DNS label, else ``error("<what> 'x/../n2' is not valid: <rule>")``."""
    problem = dns_label_problem(value)
    if problem:
        shown = repr(value)[:80] if isinstance(value, str) else type(value).__name__
        raise error(f"{what} {shown} is not valid: {problem} (an RFC 1123 label, e.g. vm-1)")
    return value  # type: ignore[return-value]


def check_node_name(node: object, error: type[Exception] = ValueError) -> str:
    """A node (VM) name: a DNS label (see :func:`dns_label_problem`), as Consul needs for DNS."""
    return check_name("node name", node, error)


def check_service_name(service: object, error: type[Exception] = ValueError) -> str:
    """A service name: a DNS label, no dots (see :func:`dns_label_problem`)."""
    return check_name("service name", service, error)


# --- SPIFFE identities -------------------------------------------------------------------

def workload_spiffe_id(trust_domain: str, namespace: str, service_account: str) -> str:
    return f"spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}"


def node_spiffe_id(trust_domain: str, node: str) -> str:
    """Identity of a VM's agent (used for the ADS connection and the agent API); ValueError for a node
    name that is not a DNS label (``x/../n2`` would be another path)."""
    return f"spiffe://{trust_domain}/meshcore/node/{check_node_name(node)}"


def control_plane_spiffe_id(trust_domain: str) -> str:
    return f"spiffe://{trust_domain}/meshcore/control-plane"


def operator_spiffe_id(trust_domain: str, name: str) -> str:
    """Identity of an operator's client certificate for the operator API (``meshctl operator cert``)."""
    return f"spiffe://{trust_domain}/meshcore/operator/{name}"


def _parse_meshcore_id(spiffe_id: str, kind: str) -> tuple[str, str] | None:
    if not spiffe_id.startswith("spiffe://"):
        return None
    td, _, path = spiffe_id[len("spiffe://"):].partition("/")
    parts = path.split("/")
    if len(parts) == 3 and parts[0] == "meshcore" and parts[1] == kind and parts[2]:
        return td, parts[2]
    return None


def parse_node_spiffe_id(spiffe_id: str) -> tuple[str, str] | None:
    """``spiffe://td/meshcore/node/<node>`` -> ``(td, node)``; anything else (a node that is not a DNS label
    too) -> None."""
    parsed = _parse_meshcore_id(spiffe_id, "node")
    return parsed if parsed and dns_label_problem(parsed[1]) is None else None


def parse_operator_spiffe_id(spiffe_id: str) -> tuple[str, str] | None:
    """``spiffe://td/meshcore/operator/<name>`` -> ``(td, name)``; anything else -> None."""
    return _parse_meshcore_id(spiffe_id, "operator")


def principal_of(spiffe_id: str) -> str:
    """Istio-style principal: the SPIFFE ID without its scheme (``cluster.local/ns/default/sa/x``)."""
    return spiffe_id[len("spiffe://"):] if spiffe_id.startswith("spiffe://") else spiffe_id


# --- xDS resource names ------------------------------------------------------------------

def inbound_listener(instance_id: str) -> str:
    return f"inbound:{instance_id}"


def outbound_listener(upstream: str, port: int) -> str:
    return f"outbound:{upstream}:{port}"


def local_app_cluster(instance_id: str) -> str:
    return f"local_app:{instance_id}"


def upstream_cluster(upstream: str, source_service: str) -> str:
    """Cluster a local service uses to reach ``upstream``; it presents ``source_service``'s SVID."""
    return f"outbound:{upstream}|{source_service}"


def upstream_endpoints(upstream: str, datacenter: str | None = None) -> str:
    """EDS name (ClusterLoadAssignment) shared by every cluster that reaches ``upstream``."""
    return f"outbound:{upstream}" + (f".{datacenter}" if datacenter else "")


def inbound_route(instance_id: str) -> str:
    return f"inbound:{instance_id}"


def outbound_route(upstream: str, port: int) -> str:
    return f"outbound:{upstream}:{port}"


def svid_secret(service: str) -> str:
    return f"svid:{service}"


def trust_bundle_secret(trust_domain: str) -> str:
    return f"bundle:{trust_domain}"


def node_secret() -> str:
    return "node-identity"


def secret_file(secret_name: str) -> str:
    """File (inside the agent's secrets directory) that holds a file-based SDS secret."""
    return secret_name.replace(":", "_").replace("/", "_") + ".yaml"


# --- mesh gateways (meshcore.xds.generate.mesh_gateway, docs/multi-dc.md) ----------------------

MESH_GATEWAY_SERVICE = "mesh-gateway"  # the service sidecars find gateways by (Consul's default name)


def mesh_gateway_sni(service: str, datacenter: str) -> str:
    """SNI of a connection to ``service`` in ``datacenter`` that mesh gateways route (service names have no dots)."""
    return f"{service}.{datacenter}.internal.meshcore"


def mesh_gateway_subset_sni(subset: str, service: str, datacenter: str) -> str:
    """SNI of a connection to DestinationRule subset ``subset`` of ``service`` in ``datacenter`` (Consul's
    ``<subset>.<service>...`` form: the gateway of ``datacenter`` routes it to that subset's instances only)."""
    return f"{subset}.{mesh_gateway_sni(service, datacenter)}"


def mesh_gateway_datacenter_sni(datacenter: str) -> str:
    """Server-name pattern of every service of ``datacenter`` (a gateway of another one forwards these)."""
    return f"*.{datacenter}.internal.meshcore"


def mesh_gateway_listener(instance_id: str, wan: bool = False) -> str:
    return f"mesh_gateway:{instance_id}" + (":wan" if wan else "")


def mesh_gateway_service_cluster(service: str, datacenter: str) -> str:
    """A gateway's cluster (and EDS name) of ``service``'s instances in its own datacenter."""
    return f"mesh_gateway:service:{service}.{datacenter}"


def mesh_gateway_subset_cluster(service: str, subset: str, datacenter: str) -> str:
    """A gateway's cluster (and EDS name) of the instances of ``service``'s subset in its own datacenter."""
    return f"{mesh_gateway_service_cluster(service, datacenter)}|{subset}"


def mesh_gateway_datacenter_cluster(datacenter: str) -> str:
    """A gateway's cluster (and EDS name) of the mesh gateways of another datacenter (their WAN addresses)."""
    return f"mesh_gateway:datacenter:{datacenter}"


XDS_CLUSTER = "meshcore_xds"
OTLP_CLUSTER = "meshcore_otlp"  # the OpenTelemetry collector Envoy exports spans to (when tracing is on)


# --- traffic management (DestinationRule subsets, VirtualService routes) -------------------

def subset_cluster(upstream: str, source_service: str, subset: str) -> str:
    """Cluster a local service uses to reach one DestinationRule subset of ``upstream``."""
    return f"{upstream_cluster(upstream, source_service)}|{subset}"


def subset_endpoints(upstream: str, subset: str, datacenter: str | None = None) -> str:
    """EDS name (ClusterLoadAssignment) of the instances of ``upstream`` that a subset's labels select."""
    return f"{upstream_endpoints(upstream, datacenter)}|{subset}"


def port_cluster(name: str, port: int) -> str:
    """Cluster (or EDS name) ``name`` narrowed to its host's ``port`` (a VirtualService ``destination.port``)."""
    return f"{name}:{port}"


def virtual_service_route(namespace: str, name: str, rule: int, match: int | None = None) -> str:
    """Envoy route name of ``http[rule]`` (and its ``match[match]``) of VirtualService ``namespace/name``."""
    base = f"{namespace}/{name}/http[{rule}]"
    return base if match is None else f"{base}/match[{match}]"


# --- egress (Sidecar egress listeners, ServiceEntry hosts) ---------------------------------

EGRESS_PASSTHROUGH_CLUSTER = "egress:passthrough"
"""The dynamic forward proxy cluster an ALLOW_ANY egress listener sends unregistered destinations to."""


def egress_listener(address: str, port: int) -> str:
    """A Sidecar's egress listener on ``address:port`` (its RouteConfiguration, for HTTP, has the same name)."""
    return f"egress:{address}:{port}"


def egress_cluster(host: str, port: int, subset: str | None = None, rule: str | None = None) -> str:
    """Cluster an egress listener reaches ServiceEntry host ``host`` on ``port`` with (one per DestinationRule subset;
    ``rule``, ``<namespace>/<name>``: a DestinationRule whose workloadSelector picks it for the calling workload,
    so that two workloads of one node each get their own rule's cluster)."""
    return f"egress:{host}:{port}" + (f"|{subset}" if subset else "") + (f"@{rule}" if rule else "")
EGRESS_BLACKHOLE_CLUSTER = "egress:blackhole"
"""A cluster without endpoints: where a REGISTRY_ONLY TLS egress listener sends a server name nothing declares."""
