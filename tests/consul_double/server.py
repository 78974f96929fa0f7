"""``ConsulDouble``: a Consul HTTP API test double on loopback.

No open-source Consul binary can be installed where meshcore's tests run, so this double serves
the part of Consul's documented HTTP API that meshcore uses, with Consul's semantics: catalog,
health, the local agent (service definitions with ``Connect.SidecarService``, TTL checks),
KV with CAS, ``/v1/txn``, blocking queries with ``X-Consul-Index``, and ACL tokens.

Deliberate differences from a real Consul (documented so nobody trips on them):

* with ACLs on, a request without a token is refused with 403 ``Permission denied`` on every
  endpoint (a real Consul filters list results for the anonymous token instead);
* active checks (HTTP, TCP, gRPC, script...) are recorded but never executed: they keep their
  declared ``Status`` (``passing`` when none is declared), unless ``run_tcp_checks`` is set: then TCP
  checks are dialled at their interval as Consul does (``_active_checks.py``). TTL and alias checks behave
  as in Consul (TTL expiry turns a check critical). :meth:`ConsulDouble.set_check_status` flips any check;
* one server per datacenter (WAN-join doubles of other datacenters with :meth:`ConsulDouble.join_wan`: a
  ``?dc=`` naming one is forwarded to it, :mod:`._wan`), no ``?filter`` expressions, no prepared queries;
  sessions (``_sessions``) are invalidated ``2 x TTL`` after their last renewal (the most Consul documents it may wait).
"""

from __future__ import annotations

import logging
import threading
from types import TracebackType

from ._active_checks import TcpCheckRunner
from ._http import AclConfig, DoubleHTTPServer
from ._state import ConsulState
from ._wan import WanPeers

log = logging.getLogger("consul_double")


class ConsulDouble:
    """One Consul server + agent for node ``node``; ``start()`` returns ``http://127.0.0.1:<port>``.

    The agent endpoints act on ``node``; ``/v1/catalog/register`` can add any node.
    With ``acl_token`` set, every request needs that token (or ``read_token`` for reads).
    """

    def __init__(
        self,
        node: str = "node1",
        datacenter: str = "dc1",
        acl_token: str | None = None,
        *,
        read_token: str | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        node_address: str = "127.0.0.1",
        verbose: bool = False,
        run_tcp_checks: bool = False,
        session_ttl_min: float | None = None,
    ):
        self.node = node
        self.datacenter = datacenter
        self.acl_token = acl_token
        self.read_token = read_token
        self.host = host
        self.port = port
        self.session_ttl_min = session_ttl_min  # Consul's session_ttl_min (10s); tests may lower it
        self.state = self._new_state(node_address)
        self._acl = AclConfig(management=acl_token, read_only=read_token)
        self._verbose = verbose
        self._server: DoubleHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._tcp_checks = TcpCheckRunner(lambda: self.state) if run_tcp_checks else None  # _active_checks.py
        self.wan = WanPeers()  # other datacenters' doubles (join_wan), reached with ?dc=

    def _new_state(self, node_address: str) -> ConsulState:
        state = ConsulState(self.node, self.datacenter, node_address)
        if self.session_ttl_min is not None:
            state.session_ttl_min = self.session_ttl_min
        return state

    @property
    def address(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:8500`` (only valid once started)."""
        if self._server is None:
            raise RuntimeError("ConsulDouble is not started; call start() first")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> str:
        if self._server is not None:
            return self.address
        self._server = DoubleHTTPServer((self.host, self.port), self.state, self._acl, verbose=self._verbose,
                                        wan=self.wan)
        self._stopping.clear()
        serve = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                 name=f"consul-double-{self.node}", daemon=True)
        ticker = threading.Thread(target=self._tick, name=f"consul-double-ttl-{self.node}", daemon=True)
        self._threads = [serve, ticker]
        for t in self._threads:
            t.start()
        if self._tcp_checks is not None:
            self._tcp_checks.start()
        log.info("consul double node=%s dc=%s listening on %s acl=%s", self.node, self.datacenter, self.address,
                 "on" if self.acl_token else "off")
        return self.address

    def _tick(self) -> None:
        while not self._stopping.wait(0.1):
            self.state.expire_ttls()
            self.state.expire_sessions()

    def stop(self) -> None:
        if self._server is None:
            return
        self.host, self.port = self._server.server_address[:2]  # a later start() comes back on this address
        self._stopping.set()
        if self._tcp_checks is not None:
            self._tcp_checks.stop()
        self._server.shutdown()  # accepts no more connections
        self._server.close_connections()  # as a stopped Consul: blocked queries get no answer, keep-alives end
        self.state.close()  # wakes blocked queries so their threads finish
        self._server.server_close()
        for t in self._threads:
            t.join(timeout=5)
        self._server = None
        self.state.closed = False  # a restarted double serves the same data again

    def __enter__(self) -> "ConsulDouble":
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    # ------------------------------------------------------------------ test hooks
    def restart(self, *, empty: bool = False) -> str:
        """Stop and start again on the same address; ``empty`` wipes every piece of state first (a Consul
        server restarted on a lost data directory: catalog, agent registrations and KV gone, the raft index
        back at the start). Clients see their connections refused while it is down, then a fresh Consul."""
        self.stop()  # remembers the address
        if empty:
            self.state = self._new_state(self.state.node_address)
        return self.start()

    def join_wan(self, other: "ConsulDouble") -> None:
        """WAN-federate with ``other`` (both started, different datacenters): each forwards ``?dc=`` of the
        other's datacenter to it and lists it in ``/v1/catalog/datacenters``, as joined Consul servers do."""
        if other.datacenter == self.datacenter:
            raise ValueError(f"both doubles serve datacenter {self.datacenter!r}: WAN peers need distinct names")
        self.wan.add(other.datacenter, other.address)
        other.wan.add(self.datacenter, self.address)

    def reset_index(self, to: int = 1) -> int:
        """Make the raft index go backwards (as after a snapshot restore); returns the new index."""
        return self.state.reset_index(to)

    def set_check_status(self, check_id: str, status: str, output: str = "", node: str | None = None) -> None:
        """Set any check's status (the double never runs HTTP/TCP checks itself)."""
        self.state.set_check_status(check_id, status, output, node)

    @property
    def index(self) -> int:
        """The current raft index."""
        return self.state.index
