"""The Envoy bootstrap the agent writes: ADS to the control plane over mTLS, identity from file SDS.

:func:`render_bootstrap` is pure (same input, same dict); :func:`write_bootstrap` writes it
atomically and only when its content changes, so an unchanged restart leaves the file alone.
The control plane reads ``node.metadata.secrets_dir`` to point every listener's TLS context at the
same secret files the agent keeps current.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from meshcore import __version__, naming
from meshcore._files import os_errors_as, write_if_changed
from meshcore._addresses import is_ip
from meshcore.agent._net import split_host_port
from meshcore.errors import AgentError
from meshcore.system_ca import METADATA_KEY as SYSTEM_CA_KEY

CLUSTER_NAME = "meshcore"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
UPSTREAM_TLS_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
#: ``xds_protocol`` -> the ADS ``api_type`` Envoy uses: incremental (delta) xDS by default, state of the world on request.
XDS_PROTOCOLS: dict[str, str] = {"delta": "DELTA_GRPC", "sotw": "GRPC"}


def file_sds_config(secret_name: str, secrets_dir: Path) -> dict[str, Any]:
    """An SDS secret config that reads ``secret_name`` from its file and reloads it on rename."""
    return {
        "name": secret_name,
        "sds_config": {
            "path_config_source": {
                "path": str(secrets_dir / naming.secret_file(secret_name)),
                "watched_directory": {"path": str(secrets_dir)},
            },
            "resource_api_version": "V3",
        },
    }


def render_bootstrap(
    *,
    node: str,
    trust_domain: str,
    xds_address: str,
    secrets_dir: Path,
    admin_address: str,
    metrics_address: str = "",
    xds_protocol: str = "delta",
    xds_endpoints_file: Path | None = None,
    system_ca_bundle: str | None = None,
) -> dict[str, Any]:
    """The bootstrap for this VM's Envoy (a JSON-ready dict, proto3 field names).

    ``xds_address`` is the control plane's ``host:port``; an IP makes a STATIC cluster, a DNS
    name a LOGICAL_DNS one. Envoy authenticates with the node identity and accepts only the
    control plane's SPIFFE ID, validated against the trust bundle, both from file SDS.
    ``xds_protocol`` is ``delta`` (incremental xDS, ``api_type: DELTA_GRPC``) or ``sotw``
    (state of the world, ``GRPC``). With ``xds_endpoints_file`` the xDS cluster is file-based EDS:
    every control plane replica, kept current by the agent (:mod:`meshcore.agent._xds_endpoints`).
    ``system_ca_bundle``: the VM's system CA bundle the agent found (:mod:`meshcore.system_ca`; ``""``: none),
    reported in the node metadata for the clusters that reach public TLS servers (remote JWKS).
    """
    if xds_protocol not in XDS_PROTOCOLS:
        raise AgentError(f"xds_protocol {xds_protocol!r} is not one of {', '.join(XDS_PROTOCOLS)}")
    secrets_dir = Path(secrets_dir).absolute()
    admin_host, admin_port = split_host_port(admin_address, what="admin address")
    xds_host, xds_port = split_host_port(xds_address, what="xDS address")
    bundle_secret = naming.trust_bundle_secret(trust_domain)

    tls_context: dict[str, Any] = {
        "@type": UPSTREAM_TLS_TYPE,
        "common_tls_context": {
            "alpn_protocols": ["h2"],
            "tls_params": {"tls_minimum_protocol_version": "TLSv1_2"},
            "tls_certificate_sds_secret_configs": [file_sds_config(naming.node_secret(), secrets_dir)],
            "combined_validation_context": {
                "default_validation_context": {
                    "match_typed_subject_alt_names": [
                        {"san_type": "URI", "matcher": {"exact": naming.control_plane_spiffe_id(trust_domain)}},
                    ],
                },
                "validation_context_sds_secret_config": file_sds_config(bundle_secret, secrets_dir),
            },
        },
    }
    if not is_ip(xds_host):
        tls_context["sni"] = xds_host

    xds_cluster: dict[str, Any] = {
        "name": naming.XDS_CLUSTER,
        "type": "STATIC" if is_ip(xds_host) else "LOGICAL_DNS",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": naming.XDS_CLUSTER,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket_address(xds_host, xds_port)}}]}],
        },
        "typed_extension_protocol_options": {
            HTTP_PROTOCOL_OPTIONS: {
                "@type": "type.googleapis.com/" + HTTP_PROTOCOL_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {
                        "connection_keepalive": {"interval": "30s", "timeout": "5s"},
                    },
                },
            },
        },
        "upstream_connection_options": {
            "tcp_keepalive": {"keepalive_probes": 3, "keepalive_time": 30, "keepalive_interval": 10},
        },
        "transport_socket": {"name": "envoy.transport_sockets.tls", "typed_config": tls_context},
    }
    if not is_ip(xds_host):
        xds_cluster["dns_lookup_family"] = "V4_PREFERRED"
    if xds_endpoints_file is not None:  # every replica, from a file Envoy watches (reloaded without a restart)
        # Nothing here may depend on which replica answered last (a change would restart Envoy): no SNI
        # (the SPIFFE ID is what is verified), no address.
        del xds_cluster["load_assignment"], xds_cluster["type"]
        xds_cluster.pop("dns_lookup_family", None)
        tls_context.pop("sni", None)
        xds_cluster["type"] = "EDS"
        xds_cluster["eds_cluster_config"] = {"eds_config": {"path_config_source": {
            "path": str(xds_endpoints_file), "watched_directory": {"path": str(xds_endpoints_file.parent)}},
            "resource_api_version": "V3"}}

    metadata = {"secrets_dir": str(secrets_dir), "admin": admin_address, "trust_domain": trust_domain,
                "agent_version": __version__}  # meshctl version lists it per proxy
    if metrics_address:  # the agent's merged Prometheus endpoint; the control plane lists it per proxy
        metadata["metrics"] = metrics_address
    if system_ca_bundle is not None:
        metadata[SYSTEM_CA_KEY] = system_ca_bundle
    return {
        "node": {"id": node, "cluster": CLUSTER_NAME, "metadata": metadata},
        "admin": {"address": _socket_address(admin_host, admin_port)},
        # Histograms (latency percentiles in /stats/prometheus, the service graph) refresh at each flush. No
        # flush timer: Envoy merges them when its admin stats are read, so they are as fresh as whoever reads
        # them (the agent's metrics endpoint for the collector and Prometheus) asks, at the collector's
        # interval whatever it is set to, and an Envoy nobody scrapes spends nothing on it (a 1 s timer
        # did, on every worker, every second).
        "stats_flush_on_admin": True,
        "dynamic_resources": {
            "ads_config": {
                "api_type": XDS_PROTOCOLS[xds_protocol],
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [{"envoy_grpc": {"cluster_name": naming.XDS_CLUSTER}}],
            },
            "cds_config": {"ads": {}, "resource_api_version": "V3"},
            "lds_config": {"ads": {}, "resource_api_version": "V3"},
        },
        "static_resources": {"clusters": [xds_cluster]},
    }


def envoy_concurrency(proc_cgroup: Path = Path("/proc/self/cgroup"), cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """Envoy's worker threads for this VM (``--concurrency``): the CPUs the agent may run on, which is its
    affinity mask bounded by the cgroup v2 ``cpu.max`` quotas of its cgroup and the ones above it (a systemd
    ``CPUQuota=``). Envoy's own default counts every CPU of the machine, so an agent given 2 of 16 cores
    would run 16 workers fighting over 2, each with its own connection pools. At least 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    for limit in _cgroup_cpu_limits(proc_cgroup, cgroup_root):
        cpus = min(cpus, limit)
    return max(1, cpus)


def _cgroup_cpu_limits(proc_cgroup: Path, cgroup_root: Path) -> list[int]:
    """Whole CPUs each cgroup v2 ``cpu.max`` from this process's cgroup up to the root allows (rounded up:
    a quota of 1.5 CPUs gives 2 workers); empty without cgroup v2 or without quotas."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return []
    path = next((line[3:] for line in lines if line.startswith("0::")), None)
    if path is None:
        return []
    limits = []
    here = cgroup_root / path.strip("/")
    while True:
        try:
            quota, period = (here / "cpu.max").read_text().split()[:2]
            if quota != "max" and int(period) > 0:
                limits.append(max(1, -(-int(quota) // int(period))))
        except (OSError, ValueError):
            pass
        if here == cgroup_root or cgroup_root not in here.parents:
            return limits
        here = here.parent


def render_bootstrap_json(bootstrap: dict[str, Any]) -> str:
    return json.dumps(bootstrap, indent=2, sort_keys=True) + "\n"


def write_bootstrap(path: Path, bootstrap: dict[str, Any]) -> bool:
    """Write the bootstrap atomically (0644) when its content differs; True when written."""
    with os_errors_as(AgentError, f"cannot write {path}"):
        return write_if_changed(path, render_bootstrap_json(bootstrap), 0o644)


def _socket_address(host: str, port: int) -> dict[str, Any]:
    return {"socket_address": {"address": host, "port_value": port}}
