"""``meshctl render --out DIR``: per-VM files for air-gapped sites, where Ansible pushes instead of agents pulling.

The rendering itself is pure (:mod:`meshcore.deploy.render`); this module gathers the inputs (catalog,
trust bundle, control plane addresses) and writes ``DIR/<node>/``. Files are replaced atomically and
only when their bytes change, so timestamps (and Ansible's "changed") move only with real changes.
Files a previous render listed in a node's ``MANIFEST.json`` and this one no longer produces (a
removed service) are deleted; so are whole node directories of earlier renders when the node left
the catalog (only when rendering every node). Nothing else in ``DIR`` is touched.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from .. import naming
from ..catalog.model import Catalog
from ..deploy import render as rd
from ..deploy.sources import CATALOG_HELP, catalog_spec, load_catalog
from ..errors import ConfigError, ControlPlaneUnavailable, MeshError
from ._run import dispatch
from ._commands import HELP
from ._types import MeshctlParser, host_port, http_url, node_host_port, number, trust_domain

DIR_MODE = 0o755
FILE_MODE = 0o644

DESCRIPTION = ("Render, for every VM in the catalog (or the ones named with --node), the files its agent and "
               "Envoy need: DIR/<node>/bootstrap.json, agent.yaml, services/*.json, bundle.pem and MANIFEST.json "
               "(sha256 of each file, where it goes on the VM). For air-gapped sites where Ansible pushes files. "
               "Never writes a private key.")
EPILOG = ("The trust bundle, xDS address, agent API URL and trust domain come from the control plane "
          "(--server, GET /v1/trust-bundle and /v1/status) unless given with --ca-file, --xds-address, "
          "--control-plane and --trust-domain; with all of them given no network call is made. "
          "Same inputs give byte-identical files.")


def _progress(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


# --- inputs ----------------------------------------------------------------------------------

def _admin_overrides(values: list[str] | None) -> tuple[str | None, dict[str, str]]:
    """``--admin HOST:PORT`` (default for all) and ``--admin NODE=HOST:PORT`` (one node)."""
    default, per_node = None, {}
    for value in values or []:
        node, sep, address = value.partition("=")
        if sep:
            if not node or not address:
                raise ConfigError(f"--admin {value!r}: expected NODE=HOST:PORT or HOST:PORT")
            per_node[node] = address
        else:
            default = value
    return default, per_node


def _read_bundle(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"--ca-file {path}: cannot read: {exc.strerror or exc}") from exc


def _from_control_plane(args) -> dict[str, str]:
    """Ask the control plane for what the flags did not give; {} when nothing is needed."""
    need_bundle = not args.ca_file
    need_status = not (args.xds_address and args.control_plane)
    if not (need_bundle or need_status):
        return {}
    from ._client import Client, discover_server

    server = discover_server(args.server)
    client = Client(server, timeout=args.timeout)
    missing = ", ".join(flag for flag, given in (("--ca-file", args.ca_file), ("--xds-address", args.xds_address),
                                                ("--control-plane", args.control_plane)) if not given)
    try:
        found: dict[str, str] = {}
        if need_bundle:
            tb = client.trust_bundle()
            found.update(bundle=tb.bundle, trust_domain=tb.trust_domain)
        if need_status:
            cp = client.status().control_plane
            found.update(xds=cp.xds, api=cp.api, trust_domain=cp.trust_domain)
    except ControlPlaneUnavailable as exc:
        raise ControlPlaneUnavailable(
            f"{exc}. For an offline render pass {missing} (the bundle is <state-dir>/ca/bundle.pem on the "
            "control plane host)") from exc
    except (KeyError, TypeError) as exc:
        raise MeshError(f"the control plane at {server} answered without {exc}; is it a meshcore control plane?") from exc
    _progress(f"control plane {server}: trust domain {found.get('trust_domain')}")
    return found


def build_settings(args, source: str, remote: dict[str, str]) -> tuple[rd.RenderSettings, str]:
    """RenderSettings and the bundle PEM from flags, falling back to what the control plane said."""
    trust_domain = args.trust_domain or remote.get("trust_domain") or naming.DEFAULT_TRUST_DOMAIN
    if args.trust_domain and remote.get("trust_domain") and args.trust_domain != remote["trust_domain"]:
        raise ConfigError(f"--trust-domain {args.trust_domain} differs from the control plane's "
                          f"{remote['trust_domain']}; drop the flag or point --server at the right control plane")
    bundle = _read_bundle(args.ca_file) if args.ca_file else remote["bundle"]
    default_admin, per_node = _admin_overrides(args.admin)
    settings = rd.RenderSettings(
        control_plane=(args.control_plane or remote.get("api", "")).rstrip("/"),
        xds_address=args.xds_address or remote.get("xds", ""),
        trust_domain=trust_domain,
        state_dir=args.vm_state_dir,
        ca_file=args.vm_ca_file,
        config_path=args.vm_config,
        admin=default_admin or rd.DEFAULT_ADMIN,
        admin_by_node=per_node,
        consul_services_dir=args.consul_services_dir,
        join_token_file=args.join_token_file,
        catalog_source=source,
    )
    settings.validate()
    where = f"--ca-file {args.ca_file}" if args.ca_file else "the control plane's trust bundle"
    return settings, rd.check_bundle(bundle, where)


# --- writing ---------------------------------------------------------------------------------

def _previous_files(node_dir: Path) -> list[str] | None:
    """Paths a previous render listed in ``node_dir/MANIFEST.json``; None if there is no render of ours."""
    try:
        manifest = json.loads((node_dir / rd.MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("generator") != rd.GENERATOR:
        return None
    out = []
    for entry in manifest.get("files") or []:
        path = str(entry.get("path", "")) if isinstance(entry, dict) else ""
        pure = PurePosixPath(path)
        if path and not pure.is_absolute() and ".." not in pure.parts:
            out.append(path)
    return out


def _remove(node_dir: Path, paths: list[str]) -> list[str]:
    removed = []
    for rel in sorted(paths):
        target = node_dir / rel
        try:
            target.unlink()
            removed.append(rel)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise MeshError(f"cannot remove stale file {target}: {exc.strerror}") from exc
    return removed


def write_node(node_dir: Path, files: dict[str, bytes]) -> dict[str, Any]:
    """Write one node's files (MANIFEST last); delete files only the previous manifest listed."""
    from .._files import write_if_changed

    previous = _previous_files(node_dir) or []
    written = []
    try:
        for sub in sorted({node_dir, node_dir / rd.SERVICES_DIR, *((node_dir / p).parent for p in files)}):
            sub.mkdir(parents=True, exist_ok=True)
            os.chmod(sub, DIR_MODE)
        for rel in sorted(files, key=lambda p: p == rd.MANIFEST):  # MANIFEST.json last
            if write_if_changed(node_dir / rel, files[rel], FILE_MODE):
                written.append(rel)
    except OSError as exc:
        raise MeshError(f"cannot write {node_dir}: {exc}; check --out and its permissions") from exc
    removed = _remove(node_dir, [p for p in previous if p not in files])
    return {"files": sorted(files), "written": sorted(written), "removed": removed}


def _stale_node_dirs(out: Path, keep: set[str]) -> list[Path]:
    if not out.is_dir():
        return []
    return [d for d in sorted(out.iterdir())
            if d.is_dir() and d.name not in keep and _previous_files(d) is not None]


def _remove_node_dir(node_dir: Path) -> None:
    previous = _previous_files(node_dir) or []
    _remove(node_dir, previous + [rd.MANIFEST])
    for sub in sorted((p for p in node_dir.rglob("*") if p.is_dir()), reverse=True) + [node_dir]:
        try:
            sub.rmdir()  # only when empty: an operator's own files stay
        except OSError:
            pass


def run_render(args) -> dict[str, Any]:
    """Everything ``meshctl render`` does; returns the summary it prints."""
    spec = catalog_spec(args.catalog)
    loaded = load_catalog(spec)
    catalog: Catalog = loaded.catalog
    nodes = rd.select_nodes(catalog, args.node)
    if not nodes:
        raise MeshError(f"the catalog ({loaded.source}) has no node with mesh services; nothing to render")
    bad = [n for n in nodes if "/" in n or n in (".", "..")]
    if bad:
        raise MeshError(f"node name(s) {', '.join(map(repr, bad))} cannot be directory names; "
                        "render the other nodes with --node")
    _progress(f"catalog {loaded.source}: {len(nodes)} node(s) to render")
    settings, bundle = build_settings(args, loaded.source, _from_control_plane(args))

    out = Path(args.out)
    summary: dict[str, Any] = {"out": str(out), "nodes": [], "removed_nodes": []}
    for node in nodes:
        files = rd.render_node(catalog, node, settings, bundle, definition=loaded.definitions.get(node))
        result = write_node(out / node, files)
        summary["nodes"].append({"node": node, "dir": str(out / node), **result})
        changes = f"{len(result['written'])} written" + (f", {len(result['removed'])} removed" if result["removed"] else "")
        _progress(f"{node}: {len(result['files'])} files ({changes if result['written'] or result['removed'] else 'unchanged'})")
    if not args.node:
        for stale in _stale_node_dirs(out, set(nodes)):
            _remove_node_dir(stale)
            summary["removed_nodes"].append(stale.name)
            _progress(f"{stale.name}: no longer in the catalog; removed its rendered files")
    return summary


def cmd_render(args) -> int:
    summary = run_render(args)
    if args.output == "json":
        print(json.dumps(summary, indent=2, sort_keys=True))
    elif args.output == "yaml":
        print(yaml.safe_dump(summary, sort_keys=False), end="")
    else:
        rows = [[n["node"], str(len(n["files"])), str(len(n["written"])), str(len(n["removed"])), n["dir"]]
                for n in summary["nodes"]]
        headers = ["NODE", "FILES", "WRITTEN", "REMOVED", "DIR"]
        widths = [max(len(x) for x in col) for col in zip(headers, *rows)]
        for row in [headers] + rows:
            print("  ".join(x.ljust(w) for x, w in zip(row, widths)).rstrip())
        for name in summary["removed_nodes"]:
            print(f"{name}: removed (no longer in the catalog)")
    return 0


def register(subparsers, common: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add ``meshctl render`` to ``subparsers`` (``common`` brings --server and -o table|json|yaml)."""
    sp = subparsers.add_parser("render", parents=[common], help=HELP["render"],
                               description=DESCRIPTION, epilog=EPILOG)
    sp.add_argument("--out", required=True, metavar="DIR", help="output directory; one sub-directory per node")
    sp.add_argument("--catalog", metavar="SPEC", help=CATALOG_HELP)
    sp.add_argument("--node", action="append", metavar="NODE", help="render only this node (repeatable)")
    sp.add_argument("--control-plane", metavar="URL", type=http_url,
                    help="agent API as the VMs reach it, https://host:port (default: the control plane's)")
    sp.add_argument("--ca-file", metavar="FILE",
                    help="trust bundle PEM to ship (default: fetched from the control plane)")
    sp.add_argument("--xds-address", metavar="HOST:PORT", type=host_port,
                    help="control plane xDS address as the VMs reach it (default: the control plane's)")
    sp.add_argument("--trust-domain", type=trust_domain, help="SPIFFE trust domain (default: the control plane's, else cluster.local)")
    sp.add_argument("--admin", action="append", metavar="[NODE=]HOST:PORT", type=node_host_port,
                    help=f"Envoy admin address, for all nodes or one (repeatable; default {rd.DEFAULT_ADMIN}, "
                         f"or node meta {rd.ADMIN_META_KEY})")
    sp.add_argument("--vm-state-dir", default=rd.DEFAULT_VM_STATE_DIR, metavar="DIR",
                    help="agent state directory on the VMs (default %(default)s)")
    sp.add_argument("--vm-ca-file", default=rd.DEFAULT_VM_CA_FILE, metavar="PATH",
                    help="where bundle.pem goes on the VMs (default %(default)s)")
    sp.add_argument("--vm-config", default=rd.DEFAULT_VM_CONFIG, metavar="PATH",
                    help="where agent.yaml goes on the VMs (default %(default)s)")
    sp.add_argument("--consul-services-dir", default=rd.DEFAULT_CONSUL_SERVICES_DIR, metavar="DIR",
                    help="where services/*.json go on the VMs, and the agent's consul_services_dir "
                         "('' to leave it out of agent.yaml) (default %(default)s)")
    sp.add_argument("--join-token-file", default=rd.DEFAULT_JOIN_TOKEN_FILE, metavar="PATH",
                    help="agent.yaml join_token_file ('' to leave it out) (default %(default)s)")
    sp.add_argument("--timeout", type=number(low=0.1, high=3600), default=5.0, metavar="SECONDS",
                    help="how long to wait for the control plane (default %(default)s)")
    sp.set_defaults(fn=cmd_render)
    return sp


def main(argv: list[str] | None = None) -> int:
    """``python -m meshcore.cli.render ARGS``: the same command without ``meshctl`` (exit 1 on a MeshError)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--server", help="control plane HTTP API URL")
    common.add_argument("-o", "--output", choices=("table", "json", "yaml"), default="table")
    parser = MeshctlParser(prog="meshctl")
    register(parser.add_subparsers(dest="command", required=True), common)
    args = parser.parse_args(["render", *(sys.argv[1:] if argv is None else argv)])
    return dispatch(args)


__all__ = ["build_settings", "cmd_render", "main", "register", "run_render", "write_node"]


if __name__ == "__main__":
    sys.exit(main())
