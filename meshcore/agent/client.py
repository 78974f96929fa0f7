"""HTTPS client for the control plane's agent API (``/v1/agent/...``; bodies in :mod:`meshcore.api.agent`).

The server is verified against the trust bundle given with ``--ca-file`` (host name or IP
checked). Every call except :meth:`AgentClient.join` and :meth:`AgentClient.recover` presents the node
certificate. Network
failures raise :class:`ControlPlaneUnavailable` (retry later); a non-2xx answer raises
:class:`AgentRequestError` carrying the server's ``{"error": ...}`` reason verbatim.

Connections are kept alive between calls of one client (a TLS handshake costs the control plane
more than signing a certificate), for at most :data:`KEEPALIVE_IDLE` seconds of idleness. The TLS
context is rebuilt, and the connection replaced, when the bundle, certificate or key file changes
on disk, so a renewed certificate is used at once. :meth:`AgentClient.close` (or ``with``) ends
the connection; a dropped client's socket closes with it.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlencode, urlsplit

from meshcore.api.agent import (
    BUNDLE,
    BUNDLE_HEADER,
    FEDERATED_HEADER,
    JOIN,
    RECOVER,
    RENEW_NODE,
    SERVICES,
    SIGN,
    CsrRequest,
    IssuedIdentity,
    JoinRequest,
    NodeService,
    NodeServices,
    RecoverRequest,
    TrustBundle,
)
from meshcore.errors import AgentError, AgentRequestError, ControlPlaneUnavailable

if TYPE_CHECKING:
    from meshcore.agent.replicas import Replica, ReplicaSet

log = logging.getLogger(__name__)
_T = TypeVar("_T")

DEFAULT_TIMEOUT = 10.0
# Opening a connection (TCP and the TLS handshake) may take this long, whatever the request's own timeout
# (a blocking query's is over a minute): a replica whose host is gone fails over in seconds.
CONNECT_TIMEOUT = 5.0
KEEPALIVE_IDLE = 30.0  # seconds a kept-alive connection may sit unused before the next call opens a new one




class AgentClient:
    """Client of one control plane. Cheap to create; keeps one connection alive between calls
    (per kind: with and without the node certificate). Thread-safe: concurrent calls use separate
    connections; :meth:`close` it when done."""

    def __init__(
        self,
        base_url: str,
        ca_file: Path,
        *,
        cert_file: Path | None = None,
        key_file: Path | None = None,
        extra_ca_files: tuple[Path, ...] = (),
        timeout: float = DEFAULT_TIMEOUT,
        bundle_sha256: str = "",
    ):
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise AgentError(f"control plane URL {base_url!r} must be https://host:port")
        self.base_url = base_url.rstrip("/")
        self._host = parts.hostname
        self._port = parts.port or 443
        self._prefix = parts.path.rstrip("/")
        self.ca_file = Path(ca_file)
        self.cert_file = cert_file
        self.key_file = key_file
        self.extra_ca_files = extra_ca_files
        self.timeout = timeout
        self.bundle_sha256 = bundle_sha256  # reported on every call: the bundle this node has given Envoy
        self.federated_digest = ""  # and the federated domains' roots it has given Envoy (FEDERATED_HEADER)
        self._lock = threading.Lock()
        self._conns: dict[bool, _Conn] = {}  # authenticated? -> the kept-alive connection

    # -- API -------------------------------------------------------------------------------

    def join(self, node: str, token: str, csr_pem: str) -> IssuedIdentity:
        data = self._request("POST", JOIN, JoinRequest(node=node, token=token, csr=csr_pem).to_json(),
                             authenticated=False)
        return IssuedIdentity.from_json(data, "join")

    def recover(self, request: RecoverRequest) -> IssuedIdentity:
        """Get a new node certificate with a proof made with the expired one's key (no client certificate:
        an expired one does not pass TLS; see :mod:`meshcore.ca.recovery`)."""
        return IssuedIdentity.from_json(self._request("POST", RECOVER, request.to_json(), authenticated=False),
                                        "recover")

    def renew_node(self, csr_pem: str) -> IssuedIdentity:
        return IssuedIdentity.from_json(self._request("POST", RENEW_NODE, CsrRequest(csr_pem).to_json()), "renew-node")

    def services(self, index: str = "", wait: float = 0.0) -> NodeServices:
        """What runs on this node. With ``index`` (a previous answer's) and ``wait`` seconds, a blocking
        query: the control plane answers when its index moves, or after ``wait`` (an older one at once)."""
        if not index or wait <= 0:
            return NodeServices.from_json(self._request("GET", SERVICES), "services")
        query = urlencode({"index": index, "wait": f"{wait:g}s"})
        # The server may hold it up to wait + 1/16 jitter: the socket waits that long, plus the usual timeout.
        data = self._request("GET", f"{SERVICES}?{query}", timeout=wait * 17 / 16 + self.timeout)
        return NodeServices.from_json(data, "services")

    def sign(self, csr_pem: str) -> IssuedIdentity:
        return IssuedIdentity.from_json(self._request("POST", SIGN, CsrRequest(csr_pem).to_json()), "sign")

    def bundle(self) -> TrustBundle:
        return TrustBundle.from_json(self._request("GET", BUNDLE), "bundle")

    def close(self) -> None:
        """Close the kept-alive connections (the client stays usable: the next call opens one)."""
        with self._lock:
            for conn in self._conns.values():
                conn.close()
            self._conns.clear()

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -------------------------------------------------------------------------

    def _files(self, authenticated: bool) -> tuple[Path, ...]:
        files = [self.ca_file, *self.extra_ca_files]
        if authenticated and self.cert_file is not None and self.key_file is not None:
            files += [self.cert_file, self.key_file]
        return tuple(files)

    def _stamp(self, authenticated: bool) -> tuple:
        """What the TLS context was made from: a change of any file means a new context."""
        out: list[tuple] = []
        for f in self._files(authenticated):
            try:
                st = os.stat(f)
                out.append((str(f), st.st_ino, st.st_mtime_ns, st.st_size))
            except OSError:
                out.append((str(f), None))
        return tuple(out)

    def _context(self, authenticated: bool) -> ssl.SSLContext:
        """The TLS context for these files, rebuilt only when one of them changed (building one costs
        about 2 ms of CPU: an idle agent polling every few seconds paid that twice per poll)."""
        key = (authenticated, self._stamp(authenticated))
        cached = _CONTEXTS.get(key)
        if cached is None:
            cached = self._new_context(authenticated)
            # Keep only the newest context per kind: older ones were made from files that changed since.
            for stale in [k for k in _CONTEXTS if k[0] == authenticated]:
                del _CONTEXTS[stale]
            _CONTEXTS[key] = cached
        return cached

    def _new_context(self, authenticated: bool) -> ssl.SSLContext:
        # Only the mesh bundle (--ca-file and the held bundle) verifies the control plane: not the
        # system store, which create_default_context() would also load (and parse, per request).
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies the chain and the host name
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            context.load_verify_locations(cafile=str(self.ca_file))
            for extra in self.extra_ca_files:
                if extra.is_file():
                    context.load_verify_locations(cafile=str(extra))
        except (OSError, ssl.SSLError) as exc:
            raise AgentError(f"cannot load the trust bundle {self.ca_file}: {exc}; check --ca-file") from exc
        if authenticated:
            if self.cert_file is None or self.key_file is None:
                raise AgentError("this request needs the node certificate, but the agent has not joined yet")
            try:
                context.load_cert_chain(str(self.cert_file), str(self.key_file))
            except (OSError, ssl.SSLError) as exc:
                raise AgentError(
                    f"cannot load the node certificate {self.cert_file} / key {self.key_file}: {exc}"
                ) from exc
        return context

    def _connection(self, authenticated: bool) -> tuple[_Conn, bool]:
        """A connection for this kind of call and whether it was used before (kept alive)."""
        if authenticated and (self.cert_file is None or self.key_file is None):
            raise AgentError("this request needs the node certificate, but the agent has not joined yet")
        stamp = self._stamp(authenticated)
        with self._lock:
            conn = self._conns.pop(authenticated, None)
        now = time.monotonic()
        if conn is not None and conn.stamp == stamp and now - conn.last_used < KEEPALIVE_IDLE:
            return conn, True
        if conn is not None:
            conn.close()
        context = self._context(authenticated)
        return _Conn(_OneWriteHTTPS(self._host, self._port, context=context, timeout=self.timeout), stamp), False

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 authenticated: bool = True, timeout: float | None = None) -> dict[str, Any]:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json", "User-Agent": "meshcore-agent"}
        if payload is not None:
            headers["Content-Type"] = "application/json"
        if self.bundle_sha256:
            headers[BUNDLE_HEADER] = self.bundle_sha256
        if self.federated_digest:
            headers[FEDERATED_HEADER] = self.federated_digest
        target = f"{self.base_url}{path}"
        conn, reused = self._connection(authenticated)
        try:
            try:
                status, raw, keep = conn.exchange(method, self._prefix + path, payload, headers, timeout)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                if not reused:
                    raise
                # The server closed the kept-alive connection before reading this request (idle
                # timeout, restart): nothing was processed, so sending it again on a new one is safe.
                conn.close()
                conn, reused = self._connection(authenticated)
                status, raw, keep = conn.exchange(method, self._prefix + path, payload, headers, timeout)
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise ControlPlaneUnavailable(
                f"{method} {target}: the control plane's certificate did not verify ({exc.verify_message}); "
                f"check that --ca-file holds the mesh trust bundle and that {self._host} is in the server certificate"
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ControlPlaneUnavailable(f"{method} {target}: {exc.__class__.__name__}: {exc}") from exc
        if keep:
            with self._lock:
                old = self._conns.pop(authenticated, None)
                self._conns[authenticated] = conn
            if old is not None:
                old.close()
        else:
            conn.close()
        data = _decode(raw)
        if not 200 <= status < 300:
            reason = ""
            if isinstance(data, dict) and isinstance(data.get("error"), str):
                reason = data["error"]
            if not reason:
                reason = f"HTTP {status}: " + raw[:200].decode(errors="replace").strip()
            raise AgentRequestError(method, path, status, reason)
        if not isinstance(data, dict):
            raise AgentError(f"{method} {target}: expected a JSON object, got {raw[:200]!r}")
        return data


class FailoverClient:
    """The agent API of a set of replicas (:class:`~meshcore.agent.replicas.ReplicaSet`): the same calls as
    :class:`AgentClient`, each sent to the first replica in the set's order; when a replica is unreachable
    or answers a retryable error (5xx, 429), it is marked down and the call moves on to the next one at
    once. A refusal (other 4xx) is the mesh's answer, the same on every replica: raised as is. When every
    replica failed, :class:`ControlPlaneUnavailable` names each one's error (the caller backs off).

    ``client_factory(url, ca_file, **kwargs)`` makes the client of one replica (kept between the calls of
    this object, so a poll and the bundle fetch share one connection)."""

    def __init__(self, replicas: ReplicaSet, ca_file: Path, *, client_factory: Callable[..., AgentClient] | None = None,
                 bundle_sha256: str = "", **kwargs: Any):
        self.replicas = replicas
        self.ca_file = ca_file
        self._factory = client_factory or AgentClient
        self._kwargs = kwargs
        self.bundle_sha256 = bundle_sha256
        self.federated_digest = ""
        self._clients: dict[str, AgentClient] = {}
        self.last_replica: Replica | None = None  # the one that answered the last call

    def join(self, node: str, token: str, csr_pem: str) -> IssuedIdentity:
        return self._call(lambda c: c.join(node, token, csr_pem), "join", learn=lambda r: r.xds_address)

    def recover(self, request: RecoverRequest) -> IssuedIdentity:
        return self._call(lambda c: c.recover(request), "recover", learn=lambda r: r.xds_address)

    def renew_node(self, csr_pem: str) -> IssuedIdentity:
        return self._call(lambda c: c.renew_node(csr_pem), "renew-node")

    def services(self, index: str = "", wait: float = 0.0) -> NodeServices:
        return self._call(lambda c: c.services(index, wait), "services", learn=lambda r: r.xds_address)

    def sign(self, csr_pem: str) -> IssuedIdentity:
        return self._call(lambda c: c.sign(csr_pem), "sign")

    def bundle(self) -> TrustBundle:
        return self._call(lambda c: c.bundle(), "bundle")

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()

    def __enter__(self) -> FailoverClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _client(self, replica: Replica) -> AgentClient:
        client = self._clients.get(replica.url)
        if client is None:
            client = self._clients[replica.url] = self._factory(replica.url, self.ca_file, **self._kwargs)
        client.bundle_sha256 = self.bundle_sha256
        client.federated_digest = self.federated_digest
        return client

    def _call(self, call: Callable[[AgentClient], _T], what: str,
              learn: Callable[[Any], str] | None = None) -> _T:
        # The same order for every call while nothing fails (a poll's bundle fetch follows it on its
        # connection); the preferred replica again once its down mark expired (load spreads back).
        order = self.replicas.order()
        if not order:
            why = f": {self.replicas.consul_error}" if self.replicas.consul_error else ""
            raise ControlPlaneUnavailable(f"{what}: no control plane replica is known (Consul service "
                                          f"{self.replicas.consul_service!r} has no passing instance{why})")
        errors: list[str] = []
        for replica in order:
            try:
                answer = call(self._client(replica))
            except ControlPlaneUnavailable as exc:
                error = str(exc)
            except AgentRequestError as exc:
                if not exc.retryable:
                    self.replicas.succeeded(replica)  # it answered: the refusal is the mesh's
                    raise
                error = f"{replica.url}: {exc}"
            else:
                self.replicas.succeeded(replica)
                self.last_replica = replica
                if learn is not None:
                    self.replicas.learned_xds(replica, learn(answer))
                return answer
            self._clients.pop(replica.url).close()
            self.replicas.failed(replica, error)
            errors.append(error)
        raise ControlPlaneUnavailable(f"{what}: every control plane replica failed ({len(errors)}): "
                                      + "; ".join(errors))


class _OneWriteHTTPS(http.client.HTTPSConnection):
    """Sends a request's line, headers and (bytes) body in one write: one TLS record and one segment the control
    plane reads once, where ``http.client`` writes the body separately (a second record, read and decrypted
    apart, a second wake-up of the server's thread)."""

    def _send_output(self, message_body=None, encode_chunked=False):  # type: ignore[no-untyped-def]
        if not isinstance(message_body, bytes) or encode_chunked:
            return super()._send_output(message_body, encode_chunked)
        self._buffer.extend((b"", b""))  # type: ignore[attr-defined]
        head = b"\r\n".join(self._buffer)  # type: ignore[attr-defined]
        del self._buffer[:]  # type: ignore[attr-defined]
        self.send(head + message_body)


class _Conn:
    """One HTTPS connection with what its TLS context was made from and when it was last used."""

    def __init__(self, http_conn: http.client.HTTPSConnection, stamp: tuple):
        self.http = http_conn
        self.stamp = stamp
        self.last_used = time.monotonic()
        self.base_timeout = http_conn.timeout

    def exchange(self, method: str, path: str, payload: bytes | None, headers: dict[str, str],
                 timeout: float | None = None) -> tuple[int, bytes, bool]:
        """Send one request, read the whole answer; (status, body, connection reusable). ``timeout``:
        this request's socket timeout (a blocking query's is longer than the client's usual one)."""
        wanted = self.base_timeout if timeout is None else timeout
        if self.http.sock is None:  # a new connection: opened here, under CONNECT_TIMEOUT
            self.http.timeout = min(CONNECT_TIMEOUT, wanted) if wanted else CONNECT_TIMEOUT
            self.http.connect()
        self.http.timeout = wanted
        if self.http.sock is not None:
            self.http.sock.settimeout(wanted)
        self.http.request(method, path, body=payload, headers=headers)
        response = self.http.getresponse()
        raw = response.read()
        self.last_used = time.monotonic()
        return response.status, raw, not response.will_close

    def close(self) -> None:
        self.http.close()


_CONTEXTS: dict[tuple, ssl.SSLContext] = {}


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


__all__ = ["AgentClient", "AgentRequestError", "FailoverClient", "IssuedIdentity", "NodeService", "NodeServices",
           "TrustBundle"]
