"""The dashboard's JSON views, computed from one :class:`Signals` value and the control plane's state (pure)."""

from __future__ import annotations

import dataclasses

from typing import Any, Iterable, Mapping, Sequence

from ..api.dashboard import (CertificateRow, CollectorState, DashboardSummary, EdgeRow, GatewayHopRow, ProxyRow,
                             Series, SeriesResponse, ServiceRow, Totals, VersionEdgeRow)
from ..api.operator import ProxyStatus
from ..observe.graph import GatewayHop, GatewayView
from ..observe.signals import GATEWAY_LABELS, SIGNAL_LABELS, VERSION_EDGE_LABELS, Labels, Signals

MESH_GATEWAY = "mesh-gateway"

ERROR_CRITICAL = 0.05  # edge/service error rate coloured red at or above this fraction
ERROR_WARNING = 0.01  # ... amber at or above this one
CERT_WARNING_FRACTION = 0.25  # a certificate with less than this part of its life left is "expiring"


def health(rps: float, error_rate: float | None, troubles: float = 0.0) -> str:
    """``idle`` (no traffic), ``critical`` (>= 5 % errors), ``warning`` (>= 1 %, or shed/exhausted
    requests) or ``ok``: the colour of a node or edge at a glance."""
    if error_rate is not None and error_rate >= ERROR_CRITICAL:
        return "critical"
    if (error_rate is not None and error_rate >= ERROR_WARNING) or troubles > 0:
        return "warning"
    return "ok" if rps > 0 else "idle"


def _by(signals: Signals | None, name: str, label: str) -> dict[str, float]:
    if signals is None:
        return {}
    return {dict(k)[label]: v for k, v in signals.get(name).items()}


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def services_view(signals: Signals | None, proxies: Sequence[ProxyStatus]) -> list[ServiceRow]:
    """One row per service (and gateway): golden signals, resilience counters, instances."""
    kinds: dict[str, str] = {}
    instances: dict[str, list[bool]] = {}
    for p in proxies:
        for s in p.services:
            kinds.setdefault(s.name, "service")
            instances.setdefault(s.name, []).append(s.healthy)
        for g in p.gateways:
            kinds[g.name] = "gateway"
            instances.setdefault(g.name, []).append(g.healthy)
    rps = _by(signals, "request_rate", "service")
    err = _by(signals, "error_rate", "service")
    p99 = _by(signals, "p99_ms", "service")
    overflow = _by(signals, "circuit_breaker_overflow", "service")
    retries = _by(signals, "retry_exhausted", "service")
    denied = _by(signals, "policy_denied", "service")
    names = set(kinds) | set(rps)
    if signals is not None:
        for key in signals.get("edge_request_rate"):
            names.update(dict(key).values())
    out = []
    for name in sorted(names):
        troubles = overflow.get(name, 0.0) + retries.get(name, 0.0)
        out.append(ServiceRow(
            name=name, kind=kinds.get(name, "service"),
            rps=_round(rps.get(name), 3), error_rate=_round(err.get(name), 4), p99_ms=_round(p99.get(name), 2),
            circuit_breaker_overflow=round(overflow.get(name, 0.0), 3),
            retry_exhausted=round(retries.get(name, 0.0), 3), policy_denied=round(denied.get(name, 0.0), 3),
            instances=len(instances.get(name, [])), healthy_instances=sum(instances.get(name, [])),
            health=health(rps.get(name, 0.0), err.get(name), troubles),
        ))
    return out


def _hop_row(hop: GatewayHop) -> GatewayHopRow:
    return GatewayHopRow(node=hop.node, datacenter=hop.datacenter,
                         connections_per_second=_round(hop.connections_per_second, 3),
                         connection_error_rate=_round(hop.connection_error_rate, 4),
                         bytes_per_second=_round(hop.bytes_per_second, 1))


def gateway_view(signals: Signals | None, proxies: Sequence[ProxyStatus]) -> GatewayView:
    """The mesh gateways of ``proxies`` (every datacenter) with their latest connection figures."""
    where = {p.node: g.datacenter for p in proxies for g in p.gateways if g.kind == MESH_GATEWAY}
    if signals is None:
        return GatewayView(datacenter_of=where)

    def keyed(name: str) -> dict[tuple[str, ...], float]:
        return {tuple(dict(k).get(n, "") for n in GATEWAY_LABELS): v for k, v in signals.get(name).items()}

    return GatewayView.from_rates(keyed("gateway_connection_rate"), keyed("gateway_connection_error_rate"), where,
                                  keyed("gateway_bytes_rate"))


def version_edges_view(signals: Signals | None, gateways: GatewayView | None = None) -> list[VersionEdgeRow]:
    """One row per version edge of the latest interval (idle ones included, with rps 0)."""
    if signals is None:
        return []
    view = gateways or GatewayView()
    err, p99 = signals.get("version_edge_error_rate"), signals.get("version_edge_p99_ms")
    out = []
    for key, rps in sorted(signals.get("version_edge_request_rate").items()):
        d = {n: dict(key).get(n, "") for n in VERSION_EDGE_LABELS}
        hops = view.hops(d["destination"], d["destination_datacenter"], d["gateway"]) if d["gateway"] else ()
        out.append(VersionEdgeRow(**d, rps=round(rps, 3), error_rate=_round(err.get(key), 4),
                                  p99_ms=_round(p99.get(key), 2), health=health(rps, err.get(key)),
                                  gateways=tuple(_hop_row(h) for h in hops)))
    return out


def _joined(values: Iterable[str]) -> str:
    return ",".join(sorted({d for v in values for d in v.split(",") if d}))


def edges_view(signals: Signals | None, versions: Sequence[VersionEdgeRow] = ()) -> list[EdgeRow]:
    """One row per service edge; its datacenters and gateways from the version edges (``versions``) of the
    same interval: those that carried requests, or every one while the edge is idle."""
    if signals is None:
        return []
    parts: dict[tuple[str, str], list[VersionEdgeRow]] = {}
    for v in versions:
        parts.setdefault((v.source, v.destination), []).append(v)
    err, p99 = signals.get("edge_error_rate"), signals.get("edge_p99_ms")
    out = []
    for key, rps in sorted(signals.get("edge_request_rate").items()):
        d = dict(key)
        mine = parts.get((d["source"], d["destination"]), [])
        busy = [v for v in mine if v.rps > 0] or mine
        hops: dict[str, GatewayHopRow] = {}
        for v in busy:
            for hop in v.gateways:
                hops.setdefault(hop.node, hop)
        out.append(EdgeRow(source=d["source"], destination=d["destination"], rps=round(rps, 3),
                           error_rate=_round(err.get(key), 4), p99_ms=_round(p99.get(key), 2),
                           health=health(rps, err.get(key)),
                           source_datacenter=_joined(v.source_datacenter for v in busy),
                           destination_datacenter=_joined(v.destination_datacenter for v in busy),
                           gateways=tuple(hops.values())))
    return out


def proxies_view(proxies: Sequence[ProxyStatus], scrape_errors: Mapping[str, str],
                 collector: CollectorState | None = None) -> list[ProxyRow]:
    """One row per proxy; with ``collector``, how current each one's metrics are (``metrics_state``: ``ok``,
    or what :attr:`CollectorState.degraded` says; "" for a proxy the collector did not scrape)."""
    degraded = collector.degraded if collector is not None else {}
    ages = collector.metrics_age_seconds if collector is not None else {}
    out = []
    for p in proxies:
        state = "synced" if p.connected and p.synced and not p.error else (
            "error" if p.error else ("disconnected" if not p.connected else "pending"))
        scraped = p.node in ages or p.node in degraded or p.node in scrape_errors
        out.append(ProxyRow(node=p.node, services=tuple(s.name for s in p.services),
                            gateways=tuple(g.name for g in p.gateways), connected=p.connected, synced=p.synced,
                            state=state, version=p.version, error=p.error, scrape_error=scrape_errors.get(p.node, ""),
                            metrics_state=degraded.get(p.node, "ok" if scraped else ""),
                            metrics_age_seconds=ages.get(p.node)))
    return out


def certificates_view(certs: Iterable[Mapping[str, Any]], now: float) -> list[CertificateRow]:
    """``certs``: ``spiffe_id``, ``node``, ``not_before``, ``not_after`` (unix times). Soonest expiry first."""
    out = []
    for c in certs:
        left = c["not_after"] - now
        life = max(1.0, c["not_after"] - c["not_before"])
        fraction = max(0.0, min(1.0, left / life))
        out.append(CertificateRow(
            spiffe_id=c["spiffe_id"], node=c.get("node") or "", expires_in_seconds=round(left),
            lifetime_seconds=round(life), fraction_left=round(fraction, 4),
            state="expired" if left <= 0 else ("expiring" if fraction < CERT_WARNING_FRACTION else "ok")))
    return sorted(out, key=lambda c: (c.expires_in_seconds, c.spiffe_id, c.node))


def totals_view(services: Sequence[ServiceRow], edges: Sequence[EdgeRow], proxies: Sequence[ProxyRow],
                certs: Sequence[CertificateRow]) -> Totals:
    served = [(s, s.rps) for s in services if s.kind == "service" and s.rps is not None]
    rps = sum(r for _, r in served)
    errors = sum(r * (s.error_rate or 0.0) for s, r in served)
    p99s = [s.p99_ms for s, _ in served if s.p99_ms is not None]
    return Totals(
        rps=round(rps, 3), error_rate=round(errors / rps, 4) if rps > 0 else None,
        max_p99_ms=max(p99s) if p99s else None, edges=len(edges),
        policy_denied=round(sum(s.policy_denied for s in services), 3),
        circuit_breaker_overflow=round(sum(s.circuit_breaker_overflow for s in services), 3),
        retry_exhausted=round(sum(s.retry_exhausted for s in services), 3),
        proxies=len(proxies), proxies_synced=sum(1 for p in proxies if p.state == "synced"),
        certificates=len(certs), certificates_expiring=sum(1 for c in certs if c.state != "ok"),
    )


def build_summary(signals: Signals | None, proxies: Sequence[ProxyStatus], certs: Iterable[Mapping[str, Any]],
                  *, now: float, trust_domain: str, collector: CollectorState,
                  ca_root_expiry: float | None = None) -> DashboardSummary:
    """Everything ``GET /v1/dashboard/summary`` answers, in one document. ``collector.signals_at`` is
    taken from ``signals``."""
    services = services_view(signals, proxies)
    versions = version_edges_view(signals, gateway_view(signals, proxies))
    edges = edges_view(signals, versions)
    proxy_rows = proxies_view(proxies, collector.errors, collector)
    cert_rows = certificates_view(certs, now)
    return DashboardSummary(
        generated_at=now, trust_domain=trust_domain,
        collector=dataclasses.replace(collector, signals_at=signals.at if signals else None),
        services=tuple(services), edges=tuple(edges), proxies=tuple(proxy_rows), certificates=tuple(cert_rows),
        ca_root_expires_in_seconds=None if ca_root_expiry is None else round(ca_root_expiry - now),
        totals=totals_view(services, edges, proxy_rows, cert_rows), version_edges=tuple(versions),
    )


def series_view(name: str, points: Sequence[tuple[float, Mapping[Labels, float]]],
                match: Mapping[str, str] | None = None) -> SeriesResponse:
    """``GET /v1/dashboard/series``: one series per label set, ``points`` as ``[unix time, value]``; a label
    set missing at some time (idle: no error rate, no p99) simply has no point there."""
    series: dict[Labels, list[tuple[float, float]]] = {}
    for t, values in points:
        for key, v in values.items():
            d = dict(key)
            if match and any(d.get(k) != want for k, want in match.items()):
                continue
            series.setdefault(key, []).append((round(t, 3), round(v, 6)))
    return SeriesResponse(signal=name, labels=tuple(SIGNAL_LABELS[name]),
                          series=tuple(Series(labels=dict(k), points=tuple(pts)) for k, pts in sorted(series.items())))


__all__ = ["build_summary", "certificates_view", "edges_view", "gateway_view", "health", "proxies_view", "series_view",
           "services_view", "totals_view", "version_edges_view"]
