"""The control plane's web dashboard: static page (``static/``) and the JSON views it polls.

The page (plain HTML, CSS and JavaScript, no build step, nothing fetched from elsewhere) is served at ``/``
by the control plane's operator HTTP server; it polls ``/v1/dashboard/summary``,
``/v1/dashboard/series``, ``/v1/alerts`` with the operator token it was opened with (see
``docs/observability.md``, "Dashboard").
"""

from ._summary import (build_summary, certificates_view, edges_view, gateway_view, health, proxies_view, series_view,
                       services_view, version_edges_view)
from ._static import STATIC_FILES, read_static
from ._details import edge_detail, service_detail

__all__ = ["STATIC_FILES", "build_summary", "edge_detail", "service_detail", "certificates_view", "edges_view", "gateway_view", "health", "proxies_view",
           "read_static", "series_view", "services_view", "version_edges_view"]
