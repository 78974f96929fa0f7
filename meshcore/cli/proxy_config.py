"""``meshctl proxy-config [TYPE] NODE``: what the control plane serves a node's Envoy, as istioctl shows it.

TYPE is ``listener``, ``route``, ``cluster``, ``endpoint``, ``secret``, ``bootstrap`` or ``all`` (default;
also ``--type``, repeatable). Tables show what matters when debugging a route: listeners with address,
port and where each filter chain goes; routes as domains and match -> cluster(s); clusters with their
discovery type and TLS; endpoints with address, health and weight; secrets with what they hold.
``--port`` and ``--fqdn`` filter. The bootstrap is not served over xDS: ``bootstrap`` reads it from the
Envoy itself (``--envoy``, its admin ``/config_dump``). Rendering here is pure (dicts in, rows out).
"""

from __future__ import annotations

from typing import Any

from ._output import table

SHORT = {"Listener": "listener", "RouteConfiguration": "route", "Cluster": "cluster",
         "ClusterLoadAssignment": "endpoint", "Secret": "secret"}
TYPES = ("listener", "route", "cluster", "endpoint", "secret")


def short(type_name: str) -> str:
    return SHORT.get(type_name, type_name.lower())


def _socket(address: dict | None) -> tuple[str, int]:
    sock = (address or {}).get("socketAddress") or {}
    return sock.get("address", ""), int(sock.get("portValue") or 0)


def _destination(chain: dict) -> str:
    for f in chain.get("filters") or []:
        cfg = f.get("typedConfig") or {}
        if "rds" in cfg:
            return f"Route: {cfg['rds'].get('routeConfigName', '')}"
        if "routeConfig" in cfg:
            return f"Route: {cfg['routeConfig'].get('name') or 'inline'}"
        if "cluster" in cfg:
            return f"Cluster: {cfg['cluster']}"
        if "weightedClusters" in cfg:
            return "Clusters: " + ",".join(c.get("name", "") for c in cfg["weightedClusters"].get("clusters", []))
    return "-"


def _chain_match(chain: dict) -> str:
    m = chain.get("filterChainMatch") or {}
    parts = []
    if m.get("serverNames"):
        parts.append("SNI " + ",".join(m["serverNames"]))
    if m.get("applicationProtocols"):
        parts.append("ALPN " + ",".join(m["applicationProtocols"]))
    if m.get("transportProtocol"):
        parts.append(m["transportProtocol"])
    if m.get("destinationPort"):
        parts.append(f"port {m['destinationPort']}")
    return "; ".join(parts) or "ALL"


def listener_rows(items: list[dict], port: int | None) -> list[list[str]]:
    rows = []
    for lst in items:
        addr, p = _socket(lst.get("address"))
        if port is not None and p != port:
            continue
        for chain in lst.get("filterChains") or [{}]:
            rows.append([lst.get("name", ""), addr, str(p), _chain_match(chain), _destination(chain)])
    return rows


def _route_match(match: dict) -> str:
    for key in ("prefix", "path", "pathSeparatedPrefix"):
        if key in match:
            text = f"{key} {match[key]}"
            break
    else:
        text = f"regex {match['safeRegex'].get('regex', '')}" if "safeRegex" in match else "*"
    for h in match.get("headers") or []:
        value = h.get("stringMatch", {}).get("exact") or h.get("exactMatch") or "*"
        text += f" {h.get('name', '')}={value}"
    return text


def _route_target(route: dict) -> str:
    action = route.get("route") or {}
    if "cluster" in action:
        return action["cluster"]
    if "weightedClusters" in action:
        return ",".join(f"{c.get('name', '')}:{c.get('weight', 0)}" for c in action["weightedClusters"].get("clusters", []))
    if "directResponse" in route:
        return f"direct response {route['directResponse'].get('status', '')}"
    if "redirect" in route:
        return "redirect"
    return "-"


def route_rows(items: list[dict], fqdn: str | None) -> list[list[str]]:
    rows = []
    for rc in items:
        for vh in rc.get("virtualHosts") or []:
            domains = vh.get("domains") or []
            for r in vh.get("routes") or []:
                target = _route_target(r)
                if fqdn and not (any(fqdn in d for d in domains) or fqdn in target):
                    continue
                extras = [k for k in ("typedPerFilterConfig", "retryPolicy") if k in r or k in (r.get("route") or {})]
                if (r.get("route") or {}).get("timeout"):
                    extras.append(f"timeout {r['route']['timeout']}")
                rows.append([rc.get("name", ""), vh.get("name", ""), ",".join(domains[:3]) + ("..." if len(domains) > 3 else ""),
                             _route_match(r.get("match") or {}), target, ",".join(extras) or "-"])
    return rows


def cluster_rows(items: list[dict], fqdn: str | None, port: int | None) -> list[list[str]]:
    rows = []
    for c in items:
        name = c.get("name", "")
        if fqdn and fqdn not in name:
            continue
        ports = {_socket((lb.get("endpoint") or {}).get("address"))[1]
                 for e in (c.get("loadAssignment") or {}).get("endpoints") or [] for lb in e.get("lbEndpoints") or []}
        if port is not None and ports and port not in ports:
            continue
        tls = "mTLS" if (c.get("transportSocket") or {}).get("name", "").endswith("tls") else "-"
        rows.append([name, c.get("type", "EDS" if "edsClusterConfig" in c else "STATIC"),
                     c.get("lbPolicy", "ROUND_ROBIN"), tls, c.get("connectTimeout", "-")])
    return rows


def endpoint_rows(items: list[dict], fqdn: str | None, port: int | None) -> list[list[str]]:
    rows = []
    for cla in items:
        cluster = cla.get("clusterName", "")
        if fqdn and fqdn not in cluster:
            continue
        for locality in cla.get("endpoints") or []:
            for lb in locality.get("lbEndpoints") or []:
                addr, p = _socket((lb.get("endpoint") or {}).get("address"))
                if port is not None and p != port:
                    continue
                rows.append([f"{addr}:{p}", lb.get("healthStatus", "UNKNOWN"), str(lb.get("loadBalancingWeight", 1)),
                             cluster])
    return rows


def secret_rows(items: list[dict]) -> list[list[str]]:
    rows = []
    for s in items:
        held = [k for k in ("tlsCertificate", "validationContext", "sessionTicketKeys", "genericSecret") if k in s]
        rows.append([s.get("name", ""), ",".join(held) or "-"])
    return rows


def print_tables(resources: dict[str, list[dict]], *, port: int | None = None, fqdn: str | None = None) -> None:
    """One table per xDS type present in ``resources`` (``{type name: [resource JSON]}``)."""
    by_type = {short(k): v for k, v in resources.items()}
    sections: list[tuple[str, list[str], list[list[str]]]] = []
    if "listener" in by_type:
        sections.append(("listener", ["NAME", "ADDRESS", "PORT", "MATCH", "DESTINATION"],
                         listener_rows(by_type["listener"], port)))
    if "route" in by_type:
        sections.append(("route", ["NAME", "VIRTUAL HOST", "DOMAINS", "MATCH", "CLUSTER", "EXTRAS"],
                         route_rows(by_type["route"], fqdn)))
    if "cluster" in by_type:
        sections.append(("cluster", ["NAME", "TYPE", "LB", "TLS", "CONNECT TIMEOUT"],
                         cluster_rows(by_type["cluster"], fqdn, port)))
    if "endpoint" in by_type:
        sections.append(("endpoint", ["ENDPOINT", "STATUS", "WEIGHT", "CLUSTER"],
                         endpoint_rows(by_type["endpoint"], fqdn, port)))
    if "secret" in by_type:
        sections.append(("secret", ["NAME", "HOLDS"], secret_rows(by_type["secret"])))
    for i, (_name, headers, rows) in enumerate(sections):
        if i:
            print()
        table(rows, headers)


def bootstrap_of(config_dump: dict[str, Any]) -> dict:
    """The bootstrap section of an Envoy admin ``/config_dump``."""
    for section in config_dump.get("configs") or []:
        if str(section.get("@type", "")).endswith("BootstrapConfigDump"):
            return section.get("bootstrap") or {}
    return {}
