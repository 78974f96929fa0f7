"""The dashboard's routes on the operator HTTP server, and the control plane's metrics collector.

* ``GET /`` and ``GET /dashboard/<file>``: the page and its assets. They are open (no token): they hold no
  data. Everything the page shows comes from ``/v1/...``, which needs an operator token like any other
  ``/v1`` call. The page takes the token from the URL fragment it was opened with
  (``http://host:port/#token=...``, what ``meshctl dashboard`` opens; a fragment never reaches a server
  or its logs), keeps it in the tab's ``sessionStorage``, removes it from the address bar, and sends it
  as ``Authorization: Bearer``. Without one it asks for a token.
* ``GET /v1/dashboard/summary``: services, edges, proxies, certificates and totals in one document.
* ``GET /v1/dashboard/series?signal=NAME[&since=15m][&LABEL=VALUE...]``: one signal's history.
* ``GET /v1/dashboard/service?name=SVC[&version=V][&since=15m]``: a graph node's click-through (instances with
  health, the resources that apply, figures and denials over the window; :mod:`meshcore.dashboard._details`).
* ``GET /v1/dashboard/edge?source=A&destination=B[&source_version=&destination_version=][&since=15m][&method=&path=]``:
  a graph edge's click-through (figures, the routes and DestinationRule policy the caller's calls get, the authz
  verdict on a GET / or the call given).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ..dashboard import build_summary, read_static, series_view
from ..durations import parse_duration
from ..api.dashboard import CollectorState, DashboardSummary, EdgeDetail, SeriesResponse, ServiceDetail
from ..api.operator import ProxyStatus
from ..observe.collector import MeshCollector, ScrapeTarget, ca_signals, fallback_urls, scrape_url
from ..observe._versions import workloads_of_status
from ..observe.signals import SIGNAL_LABELS
from ..errors import BadRequest, NotFound, Unavailable
from ._http import Request, Response
from .operators import AuthorizingRouter

if TYPE_CHECKING:
    from ..ca import CertificateAuthority
    from ..snapshot import MeshSnapshot

#: The proxies as ``/v1/proxies`` lists them (the daemon's status view).
ProxyList = Callable[[], Sequence[ProxyStatus]]


def scrape_target(p: ProxyStatus) -> ScrapeTarget:
    """What the collector needs of one proxy: where to scrape it, its services, whether it is in sync."""
    return ScrapeTarget(node=p.node, url=scrape_url(p.metrics, p.admin), fallback_urls=fallback_urls(p.metrics, p.admin),
                        instances=tuple((s.id, s.name) for s in p.services),
                        workloads=workloads_of_status(p.services, p.gateways),
                        heard_from=bool(p.connected or p.admin or p.metrics or p.version),
                        in_sync=p.synced and not p.error)

log = logging.getLogger("meshcore.controlplane.dashboard")

DEFAULT_SINCE_S = 15 * 60
HISTORY_S = 3600.0
_HEADERS = {
    # The page loads nothing from elsewhere and talks only to this server.
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
                               "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache",
}


def collector_for(proxies: ProxyList, ca: "CertificateAuthority", interval: float = 5.0) -> MeshCollector:
    """The control plane's collector: scrapes the proxies ``proxies()`` lists, adds certificate expiry
    from the CA (for the nodes that are still in the mesh) and the out-of-sync state of each proxy."""

    def extra() -> dict:
        nodes = {p.node for p in proxies()}
        return ca_signals(ca, time.time(), nodes)

    interval = float(interval or 5.0)
    return MeshCollector(lambda: [scrape_target(p) for p in proxies()], interval=interval,
                         history=max(HISTORY_S, interval), extra=extra)


def _static(name: str) -> Response:
    try:
        body, content_type = read_static(name)
    except FileNotFoundError as exc:
        raise NotFound(f"no such dashboard file: {name}") from exc
    return Response(body, content_type=content_type, headers=_HEADERS)


def collector_state(collector: MeshCollector) -> CollectorState:
    fresh = collector.freshness()
    return CollectorState(interval_seconds=collector.interval, history_seconds=collector.history_seconds,
                          errors=dict(collector.errors), last_duration_seconds=round(collector.last_duration, 3),
                          degraded={n: f.state for n, f in fresh.items() if f.state != "ok"},
                          metrics_age_seconds={n: f.age_seconds for n, f in fresh.items() if f.age_seconds is not None})


def summary(collector: MeshCollector, ca: "CertificateAuthority", proxies: ProxyList) -> DashboardSummary:
    now = time.time()
    certs = [{"spiffe_id": c.spiffe_id, "node": c.node or "", "not_before": c.not_before.timestamp(),
              "not_after": c.not_after.timestamp()} for c in ca.issued()]
    roots = [r for r in ca.state().get("roots", ()) if r.get("role") == "current"]
    root_expiry = None
    if roots:
        from ..ca.model import parse_rfc3339

        root_expiry = parse_rfc3339(roots[0]["not_after"]).timestamp()
    return build_summary(
        collector.latest(), proxies(), certs, now=now, trust_domain=ca.trust_domain,
        collector=collector_state(collector),
        ca_root_expiry=root_expiry)


def _since_seconds(req: Request) -> float:
    since_text = req.query.get("since", "")
    try:
        return float(since_text) if since_text.replace(".", "", 1).isdigit() else (
            parse_duration(since_text).total_seconds() if since_text else DEFAULT_SINCE_S)
    except ValueError as exc:
        raise BadRequest(f"since={since_text!r}: a duration such as 15m or 600s ({exc})") from exc


def series(collector: MeshCollector, req: Request) -> SeriesResponse:
    name = req.query.get("signal", "")
    if name not in SIGNAL_LABELS:
        raise BadRequest(f"signal={name!r}: give one of {', '.join(SIGNAL_LABELS)}")
    seconds = _since_seconds(req)
    match = {k: v for k, v in req.query.items() if k in SIGNAL_LABELS[name]}
    return series_view(name, collector.history(name, since=time.time() - seconds), match)


SnapshotOf = Callable[[], "MeshSnapshot | None"]


def _snapshot(snapshot: SnapshotOf) -> "MeshSnapshot":
    snap = snapshot()
    if snap is None:
        raise Unavailable("the control plane has no mesh snapshot yet (catalog or store not read); retry shortly")
    return snap


def _required(req: Request, *names: str) -> list[str]:
    missing = [n for n in names if not req.query.get(n)]
    if missing:
        raise BadRequest(f"give {' and '.join(f'{n}=...' for n in missing)} (a service name as the graph shows it)")
    return [req.query[n] for n in names]


def _history(collector: MeshCollector):
    return lambda name, since: collector.history(name, since=since)


def service(collector: MeshCollector, snapshot: SnapshotOf, req: Request) -> ServiceDetail:
    """``GET /v1/dashboard/service?name=SVC[&version=V][&since=15m]``."""
    from ..dashboard import service_detail

    [name] = _required(req, "name")
    now = time.time()
    return service_detail(_snapshot(snapshot), _history(collector), name, since=now - _since_seconds(req), now=now,
                          version=req.query.get("version", ""))


def edge(collector: MeshCollector, snapshot: SnapshotOf, req: Request) -> EdgeDetail:
    """``GET /v1/dashboard/edge?source=A&destination=B[&source_version=&destination_version=][&since=15m]
    [&method=GET&path=/]``."""
    from ..dashboard import edge_detail

    source, destination = _required(req, "source", "destination")
    method, path = req.query.get("method", "GET").upper(), req.query.get("path", "/")
    if not method.isalpha() or not path.startswith("/"):
        raise BadRequest(f"method={method!r} path={path!r}: a method such as GET and a path starting with /")
    now = time.time()
    return edge_detail(_snapshot(snapshot), _history(collector), source, destination, since=now - _since_seconds(req),
                       now=now, source_version=req.query.get("source_version", ""),
                       destination_version=req.query.get("destination_version", ""), request=(method, path))


def add_routes(router: AuthorizingRouter, *, collector: MeshCollector, ca: "CertificateAuthority",
               proxies: ProxyList, snapshot: SnapshotOf | None = None) -> None:
    """Add the dashboard's page (open) and its JSON views (operator token, read-only) to ``router``."""
    # The page and its assets need no token: they carry no data.
    router.add_open("GET", "/", lambda req: _static("index.html"))
    router.add_open("GET", "/dashboard/{name}", lambda req: _static(req.params["name"]))
    router.add("GET", "/v1/dashboard/summary", lambda req: summary(collector, ca, proxies))
    router.add("GET", "/v1/dashboard/series", lambda req: series(collector, req))
    if snapshot is not None:  # the click-through reads the mesh snapshot (catalog and resources)
        router.add("GET", "/v1/dashboard/service", lambda req: service(collector, snapshot, req))
        router.add("GET", "/v1/dashboard/edge", lambda req: edge(collector, snapshot, req))


__all__ = ["add_routes", "collector_for", "edge", "series", "service", "summary"]
