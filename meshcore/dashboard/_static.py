"""The dashboard's static files, shipped as package data (``meshcore/dashboard/static/``)."""

from __future__ import annotations

from importlib import resources

CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8", ".svg": "image/svg+xml", ".png": "image/png"}
STATIC_FILES = ("index.html", "app.js", "charts.js", "graph.js", "style.css", "favicon.svg")
"""The only files served: a fixed list, so no request path ever reaches the file system."""


def read_static(name: str) -> tuple[bytes, str]:
    """``(content, content type)`` of one static file; :class:`FileNotFoundError` for any other name."""
    if name not in STATIC_FILES:
        raise FileNotFoundError(name)
    data = resources.files(__package__).joinpath("static", name).read_bytes()
    return data, CONTENT_TYPES[name[name.rindex("."):]]


__all__ = ["CONTENT_TYPES", "STATIC_FILES", "read_static"]
