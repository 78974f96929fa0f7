"""The bookinfo sample app (examples/bookinfo/app.py) as real processes on loopback, and its topology files.

The services run as subprocesses under ``python -I -S`` (no site-packages), which also proves the app is
stdlib-only as the VMs need. Upstreams are wired directly (no Envoy); every port is picked by the app binding
port 0 and read back from its ``listening ... address=`` log line. The topology tests pin the Consul
service-definition files to the placement table the demo relies on, so the two cannot drift.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import hcl2
import pytest

ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = ROOT / "examples" / "bookinfo"
APP = BOOKINFO / "app.py"
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
START_TIMEOUT_S = 10.0

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER_NO_REDIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


# ------------------------------------------------------------------------------------------- helpers


class Service:
    """One app.py subprocess; stderr is drained into ``lines`` so the pipe never fills."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-S", str(APP), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._drain, daemon=True)
        self._reader.start()
        self.port = 0

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, pattern: str, timeout: float = START_TIMEOUT_S) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                match = regex.search(line)
                if match:
                    return match
            if self.proc.poll() is not None and not self._reader.is_alive():
                break
            time.sleep(0.02)
        raise AssertionError(f"no log line matching {pattern!r} from app.py {' '.join(self.args)}:\n" + self.log)

    def started(self) -> "Service":
        self.port = int(self.wait_for_line(r"listening .*address=127\.0\.0\.1:(\d+)").group(1))
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "\n".join(self.lines)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.proc.returncode


def start(*args: str) -> Service:
    return Service(*args).started()


def get(url: str, headers: dict[str, str] | None = None, timeout: float = 15.0) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            return response.status, dict(response.headers.items()), response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers.items()), exc.read().decode()


def get_json(url: str, headers: dict[str, str] | None = None) -> dict[str, Any]:
    status, response_headers, body = get(url, headers)
    assert status == 200, (status, body)
    assert response_headers["Content-Type"].startswith("application/json")
    return json.loads(body)


def closed_port() -> int:
    """A loopback port nobody listens on (connections to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def blackhole() -> Iterator[int]:
    """A port that accepts connections (kernel backlog) but never answers: an upstream that hangs."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.fixture(scope="module")
def mesh() -> Iterator[dict[str, Service]]:
    """ratings, details, reviews v1/v2/v3 and one productpage per reviews version, wired directly."""
    services: dict[str, Service] = {}
    try:
        services["ratings"] = start("--service", "ratings", "--listen", "127.0.0.1:0", "--instance", "ratings-1")
        services["details"] = start("--service", "details", "--listen", "127.0.0.1:0", "--instance", "details-1")
        for version in ("v1", "v2", "v3"):
            services[f"reviews-{version}"] = start(
                "--service", "reviews", "--version", version, "--listen", "127.0.0.1:0",
                "--instance", f"reviews-{version}-1", "--upstream", f"ratings={services['ratings'].url}",
            )
        for version in ("v1", "v2", "v3"):
            services[f"productpage-{version}"] = start(
                "--service", "productpage", "--listen", "127.0.0.1:0", "--instance", f"productpage-{version}-1",
                "--upstream", f"details={services['details'].url}",
                "--upstream", f"reviews={services[f'reviews-{version}'].url}",
            )
        yield services
    finally:
        for service in services.values():
            service.stop()


# ------------------------------------------------------------------------------------------- the app


@pytest.mark.parametrize("version,color", [("v1", None), ("v2", "black"), ("v3", "red")])
def test_productpage_json_names_the_reviews_version_and_carries_details(mesh, version, color) -> None:
    page = get_json(f"{mesh[f'productpage-{version}'].url}/productpage?format=json")

    assert (page["service"], page["version"], page["instance"]) == ("productpage", "v1", f"productpage-{version}-1")
    assert page["details"]["service"] == "details"
    assert page["details"]["instance"] == "details-1"
    assert page["details"]["author"] == "William Shakespeare"
    assert page["details"]["ISBN-10"] == "1234567890"
    reviews = page["reviews"]
    assert (reviews["service"], reviews["version"], reviews["instance"]) == ("reviews", version, f"reviews-{version}-1")
    assert [r["reviewer"] for r in reviews["reviews"]] == ["Reviewer1", "Reviewer2"]
    if color is None:
        assert "ratings" not in reviews
        assert all("rating" not in r for r in reviews["reviews"])
    else:
        stars = get_json(f"{mesh['ratings'].url}/ratings/0")["ratings"]
        assert reviews["ratings"]["instance"] == "ratings-1"
        assert [r["rating"] for r in reviews["reviews"]] == [
            {"stars": stars[r["reviewer"]], "color": color} for r in reviews["reviews"]
        ]


@pytest.mark.parametrize("version,color", [("v1", None), ("v2", "black"), ("v3", "red")])
def test_productpage_html_shows_book_reviews_stars_and_who_served(mesh, version, color) -> None:
    status, headers, body = get(f"{mesh[f'productpage-{version}'].url}/productpage")

    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "<title>The Comedy of Errors" in body
    assert "William Shakespeare" in body and "123-1234567890" in body
    assert "Reviewer1" in body and "Reviewer2" in body
    colors = re.findall(r'class="stars" style="color: (\w+)"', body)
    assert colors == ([] if color is None else [color, color])
    served_by = body[body.index('id="served-by"'):]
    for instance in (f"productpage-{version}-1", "details-1", f"reviews-{version}-1"):
        assert f"<code>{instance}</code>" in served_by
    assert ("<code>ratings-1</code>" in served_by) == (color is not None)
    assert "unavailable" not in body


def test_end_user_and_trace_headers_reach_ratings_through_every_hop(mesh) -> None:
    request_id = f"req-{time.monotonic_ns()}"
    headers = {
        "end-user": "jason",
        "traceparent": TRACEPARENT,
        "tracestate": "vendor=1",
        "x-request-id": request_id,
        "x-b3-traceid": "4bf92f3577b34da6a3ce929d0e0e4736",
        "baggage": "tenant=demo",
        "x-not-forwarded": "nope",
    }
    page = get_json(f"{mesh['productpage-v3'].url}/productpage?format=json", headers)

    expected_trace = {k: v for k, v in headers.items() if k not in ("end-user", "x-not-forwarded")}
    for hop in (page, page["details"], page["reviews"], page["reviews"]["ratings"]):
        assert hop["end_user"] == "jason", hop["service"]
        assert hop["trace"] == expected_trace, hop["service"]
    # one log line per request, carrying the request id, on every hop
    for name in ("productpage-v3", "details", "reviews-v3", "ratings"):
        mesh[name].wait_for_line(re.escape(f"request_id={request_id}"))
        assert sum(f"request_id={request_id}" in line for line in mesh[name].lines) == 1, mesh[name].log


def test_end_user_is_absent_when_not_sent(mesh) -> None:
    page = get_json(f"{mesh['productpage-v2'].url}/productpage?format=json")

    assert "end_user" not in page["reviews"]["ratings"]
    assert "trace" not in page["reviews"]["ratings"]


def test_login_cookie_makes_productpage_send_end_user(mesh) -> None:
    base = mesh["productpage-v2"].url
    login = urllib.request.Request(f"{base}/login", data=b"username=jason", method="POST")
    with pytest.raises(urllib.error.HTTPError) as redirect:
        _OPENER_NO_REDIRECT.open(login, timeout=10)
    with redirect.value:
        assert redirect.value.code == 302
        cookie = redirect.value.headers["Set-Cookie"].split(";")[0]
    assert cookie == "user=jason"

    page = get_json(f"{base}/productpage?format=json", {"cookie": cookie})
    assert page["reviews"]["ratings"]["end_user"] == "jason"
    status, _, body = get(f"{base}/productpage", {"cookie": cookie})
    assert status == 200 and "signed in as <strong>jason</strong>" in body


def test_health_index_and_unknown_paths(mesh) -> None:
    for name in ("productpage-v1", "details", "reviews-v1", "ratings"):
        assert get(f"{mesh[name].url}/health")[::2] == (200, "ok\n")
    status, _, body = get(f"{mesh['productpage-v1'].url}/")
    assert status == 200 and 'href="/productpage"' in body
    assert get(f"{mesh['details'].url}/reviews/0")[0] == 404
    assert get(f"{mesh['details'].url}/details/abc")[0] == 400


def test_productpage_degrades_when_reviews_goes_down(mesh) -> None:
    reviews = start("--service", "reviews", "--version", "v1", "--listen", "127.0.0.1:0", "--instance", "doomed")
    page_service = start(
        "--service", "productpage", "--listen", "127.0.0.1:0",
        "--upstream", f"details={mesh['details'].url}", "--upstream", f"reviews={reviews.url}",
    )
    try:
        assert get_json(f"{page_service.url}/productpage?format=json")["reviews"]["instance"] == "doomed"
        assert reviews.stop() == 0

        page = get_json(f"{page_service.url}/productpage?format=json")
        assert page["reviews"]["error"] == "reviews unavailable"
        assert page["reviews"]["status"] is None
        assert page["reviews"]["reason"] == "connection refused"
        assert page["details"]["service"] == "details"
        status, _, body = get(f"{page_service.url}/productpage")
        assert status == 200
        assert "reviews unavailable (connection refused)" in body
        assert "William Shakespeare" in body
    finally:
        reviews.stop()
        page_service.stop()


def test_productpage_shows_upstream_status_for_non_2xx() -> None:
    """A 503 from the upstream (as Envoy answers with no healthy endpoint) shows as that status, page still 200."""
    import http.server

    class Unavailable(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = b"no healthy upstream"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    envoy_like = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Unavailable)
    threading.Thread(target=envoy_like.serve_forever, daemon=True).start()
    upstream = f"http://127.0.0.1:{envoy_like.server_address[1]}"
    page_service = start(
        "--service", "productpage", "--listen", "127.0.0.1:0",
        "--upstream", f"details={upstream}", "--upstream", f"reviews={upstream}",
    )
    try:
        page = get_json(f"{page_service.url}/productpage?format=json")
        assert page["details"]["error"] == "details unavailable" and page["details"]["status"] == 503
        assert page["reviews"]["error"] == "reviews unavailable" and page["reviews"]["status"] == 503
        assert "no healthy upstream" in page["reviews"]["reason"]
        status, _, body = get(f"{page_service.url}/productpage")
        assert status == 200
        assert "details unavailable (upstream status 503)" in body
        assert "reviews unavailable (upstream status 503)" in body
    finally:
        page_service.stop()
        envoy_like.shutdown()
        envoy_like.server_close()


def test_productpage_gives_up_on_a_hanging_upstream(mesh, blackhole) -> None:
    page_service = start(
        "--service", "productpage", "--listen", "127.0.0.1:0",
        "--upstream", f"details=http://127.0.0.1:{blackhole}", "--upstream", f"reviews={mesh['reviews-v2'].url}",
    )
    try:
        started = time.monotonic()
        page = get_json(f"{page_service.url}/productpage?format=json")
        assert time.monotonic() - started < 10, "the 3 s upstream timeout did not fire"
        assert page["details"]["error"] == "details unavailable"
        assert page["details"]["reason"].startswith("timed out")
        assert page["reviews"]["version"] == "v2"
    finally:
        page_service.stop()


def test_reviews_answers_200_when_ratings_is_down() -> None:
    reviews = start(
        "--service", "reviews", "--version", "v2", "--listen", "127.0.0.1:0",
        "--upstream", f"ratings=http://127.0.0.1:{closed_port()}",
    )
    try:
        body = get_json(f"{reviews.url}/reviews/0")
        assert body["version"] == "v2"
        assert body["ratings"]["error"] == "ratings unavailable"
        assert body["ratings"]["status"] is None
        assert [r["rating"] for r in body["reviews"]] == [{"error": "ratings unavailable"}] * 2
    finally:
        reviews.stop()


def test_sigterm_finishes_in_flight_requests_then_exits_0(blackhole) -> None:
    reviews = start(
        "--service", "reviews", "--version", "v3", "--listen", "127.0.0.1:0",
        "--upstream", f"ratings=http://127.0.0.1:{blackhole}",
    )
    result: dict[str, Any] = {}

    def slow_request() -> None:
        result["response"] = get(f"{reviews.url}/reviews/0")

    client = threading.Thread(target=slow_request)
    client.start()
    time.sleep(0.5)  # the request is now waiting on the hanging ratings upstream
    reviews.proc.send_signal(signal.SIGTERM)
    client.join(timeout=15)

    assert reviews.proc.wait(timeout=15) == 0
    status, _, body = result["response"]
    assert status == 200
    assert json.loads(body)["ratings"]["error"] == "ratings unavailable"
    assert "signal=SIGTERM" in reviews.log and "stopped service=reviews" in reviews.log
    with socket.socket() as sock:  # the listening port is released (TIME_WAIT of the served connection aside)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", reviews.port))
        sock.listen(1)


def test_sigint_also_stops_cleanly() -> None:
    ratings = start("--service", "ratings", "--listen", "127.0.0.1:0")
    ratings.proc.send_signal(signal.SIGINT)
    assert ratings.proc.wait(timeout=10) == 0
    ratings.stop()
    assert "Traceback" not in ratings.log


def test_port_in_use_exits_non_zero_with_a_clear_message() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-I", "-S", str(APP), "--service", "details", "--listen", f"127.0.0.1:{port}"],
            capture_output=True, text=True, timeout=20,
        )
    assert proc.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "args,message",
    [
        (["--service", "details", "--upstream", "inventory=http://127.0.0.1:1"], "unknown upstream 'inventory'"),
        (["--service", "productpage", "--upstream", "details=http://127.0.0.1:1"], "add --upstream reviews="),
        (["--service", "reviews", "--version", "v3"], "add --upstream ratings="),
        (["--service", "reviews", "--version", "v4"], "reviews comes in v1"),
        (["--service", "ratings", "--listen", "localhost:9083"], "is not an IP address"),
        (["--service", "ratings", "--upstream", "ratings=ftp://x:1"], "URL must be http://"),
        (["--service", "shipping"], "invalid choice"),
    ],
)
def test_bad_flags_exit_2_and_say_what_to_fix(args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, "-I", "-S", str(APP), *args], capture_output=True, text=True, timeout=20)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr


# -------------------------------------------------------------------------------------------- topology

# The placement the demo relies on: node -> (address, {service id: (name, version, app port, sidecar port,
# {upstream: local bind port})}).
TOPOLOGY: dict[str, tuple[str, dict[str, tuple[str, str, int, int, dict[str, int]]]]] = {
    "vm1": ("127.0.0.11", {
        "productpage-v1": ("productpage", "v1", 9080, 21000, {"details": 9091, "reviews": 9092}),
        "reviews-v1": ("reviews", "v1", 9082, 21001, {}),
    }),
    "vm2": ("127.0.0.12", {
        "details-v1": ("details", "v1", 9081, 21000, {}),
        "reviews-v2": ("reviews", "v2", 9082, 21001, {"ratings": 9093}),
    }),
    "vm3": ("127.0.0.13", {
        "ratings-v1": ("ratings", "v1", 9083, 21000, {}),
        "reviews-v3": ("reviews", "v3", 9082, 21001, {"ratings": 9093}),
    }),
}
_HCL_OPTIONS = hcl2.SerializationOptions(strip_string_quotes=True, with_comments=False)


def _normalize_hcl(value: Any) -> Any:
    """python-hcl2 returns each block as a one-element list flagged ``__is_block__``; make it a plain dict,
    the shape Consul's JSON format uses, so HCL and JSON files compare equal."""
    if isinstance(value, dict):
        return {k: _normalize_hcl(v) for k, v in value.items() if k != "__is_block__"}
    if isinstance(value, list):
        if value and all(isinstance(v, dict) and v.get("__is_block__") for v in value):
            assert len(value) == 1, f"block repeated: {value}"
            return _normalize_hcl(value[0])
        return [_normalize_hcl(v) for v in value]
    return value


def load_hcl(path: Path) -> dict[str, Any]:
    with path.open() as handle:
        return _normalize_hcl(hcl2.load(handle, serialization_options=_HCL_OPTIONS))


def load_dir(directory: Path, suffix: str) -> dict[str, dict[str, Any]]:
    loader = load_hcl if suffix == ".hcl" else (lambda p: json.loads(p.read_text()))
    return {p.stem: loader(p) for p in sorted(directory.glob(f"*{suffix}"))}


def test_every_hcl_and_json_file_parses() -> None:
    hcl_files = sorted((BOOKINFO / "consul.d").rglob("*.hcl"))
    json_files = sorted((BOOKINFO / "consul.d-json").rglob("*.json"))
    assert len(hcl_files) == 11 and len(json_files) == 3
    for path in hcl_files:
        assert isinstance(load_hcl(path), dict), path
    for path in json_files:
        assert isinstance(json.loads(path.read_text()), dict), path


def test_nodes_match_the_placement_table() -> None:
    nodes = {p.name for p in (BOOKINFO / "consul.d").iterdir() if p.is_dir()}
    assert nodes == {"vm1", "vm2", "vm3", "gateway"}
    expected = {name: address for name, (address, _) in TOPOLOGY.items()} | {"gateway": "127.0.0.1"}
    for name, address in expected.items():
        node = load_hcl(BOOKINFO / "consul.d" / name / "node.hcl")
        assert node == {"node_name": name, "advertise_addr": address, "datacenter": "dc1"}


@pytest.mark.parametrize("node_name", sorted(TOPOLOGY))
def test_services_match_the_placement_table(node_name: str) -> None:
    address, expected = TOPOLOGY[node_name]
    files = load_dir(BOOKINFO / "consul.d" / node_name, ".hcl")
    files.pop("node")
    services = {f["service"]["id"]: (stem, f["service"]) for stem, f in files.items()}
    assert set(services) == set(expected)

    for service_id, (name, version, port, sidecar_port, upstreams) in expected.items():
        stem, svc = services[service_id]
        assert stem == name, f"{node_name}/{stem}.hcl should be named after its service {name}"
        assert svc["name"] == name and svc["port"] == port
        assert svc["meta"] == {"version": version}
        assert version in svc["tags"]
        sidecar = svc["connect"]["sidecar_service"]
        assert sidecar["port"] == sidecar_port
        proxy = sidecar["proxy"]
        assert proxy["local_service_address"] == address
        assert {u["destination_name"]: u["local_bind_port"] for u in proxy.get("upstreams", [])} == upstreams
        assert all(u["local_bind_address"] == address for u in proxy.get("upstreams", []))
        check = svc["check"]
        assert check["http"] == f"http://{address}:{port}/health"
        assert check["interval"] == "5s" and check["id"] and check["name"]

    # nothing on one node collides: app ports, sidecar ports and upstream bind ports are all distinct
    taken = [s["port"] for _, s in services.values()]
    taken += [s["connect"]["sidecar_service"]["port"] for _, s in services.values()]
    taken += [u["local_bind_port"] for _, s in services.values()
              for u in s["connect"]["sidecar_service"]["proxy"].get("upstreams", [])]
    assert len(taken) == len(set(taken)), taken


def test_gateway_matches_the_placement_table() -> None:
    files = load_dir(BOOKINFO / "consul.d" / "gateway", ".hcl")
    assert set(files) == {"node", "ingress-gateway"}
    gateway = files["ingress-gateway"]["service"]
    assert (gateway["name"], gateway["id"], gateway["kind"], gateway["port"]) == (
        "ingress-gateway", "ingress-gateway", "ingress-gateway", 8080,
    )
    assert "connect" not in gateway
    assert gateway["proxy"]["upstreams"] == [
        {"destination_name": "productpage", "local_bind_address": "127.0.0.1", "local_bind_port": 8080}
    ]


def test_every_upstream_names_a_service_that_exists_and_ids_are_unique() -> None:
    services = [
        f["service"] for p in sorted((BOOKINFO / "consul.d").glob("*/*.hcl")) if p.stem != "node"
        for f in [load_hcl(p)]
    ]
    ids = [s["id"] for s in services]
    assert sorted(ids) == sorted(
        ["productpage-v1", "details-v1", "reviews-v1", "reviews-v2", "reviews-v3", "ratings-v1", "ingress-gateway"]
    )
    names = {s["name"] for s in services}
    for s in services:
        proxy = s["proxy"] if "proxy" in s else s["connect"]["sidecar_service"]["proxy"]
        for upstream in proxy.get("upstreams", []):
            assert upstream["destination_name"] in names, (s["id"], upstream)


def test_json_node_is_the_same_topology_as_hcl() -> None:
    as_json = load_dir(BOOKINFO / "consul.d-json" / "vm1", ".json")
    as_hcl = load_dir(BOOKINFO / "consul.d" / "vm1", ".hcl")
    assert set(as_json) == {"node", "productpage", "reviews"}
    assert as_json == as_hcl
