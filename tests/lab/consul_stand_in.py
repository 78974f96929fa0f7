"""The lab's Consul stand-in: one Consul test double that is the *local agent* of every lab host.

In a real site each VM runs a Consul client agent; ``PUT /v1/agent/service/register`` on it puts the
service on that VM's node, and the servers hold one catalog. ``tests.consul_double`` is one agent
(one node), so a single double would put every VM's services on the control plane's node. This
stand-in serves one shared catalog on one address and picks the *agent* by the caller's source
address: a request from 10.213.0.12 (``--agent vm1=10.213.0.12``) acts on node ``vm1`` with that
address, anything else on ``--node``. Every other endpoint (catalog, health, KV, blocking queries)
is the double's own.

    python -m tests.lab.consul_stand_in --bind 10.213.0.11:8500 --node cp --node-address 10.213.0.11 \\
        --agent vm1=10.213.0.12 --agent vm2=10.213.0.13 [--datacenter dc1 --wan dc2=http://10.213.2.13:8500]

With ``--wan DC=URL`` it is WAN-joined to the stand-in of another datacenter, as Consul servers are: a request with
``?dc=DC`` is relayed there (``tests.consul_double._wan``), and ``/v1/catalog/datacenters`` lists both. That is how
the two-datacenter lab gives each datacenter its own Consul and each control plane ``--catalog consul:dc1,dc2``.

It adds one agent endpoint the double lacks, node maintenance (``PUT /v1/agent/maintenance?enable=
true|false&reason=...``, what ``consul maint`` calls): as in Consul, a critical ``_node_maintenance``
check on the caller's node takes every instance on it out of the healthy set; ``upgrade.yml`` drains
a VM with it before restarting its Envoy.

``--config FILE`` (JSON ``{"agents": {NODE: ADDRESS}, "wan": {DATACENTER: URL}}``, added to the flags) is read again
on SIGHUP, as ``consul reload`` re-reads an agent's configuration: new agents and WAN peers take effect without a
restart, which would lose the catalog and KV (the stand-in keeps them in memory, the control planes' shared state
included). An agent that leaves the file keeps its node; a WAN peer that leaves it is no longer relayed to.

Limits beyond the double's own: TTL checks expire only for the default agent's checks.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from urllib.parse import parse_qs, urlsplit

from tests.consul_double._http import AclConfig, DoubleHTTPServer, _Handler
from tests.consul_double._state import ConsulState
from tests.consul_double._wan import WanPeers

log = logging.getLogger("consul_stand_in")


class _Agent:
    """What one local agent owns: its node name, its address, its services and checks."""

    def __init__(self, node: str, address: str):
        self.node = node
        self.address = address
        self.services: dict[str, Any] = {}
        self.checks: dict[str, Any] = {}


class MultiAgentState(ConsulState):
    """A :class:`ConsulState` whose agent-local fields belong to the agent of the current request."""

    def __init__(self, node: str, datacenter: str, node_address: str, agents: dict[str, str]):
        self._current = threading.local()
        self._default = _Agent(node, node_address)
        self._agents = {name: _Agent(name, addr) for name, addr in agents.items()}
        super().__init__(node, datacenter, node_address)

    def _agent(self) -> _Agent:
        return getattr(self._current, "agent", None) or self._default

    def add_agent(self, node: str, address: str) -> None:
        """A host that joins later (``--config`` re-read); one already known keeps its services and checks."""
        if node not in self._agents:
            self._agents[node] = _Agent(node, address)
        else:
            self._agents[node].address = address

    def act_as(self, node: str | None) -> None:
        """Make the calling thread's requests act on ``node``'s agent (None: the default agent)."""
        self._current.agent = self._agents.get(node) if node else None

    # ConsulState reads and assigns these; each resolves to the current request's agent.
    node = property(lambda self: self._agent().node, lambda self, v: setattr(self._default, "node", v))
    node_address = property(lambda self: self._agent().address,
                            lambda self, v: setattr(self._default, "address", v))
    agent_services = property(lambda self: self._agent().services,
                              lambda self, v: setattr(self._agent(), "services", v))
    agent_checks = property(lambda self: self._agent().checks,
                            lambda self, v: setattr(self._agent(), "checks", v))


MAINTENANCE_CHECK = "_node_maintenance"


class _StandInHandler(_Handler):
    """The double's handler plus ``PUT /v1/agent/maintenance`` for the calling agent's node."""

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        if method != "PUT" or url.path != "/v1/agent/maintenance":
            super()._dispatch(method)
            return
        query = parse_qs(url.query)
        enable = (query.get("enable") or [""])[0].lower()
        state: MultiAgentState = self.server.state  # type: ignore[assignment]
        if enable not in ("true", "false"):
            self._plain(400, "Missing value for enable")
            return
        agent = state._agent()
        if enable == "true":
            state.catalog_register({"Node": agent.node, "Address": agent.address, "Check": {
                "CheckID": MAINTENANCE_CHECK, "Name": "Node Maintenance Mode", "Status": "critical",
                "Notes": (query.get("reason") or ["Maintenance mode is enabled for this node"])[0]}})
        elif (agent.node, MAINTENANCE_CHECK) in state.checks:
            state.catalog_deregister({"Node": agent.node, "CheckID": MAINTENANCE_CHECK})
        log.info("node maintenance node=%s enable=%s", agent.node, enable)
        self._plain(200, "")

    def _plain(self, status: int, text: str) -> None:
        data = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ByPeerServer(DoubleHTTPServer):
    """The double's HTTP server, choosing the agent by the client's source address."""

    def __init__(self, address: tuple[str, int], state: MultiAgentState, acl: AclConfig, peers: dict[str, str],
                 wan: WanPeers | None = None):
        super().__init__(address, state, acl, wan=wan)
        self.RequestHandlerClass = _StandInHandler
        self.peers = peers  # source address -> node

    def finish_request(self, request, client_address) -> None:  # runs in the request's own thread
        state: MultiAgentState = self.state  # type: ignore[assignment]
        state.act_as(self.peers.get(client_address[0]))
        try:
            super().finish_request(request, client_address)
        finally:
            state.act_as(None)


def _agent_arg(text: str) -> tuple[str, str]:
    node, sep, addr = text.partition("=")
    if not sep or not node or not addr:
        raise argparse.ArgumentTypeError(f"--agent wants NODE=ADDRESS (e.g. vm1=10.213.0.12), got {text!r}")
    return node, addr


def _wan_arg(text: str) -> tuple[str, str]:
    dc, sep, url = text.partition("=")
    if not sep or not dc or not url.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"--wan wants DATACENTER=URL (e.g. dc2=http://10.213.2.13:8500), got {text!r}")
    return dc, url


def read_config(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """``--config FILE``: (agents NODE -> ADDRESS, wan DATACENTER -> URL); raises ValueError saying what is wrong."""
    import json

    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or set(data) - {"agents", "wan"}:
        raise ValueError(f'{path}: want an object with "agents" and "wan", got {str(data)[:200]}')
    agents, wan = data.get("agents") or {}, data.get("wan") or {}
    for key, table, check in (("agents", agents, _agent_arg), ("wan", wan, _wan_arg)):
        if not isinstance(table, dict):
            raise ValueError(f'{path}: "{key}" must be an object, got {table!r}')
        for name, value in table.items():
            try:
                check(f"{name}={value}")
            except argparse.ArgumentTypeError as exc:
                raise ValueError(f'{path}: "{key}": {exc}') from exc
    return dict(agents), dict(wan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.lab.consul_stand_in", description=__doc__.split("\n")[0])
    parser.add_argument("--bind", default="127.0.0.1:8500", help="HOST:PORT to listen on")
    parser.add_argument("--node", default="node1", help="node of requests from unknown addresses")
    parser.add_argument("--node-address", default="127.0.0.1")
    parser.add_argument("--datacenter", default="dc1")
    parser.add_argument("--agent", type=_agent_arg, action="append", default=[], metavar="NODE=ADDRESS",
                        help="a host whose requests act on its own node (repeatable)")
    parser.add_argument("--wan", type=_wan_arg, action="append", default=[], metavar="DATACENTER=URL",
                        help="the stand-in of another datacenter: ?dc=DATACENTER is relayed there (repeatable)")
    parser.add_argument("--config", metavar="FILE",
                        help='JSON {"agents": {NODE: ADDRESS}, "wan": {DATACENTER: URL}}, read again on SIGHUP')
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    host, _, port = args.bind.rpartition(":")

    def configured() -> tuple[dict[str, str], dict[str, str]]:
        agents, wan_peers = dict(args.agent), dict(args.wan)
        if args.config:
            more_agents, more_wan = read_config(args.config)
            agents.update(more_agents)
            wan_peers.update(more_wan)
        if args.datacenter in wan_peers:
            raise ValueError(f"wan {args.datacenter}=...: that is this stand-in's own datacenter")
        return agents, wan_peers

    try:
        agents, wan_peers = configured()
    except ValueError as exc:
        parser.error(str(exc))
    state = MultiAgentState(args.node, args.datacenter, args.node_address, agents)
    wan = WanPeers()
    for dc, url in wan_peers.items():
        wan.add(dc, url)
    try:
        server = ByPeerServer((host.strip("[]"), int(port)), state, AclConfig(),
                              {addr: node for node, addr in agents.items()}, wan)
    except OSError as exc:
        print(f"consul stand-in: cannot listen on {args.bind}: {exc}", file=sys.stderr)
        return 1
    done, reload = threading.Event(), threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: done.set())
    signal.signal(signal.SIGHUP, lambda *_: reload.set())
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    print(f"consul stand-in listening on http://{args.bind} datacenter={args.datacenter} node={args.node} "
          f"agents={agents} wan={wan.peers}", flush=True)
    while not done.wait(0.1):
        state.expire_ttls()
        if reload.is_set():
            reload.clear()
            try:
                agents, wan_peers = configured()
            except ValueError as exc:  # keep running on the configuration it has, as consul reload does
                log.error("reload refused, the configuration in use is kept: %s", exc)
                continue
            for node, addr in agents.items():
                state.add_agent(node, addr)
            server.peers = {**server.peers, **{addr: node for node, addr in agents.items()}}
            wan.peers = {}
            for dc, url in wan_peers.items():
                wan.add(dc, url)
            log.info("configuration reloaded agents=%s wan=%s", agents, wan.peers)
    state.close()
    server.shutdown()
    server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
