#!/usr/bin/env python3
"""Bookinfo sample application for meshcore: one stdlib-only program that plays any of its four services.

The demo runs this file on the VMs (python3.11, no third-party packages), once per service instance::

    python3 app.py --service productpage --version v1 --listen 127.0.0.11:9080 --instance productpage-v1 \\
        --upstream details=http://127.0.0.11:9091 --upstream reviews=http://127.0.0.11:9092

* ``productpage`` renders the book page from ``details`` and ``reviews`` (HTML, or JSON with ``?format=json``).
* ``details`` answers ``GET /details/<id>`` with the book's facts.
* ``reviews`` answers ``GET /reviews/<id>``: v1 without ratings, v2 with black stars, v3 with red stars
  (v2 and v3 call ``ratings``).
* ``ratings`` answers ``GET /ratings/<id>`` with the stars per reviewer.

Failure switch (for canary and outlier-detection demos): ``BOOKINFO_FAIL=reviews:v3[,ratings:v1...]`` in the
environment makes those service:version pairs answer 500 on their API path (``/health`` stays 200, so the
instance stays registered and healthy: only its answers fail, as a bad release would).

Upstream URLs point at the local Envoy's outbound listeners, so every call between services crosses the mesh.
Each service forwards the caller's ``end-user``, ``cookie`` and trace-context headers, as the original bookinfo
does, so header-based routing and distributed traces work end to end. Every JSON answer names the service,
version and instance that produced it, which is how the demo (and a person) sees where traffic went.
A failing upstream never fails the page: that part says "... unavailable" with the upstream's status.
"""

from __future__ import annotations

import argparse
import errno
import html
import http.client
import http.cookies
import http.server
import ipaddress
import json
import logging
import os
import re
import signal
import socket
import socketserver
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

logger = logging.getLogger("bookinfo")

SERVICES = ("productpage", "details", "reviews", "ratings")
DEFAULT_PORTS = {"productpage": 9080, "details": 9081, "reviews": 9082, "ratings": 9083}
UPSTREAM_NAMES = ("details", "reviews", "ratings")
REVIEWS_COLORS: dict[str, str | None] = {"v1": None, "v2": "black", "v3": "red"}
UPSTREAM_TIMEOUT_S = 3.0
HANDLER_SOCKET_TIMEOUT_S = 10.0

TRACE_HEADERS = (
    "traceparent",
    "tracestate",
    "x-request-id",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
    "b3",
    "x-ot-span-context",
    "baggage",
)
FORWARDED_HEADERS = ("end-user", "cookie", *TRACE_HEADERS)
USER_COOKIE = "user"
_USERNAME_RE = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")
_ID_PATH_RE = re.compile(r"^/(details|reviews|ratings)/([^/]+)/?$")

PRODUCT = {
    "title": "The Comedy of Errors",
    "summary": (
        "One of Shakespeare's earliest and shortest comedies. Two pairs of identical twins, separated "
        "in a shipwreck, end up in the same city on the same day; wrong husbands, wrong servants and a "
        "wrongly delivered gold chain turn the afternoon into a tangle of mistaken identity and slapstick."
    ),
}
BOOK_DETAILS = {
    "author": "William Shakespeare",
    "year": 1595,
    "type": "paperback",
    "pages": 200,
    "publisher": "PublisherA",
    "language": "English",
    "ISBN-10": "1234567890",
    "ISBN-13": "123-1234567890",
}
REVIEWS = (
    ("Reviewer1", "Quick, silly and still funny four hundred years on; every twin mix-up lands."),
    ("Reviewer2", "Lighter than the later comedies, but the wordplay rewards a second reading."),
)
RATINGS = {"Reviewer1": 5, "Reviewer2": 4}


class ConfigError(ValueError):
    """A command-line flag is wrong; the message says which flag and what to pass instead."""


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Config:
    """Everything the flags say, validated."""

    service: str
    version: str
    host: str
    port: int
    instance: str
    upstreams: Mapping[str, str] = field(default_factory=dict)
    failing: bool = False  # BOOKINFO_FAIL names this service:version: API answers are 500

    @property
    def listen(self) -> str:
        return format_hostport(self.host, self.port)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_listen(value: str) -> tuple[str, int]:
    """``"127.0.0.11:9080"`` / ``"[::1]:9080"`` -> (host, port). The host must be an IP literal, bound as given."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"--listen {value!r}: expected HOST:PORT, e.g. 127.0.0.11:9080")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(
            f"--listen {value!r}: {host!r} is not an IP address; pass the exact address to bind, e.g. 127.0.0.11:9080"
        ) from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"--listen {value!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def parse_upstream(value: str) -> tuple[str, str]:
    """``"details=http://127.0.0.11:9091"`` -> ("details", "http://127.0.0.11:9091")."""
    name, sep, url = value.partition("=")
    name = name.strip()
    if not sep or not name or not url:
        raise ConfigError(f"--upstream {value!r}: expected NAME=URL, e.g. details=http://127.0.0.11:9091")
    if name not in UPSTREAM_NAMES:
        raise ConfigError(
            f"--upstream {value!r}: unknown upstream {name!r}; known upstreams are {', '.join(UPSTREAM_NAMES)}"
        )
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"--upstream {value!r}: URL must be http://HOST:PORT (the local Envoy's plain-HTTP outbound listener)"
        )
    try:
        parts.port
    except ValueError:
        raise ConfigError(f"--upstream {value!r}: the port in {url!r} is not valid") from None
    return name, url.rstrip("/")


def required_upstreams(service: str, version: str) -> tuple[str, ...]:
    """Which upstreams a service at a version calls (and therefore needs a URL for)."""
    if service == "productpage":
        return ("details", "reviews")
    if service == "reviews" and REVIEWS_COLORS.get(version):
        return ("ratings",)
    return ()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="app.py",
        description="Bookinfo sample service for meshcore (productpage, details, reviews or ratings).",
        epilog="Example: app.py --service reviews --version v3 --listen 127.0.0.13:9082 "
        "--instance reviews-v3 --upstream ratings=http://127.0.0.13:9093",
    )
    parser.add_argument("--service", required=True, choices=SERVICES, help="which bookinfo service to run")
    parser.add_argument("--version", default="v1", help="service version (reviews: v1, v2 or v3); default v1")
    parser.add_argument(
        "--listen",
        help="exact IP:PORT to bind (port 0 picks a free one); default 127.0.0.1:<9080|9081|9082|9083>",
    )
    parser.add_argument("--instance", help="instance id shown in responses; default <service>-<version>@<hostname>")
    parser.add_argument(
        "--upstream",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="where to reach details, reviews or ratings (the local Envoy's outbound listener); repeatable",
    )
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    """Validate parsed flags into a :class:`Config`; raises :class:`ConfigError` naming the bad flag."""
    service, version = args.service, args.version.strip()
    if not version:
        raise ConfigError("--version must not be empty")
    if service == "reviews" and version not in REVIEWS_COLORS:
        raise ConfigError(f"--version {version!r}: reviews comes in v1 (no stars), v2 (black) or v3 (red)")
    host, port = parse_listen(args.listen) if args.listen else ("127.0.0.1", DEFAULT_PORTS[service])
    upstreams: dict[str, str] = {}
    for value in args.upstream:
        name, url = parse_upstream(value)
        if name in upstreams:
            raise ConfigError(f"--upstream {name}= given twice ({upstreams[name]} and {url}); pass it once")
        upstreams[name] = url
    needed = required_upstreams(service, version)
    missing = [n for n in needed if n not in upstreams]
    if missing:
        hint = " ".join(f"--upstream {n}=http://HOST:PORT" for n in missing)
        raise ConfigError(f"{service} {version} calls {', '.join(missing)}: add {hint}")
    for name in upstreams:
        if name not in needed:
            logger.warning("unused upstream service=%s version=%s upstream=%s", service, version, name)
    instance = args.instance or f"{service}-{version}@{socket.gethostname()}"
    failing = f"{service}:{version}" in {p.strip() for p in os.environ.get("BOOKINFO_FAIL", "").split(",")}
    return Config(service=service, version=version, host=host, port=port, instance=instance, upstreams=upstreams,
                  failing=failing)


# ------------------------------------------------------------------------------------------- upstreams


@dataclass(frozen=True)
class UpstreamResult:
    """The outcome of one upstream call: a JSON object, or why there is none."""

    body: dict[str, Any] | None
    status: int | None
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.body is not None

    def part(self, name: str) -> dict[str, Any]:
        """The upstream's JSON, or ``{"error": "<name> unavailable", "status": .., "reason": ..}``."""
        if self.body is not None:
            return self.body
        return {"error": f"{name} unavailable", "status": self.status, "reason": self.reason}


Fetch = Callable[[str, Mapping[str, str]], UpstreamResult]

# Never go through an http_proxy from the environment: upstreams are the local Envoy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch_json(url: str, headers: Mapping[str, str], timeout: float = UPSTREAM_TIMEOUT_S) -> UpstreamResult:
    """GET ``url`` and decode a JSON object; every failure becomes an :class:`UpstreamResult` with a reason."""
    request = urllib.request.Request(url, headers={**headers, "Accept": "application/json"}, method="GET")
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        snippet = _snippet(exc)
        return UpstreamResult(None, exc.code, f"upstream answered {exc.code}" + (f": {snippet}" if snippet else ""))
    except urllib.error.URLError as exc:
        return UpstreamResult(None, None, _describe_os_error(exc.reason, timeout))
    except (OSError, http.client.HTTPException) as exc:
        return UpstreamResult(None, None, _describe_os_error(exc, timeout))
    if not 200 <= status < 300:
        return UpstreamResult(None, status, f"upstream answered {status}")
    try:
        body = json.loads(raw)
    except ValueError:
        return UpstreamResult(None, status, "upstream answered with something that is not JSON")
    if not isinstance(body, dict):
        return UpstreamResult(None, status, "upstream answered JSON that is not an object")
    return UpstreamResult(body, status)


def _snippet(exc: urllib.error.HTTPError) -> str:
    try:
        text = exc.read(300).decode("utf-8", "replace")
    except (OSError, http.client.HTTPException):
        return ""
    finally:
        exc.close()
    return " ".join(text.split())[:200]


def _describe_os_error(reason: object, timeout: float) -> str:
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused"
    if isinstance(reason, TimeoutError):
        return f"timed out after {timeout:g} s"
    if isinstance(reason, (ConnectionResetError, http.client.RemoteDisconnected)):
        return "connection closed by upstream"
    return str(reason) or type(reason).__name__


# --------------------------------------------------------------------------------------------- handlers


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: Mapping[str, Sequence[str]]
    headers: Mapping[str, str]  # lower-case names
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    status: int
    body: bytes
    content_type: str
    headers: tuple[tuple[str, str], ...] = ()

    @classmethod
    def json(cls, status: int, obj: Any, headers: tuple[tuple[str, str], ...] = ()) -> "Response":
        data = json.dumps(obj, indent=2, sort_keys=False).encode() + b"\n"
        return cls(status, data, "application/json", headers)

    @classmethod
    def text(cls, status: int, text: str) -> "Response":
        return cls(status, text.encode(), "text/plain; charset=utf-8")

    @classmethod
    def html(cls, status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> "Response":
        return cls(status, text.encode(), "text/html; charset=utf-8", headers)

    @classmethod
    def redirect(cls, location: str, headers: tuple[tuple[str, str], ...] = ()) -> "Response":
        return cls(302, b"", "text/plain; charset=utf-8", (("Location", location), *headers))


class App:
    """One bookinfo service: turns a :class:`Request` into a :class:`Response`. IO only through ``fetch``."""

    def __init__(self, config: Config, fetch: Fetch = fetch_json) -> None:
        self.config = config
        self._fetch = fetch

    # -- identity and headers

    def identity(self) -> dict[str, Any]:
        return {"service": self.config.service, "version": self.config.version, "instance": self.config.instance}

    def end_user(self, req: Request) -> str | None:
        """The ``end-user`` header; productpage also takes the logged-in user from its cookie."""
        user = req.headers.get("end-user")
        if user:
            return user
        if self.config.service == "productpage":
            return _cookie_user(req.headers.get("cookie", ""))
        return None

    def echo(self, req: Request) -> dict[str, Any]:
        """What this service received (and forwards): ``end_user`` when present, trace headers when present."""
        out: dict[str, Any] = {}
        user = self.end_user(req)
        if user:
            out["end_user"] = user
        trace = {h: req.headers[h] for h in TRACE_HEADERS if h in req.headers}
        if trace:
            out["trace"] = trace
        return out

    def outgoing_headers(self, req: Request) -> dict[str, str]:
        headers = {h: req.headers[h] for h in FORWARDED_HEADERS if h in req.headers}
        user = self.end_user(req)
        if user:
            headers["end-user"] = user
        return headers

    def call(self, upstream: str, path: str, req: Request) -> UpstreamResult:
        result = self._fetch(self.config.upstreams[upstream] + path, self.outgoing_headers(req))
        if not result.ok:
            logger.warning(
                "upstream failed service=%s upstream=%s path=%s status=%s reason=%r",
                self.config.service, upstream, path, result.status, result.reason,
            )
        return result

    # -- routing

    def handle(self, req: Request) -> Response:
        svc = self.config.service
        if req.path == "/health":
            return self._only_get(req) or Response.text(200, "ok\n")
        if svc == "productpage":
            if req.path == "/":
                return self._only_get(req) or Response.html(200, render_index(self.identity()))
            if req.path == "/productpage":
                return self._only_get(req) or self.productpage(req)
            if req.path == "/login":
                return self.login(req)
            if req.path == "/logout":
                return Response.redirect("/productpage", (("Set-Cookie", f"{USER_COOKIE}=; Path=/; Max-Age=0"),))
        else:
            match = _ID_PATH_RE.match(req.path)
            if req.path == "/":
                return self._only_get(req) or Response.text(
                    200, f"bookinfo {svc} {self.config.version} ({self.config.instance}): try GET /{svc}/0\n"
                )
            if match and match.group(1) == svc:
                refused = self._only_get(req)
                if refused:
                    return refused
                if self.config.failing:
                    return Response.json(500, {"error": "failing on purpose (BOOKINFO_FAIL)", **self.identity()})
                if not match.group(2).isdigit():
                    return Response.json(400, {"error": f"product id must be a number, got {match.group(2)!r}"})
                return getattr(self, svc)(int(match.group(2)), req)
        return Response.json(404, {"error": "not found", "path": req.path, **self.identity()})

    @staticmethod
    def _only_get(req: Request) -> Response | None:
        if req.method in ("GET", "HEAD"):
            return None
        return Response(405, b"method not allowed\n", "text/plain; charset=utf-8", (("Allow", "GET"),))

    # -- the four services

    def details(self, product_id: int, req: Request) -> Response:
        return Response.json(200, {**self.identity(), "id": product_id, **BOOK_DETAILS, **self.echo(req)})

    def ratings(self, product_id: int, req: Request) -> Response:
        return Response.json(200, {**self.identity(), "id": product_id, "ratings": dict(RATINGS), **self.echo(req)})

    def reviews(self, product_id: int, req: Request) -> Response:
        color = REVIEWS_COLORS[self.config.version]
        body: dict[str, Any] = {**self.identity(), "id": product_id}
        reviews = [{"reviewer": who, "text": text} for who, text in REVIEWS]
        body["reviews"] = reviews
        if color:
            result = self.call("ratings", f"/ratings/{product_id}", req)
            body["ratings"] = (
                result.body if result.ok else {"error": "ratings unavailable", "status": result.status, "reason": result.reason}
            )
            stars = (result.body or {}).get("ratings") if result.ok else None
            for review in reviews:
                if isinstance(stars, dict) and isinstance(stars.get(review["reviewer"]), int):
                    review["rating"] = {"stars": stars[review["reviewer"]], "color": color}
                else:
                    review["rating"] = {"error": "ratings unavailable"}
        body.update(self.echo(req))
        return Response.json(200, body)

    def productpage(self, req: Request) -> Response:
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="upstream") as pool:
            details_future = pool.submit(self.call, "details", "/details/0", req)
            reviews_future = pool.submit(self.call, "reviews", "/reviews/0", req)
            details, reviews = details_future.result(), reviews_future.result()
        page = {
            **self.identity(),
            "product": {"id": 0, **PRODUCT},
            "details": details.part("details"),
            "reviews": reviews.part("reviews"),
            **self.echo(req),
        }
        fmt = (req.query.get("format") or ["html"])[0].lower()
        if fmt == "json":
            return Response.json(200, page)
        return Response.html(200, render_productpage(page))

    def login(self, req: Request) -> Response:
        if req.method != "POST":
            return Response(405, b"use POST /login with username=<name>\n", "text/plain; charset=utf-8", (("Allow", "POST"),))
        form = urllib.parse.parse_qs(req.body.decode("utf-8", "replace"))
        username = (form.get("username") or [""])[0].strip()
        if not _USERNAME_RE.match(username):
            return Response.text(400, "username must be 1-64 letters, digits, '.', '_', '@' or '-'\n")
        cookie = f"{USER_COOKIE}={username}; Path=/; HttpOnly; SameSite=Lax"
        return Response.redirect("/productpage", (("Set-Cookie", cookie),))


def _cookie_user(cookie_header: str) -> str | None:
    if not cookie_header:
        return None
    jar = http.cookies.SimpleCookie()
    try:
        jar.load(cookie_header)
    except http.cookies.CookieError:
        return None
    morsel = jar.get(USER_COOKIE)
    if morsel and _USERNAME_RE.match(morsel.value):
        return morsel.value
    return None


# ------------------------------------------------------------------------------------------- rendering

_STYLE = """
  body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0; color: #1f2328; background: #f6f8fa; }
  header { background: #24292f; color: #fff; padding: 0.8rem 2rem; display: flex; justify-content: space-between; align-items: center; }
  header a { color: #fff; text-decoration: none; }
  header form { margin: 0; }
  header input { padding: 0.2rem 0.4rem; border: 1px solid #57606a; border-radius: 4px; }
  header button { background: #2da44e; color: #fff; border: 0; border-radius: 4px; padding: 0.3rem 0.8rem; cursor: pointer; }
  main { max-width: 60rem; margin: 1.5rem auto; padding: 0 1.5rem; }
  h1 { margin: 0.2rem 0 0.6rem; }
  .summary { font-size: 1.05rem; line-height: 1.5; }
  .grid { display: grid; grid-template-columns: 1fr 1fr; gap: 1.5rem; margin-top: 1.5rem; }
  section { background: #fff; border: 1px solid #d0d7de; border-radius: 6px; padding: 1rem 1.2rem; }
  section h2 { margin-top: 0; font-size: 1.2rem; }
  dl { display: grid; grid-template-columns: max-content 1fr; gap: 0.3rem 1rem; margin: 0; }
  dt { font-weight: 600; }
  blockquote { margin: 0 0 1rem; padding-left: 0.8rem; border-left: 3px solid #d0d7de; }
  blockquote footer { color: #57606a; font-size: 0.9rem; margin-top: 0.3rem; }
  .stars { font-size: 1.2rem; letter-spacing: 0.1rem; }
  .error { color: #cf222e; font-weight: 600; }
  .reason { color: #57606a; font-size: 0.9rem; }
  table { border-collapse: collapse; width: 100%; margin-top: 1.5rem; background: #fff; }
  th, td { border: 1px solid #d0d7de; padding: 0.35rem 0.7rem; text-align: left; font-size: 0.9rem; }
  th { background: #eaeef2; }
  caption { text-align: left; font-weight: 600; padding: 0.3rem 0; }
  code { font-size: 0.85rem; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render_index(identity: Mapping[str, Any]) -> str:
    body = (
        "<main><h1>Bookinfo on meshcore</h1>"
        "<p>A sample application of four services (productpage, details, reviews, ratings) running on VMs "
        "and talking through the mesh.</p>"
        '<p><a href="/productpage">Open the product page</a> '
        '(or <a href="/productpage?format=json">as JSON</a>).</p>'
        f"<p class=\"reason\">served by {_e(identity['service'])} {_e(identity['version'])} "
        f"({_e(identity['instance'])})</p></main>"
    )
    return _page("Bookinfo", body)


def _unavailable(what: str, part: Mapping[str, Any]) -> str:
    status = part.get("status")
    detail = f"upstream status {status}" if status is not None else (part.get("reason") or "no answer")
    reason = part.get("reason") if status is not None else ""
    extra = f'<p class="reason">{_e(reason)}</p>' if reason else ""
    return f'<p class="error">{_e(what)} unavailable ({_e(detail)})</p>{extra}'


def _render_details(details: Mapping[str, Any]) -> str:
    if "error" in details:
        return _unavailable("details", details)
    rows = "".join(
        f"<dt>{_e(label)}</dt><dd>{_e(details.get(key))}</dd>"
        for key, label in (
            ("type", "Type"), ("pages", "Pages"), ("publisher", "Publisher"), ("language", "Language"),
            ("ISBN-10", "ISBN-10"), ("ISBN-13", "ISBN-13"), ("author", "Author"), ("year", "Year"),
        )
        if key in details
    )
    return f"<dl>{rows}</dl>"


def _render_stars(rating: Mapping[str, Any] | None) -> str:
    if not rating:
        return ""
    if "error" in rating:
        return '<div class="error">ratings unavailable</div>'
    stars = max(0, min(5, int(rating.get("stars", 0))))
    color = rating.get("color") if rating.get("color") in ("red", "black") else "black"
    return (
        f'<div class="stars" style="color: {color}" data-color="{color}" title="{stars} of 5 stars">'
        f"{'&#9733;' * stars}{'&#9734;' * (5 - stars)}</div>"
    )


def _render_reviews(reviews: Mapping[str, Any]) -> str:
    if "error" in reviews:
        return _unavailable("reviews", reviews)
    parts = []
    for review in reviews.get("reviews") or []:
        parts.append(
            f"<blockquote><p>{_e(review.get('text'))}</p>"
            f"<footer>{_e(review.get('reviewer'))}</footer>{_render_stars(review.get('rating'))}</blockquote>"
        )
    ratings = reviews.get("ratings")
    if isinstance(ratings, dict) and "error" in ratings:
        parts.append(_unavailable("ratings", ratings))
    return "".join(parts) or "<p>No reviews yet.</p>"


def _provenance_rows(page: Mapping[str, Any]) -> str:
    def row(part: str, obj: Any, fallback_service: str) -> str:
        if isinstance(obj, dict) and "error" not in obj and "service" in obj:
            return (
                f"<tr><td>{_e(part)}</td><td>{_e(obj.get('service'))}</td>"
                f"<td>{_e(obj.get('version'))}</td><td><code>{_e(obj.get('instance'))}</code></td></tr>"
            )
        return f'<tr><td>{_e(part)}</td><td>{_e(fallback_service)}</td><td colspan="2" class="error">unavailable</td></tr>'

    rows = [row("page", page, "productpage"), row("details", page["details"], "details"), row("reviews", page["reviews"], "reviews")]
    reviews = page["reviews"]
    if isinstance(reviews, dict) and "ratings" in reviews:
        rows.append(row("ratings", reviews["ratings"], "ratings"))
    return "".join(rows)


def render_productpage(page: Mapping[str, Any]) -> str:
    """The human page: title, details, reviews (stars per the reviews version) and who served each part."""
    user = page.get("end_user")
    if user:
        auth = (
            f'<span>signed in as <strong>{_e(user)}</strong> &middot; <a href="/logout">sign out</a></span>'
        )
    else:
        auth = (
            '<form method="post" action="/login"><label>user <input name="username" size="10" required></label> '
            "<button type=\"submit\">sign in</button></form>"
        )
    product = page["product"]
    body = (
        f'<header><a href="/"><strong>BookInfo Sample</strong></a>{auth}</header>\n<main>\n'
        f"<h1>{_e(product['title'])}</h1>\n<p class=\"summary\">{_e(product['summary'])}</p>\n"
        '<div class="grid">\n'
        f"<section id=\"details\"><h2>Book Details</h2>{_render_details(page['details'])}</section>\n"
        f"<section id=\"reviews\"><h2>Book Reviews</h2>{_render_reviews(page['reviews'])}</section>\n"
        "</div>\n"
        '<table id="served-by"><caption>Served by</caption>'
        "<thead><tr><th>part</th><th>service</th><th>version</th><th>instance</th></tr></thead>"
        f"<tbody>{_provenance_rows(page)}</tbody></table>\n</main>"
    )
    return _page(f"{product['title']} - Bookinfo", body)


# ---------------------------------------------------------------------------------------------- server


class _Handler(http.server.BaseHTTPRequestHandler):
    """Adapts http.server to :meth:`App.handle`, one log line per request."""

    server_version = "bookinfo/1.0"
    protocol_version = "HTTP/1.1"
    timeout = HANDLER_SOCKET_TIMEOUT_S
    server: "BookinfoServer"

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.monotonic()
        app = self.server.app
        split = urllib.parse.urlsplit(self.path)
        headers = {k.lower(): v for k, v in self.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = self.rfile.read(min(length, 64 * 1024)) if length > 0 else b""
        req = Request(self.command, split.path or "/", urllib.parse.parse_qs(split.query), headers, body)
        try:
            resp = app.handle(req)
        except Exception:  # a bug here must not kill the thread silently: log it and answer 500
            logger.exception("handler failed service=%s path=%s", app.config.service, req.path)
            resp = Response.json(500, {"error": "internal error", **app.identity()})
        self.close_connection = True
        self.send_response(resp.status)
        self.send_header("Content-Type", resp.content_type)
        self.send_header("Content-Length", str(len(resp.body)))
        self.send_header("Connection", "close")
        self.send_header("X-Bookinfo-Service", f"{app.config.service}/{app.config.version}")
        for name, value in resp.headers:
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(resp.body)
        logger.info(
            "request service=%s version=%s instance=%s method=%s path=%s status=%d duration_ms=%.1f client=%s "
            "request_id=%s end_user=%s",
            app.config.service, app.config.version, app.config.instance, self.command, self.path, resp.status,
            (time.monotonic() - started) * 1000, self.client_address[0], headers.get("x-request-id", "-"),
            app.end_user(req) or "-",
        )

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Replaced by the one structured line in :meth:`_dispatch`."""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's signature)
        logger.warning("http service=%s client=%s %s", self.server.app.config.service, self.client_address[0], format % args)


class BookinfoServer(http.server.ThreadingHTTPServer):
    """A threading HTTP server bound to exactly one address, that waits for in-flight requests on close."""

    daemon_threads = False  # socketserver only tracks (and so only drains) non-daemon request threads
    block_on_close = True

    def __init__(self, app: App, address: tuple[str, int]) -> None:
        self.app = app
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would reverse-resolve the address (slow without DNS); the name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = str(self.server_address[0]), int(self.server_address[1])


def bind_error_message(config: Config, exc: OSError) -> str:
    where = config.listen
    if exc.errno == errno.EADDRINUSE:
        return (
            f"cannot listen on {where}: address already in use. Another process holds this port "
            f"(see `ss -ltnp 'sport = :{config.port}'`); stop it or choose another --listen port."
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: {config.host} is not an address of this host; pass an address it owns."
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need root or CAP_NET_BIND_SERVICE)."
    return f"cannot listen on {where}: {exc.strerror or exc}"


def serve(config: Config) -> int:
    """Bind, serve until SIGTERM/SIGINT, drain in-flight requests, return the exit code."""
    app = App(config)
    try:
        server = BookinfoServer(app, (config.host, config.port))
    except OSError as exc:
        message = bind_error_message(config, exc)
        logger.error("bind failed service=%s listen=%s errno=%s", config.service, config.listen, exc.errno)
        print(f"app.py: error: {message}", file=sys.stderr, flush=True)
        return 1
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal service=%s signal=%s: shutting down", config.service, signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    loop = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="serve", daemon=True)
    loop.start()
    bound = format_hostport(server.server_name, server.server_port)
    logger.info(
        "listening service=%s version=%s instance=%s address=%s upstreams=%s",
        config.service, config.version, config.instance, bound,
        ",".join(f"{k}={v}" for k, v in sorted(config.upstreams.items())) or "-",
    )
    while not stop.wait(0.5):
        if not loop.is_alive():
            logger.error("server loop died service=%s", config.service)
            server.server_close()
            return 1
    server.shutdown()
    server.server_close()  # joins in-flight request threads
    logger.info("stopped service=%s instance=%s", config.service, config.instance)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        config = config_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))  # exits 2 with usage
    return serve(config)


if __name__ == "__main__":
    sys.exit(main())
