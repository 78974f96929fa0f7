"""Pure rendering of per-VM files for air-gapped sites (``meshctl render``).

Where VMs cannot pull what they need, Ansible pushes it. For one node this module produces, as
``{relative path: bytes}``:

``bootstrap.json``
    the Envoy bootstrap, byte for byte what ``meshcore-agent`` itself writes to
    ``<state_dir>/envoy/bootstrap.json`` (same :func:`render_bootstrap`, same JSON encoding), so an
    agent that starts over a pushed bootstrap leaves it untouched;
``agent.yaml``
    the agent's ``--config`` file (node, control plane, trust bundle path, state dir, admin
    address, Consul services directory, join token file);
``services/<id>.json``
    the node's mesh services as Consul service-definition files, for ``/etc/consul.d``;
``bundle.pem``
    the mesh trust bundle (CA certificates only);
``MANIFEST.json``
    every other file with its sha256, size, destination on the VM and mode; the meshcore version;
    the catalog snapshot the files came from (source, node, services, content hash).

Output is deterministic: same catalog, settings and bundle -> byte-identical files, so Ansible
reports "changed" only when something changed. Health is not part of the output (a flapping check
does not re-render anything). Nothing rendered ever holds a private key: the bundle is checked to
hold certificates only, and every file is checked before it is returned.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Mapping
from urllib.parse import urlsplit

import yaml

from meshcore import __version__, naming
from meshcore.agent.bootstrap import render_bootstrap, render_bootstrap_json
from meshcore.catalog.definitions import NodeDefinition
from meshcore.catalog.model import Catalog, ServiceInstance
from meshcore.errors import ConfigError, MeshError

from . import _service_files

GENERATOR = "meshctl render"
MANIFEST = "MANIFEST.json"
BOOTSTRAP = "bootstrap.json"
AGENT_CONFIG = "agent.yaml"
BUNDLE = "bundle.pem"
SERVICES_DIR = "services"

DEFAULT_VM_STATE_DIR = "/var/lib/meshcore-agent"
DEFAULT_VM_CA_FILE = "/etc/meshcore/bundle.pem"
DEFAULT_VM_CONFIG = "/etc/meshcore/agent.yaml"
DEFAULT_ADMIN = "127.0.0.1:19000"
DEFAULT_CONSUL_SERVICES_DIR = "/etc/consul.d"
DEFAULT_JOIN_TOKEN_FILE = "/etc/meshcore/join-token"
ADMIN_META_KEY = "meshcore-admin"
"""Consul node meta key that sets a node's Envoy admin address (``--admin NODE=...`` wins over it)."""

FILE_MODE = "0644"
_FORBIDDEN = b"PRIVATE KEY"


@dataclass(frozen=True)
class RenderSettings:
    """What every VM is told, plus where things live on the VMs.

    ``control_plane`` is the agent API as VMs reach it (``https://host:port``); ``xds_address``
    the control plane's xDS ``host:port``. Paths are paths on the VM and must be absolute.
    ``admin`` is the default Envoy admin address; ``admin_by_node`` overrides it per node.
    ``consul_services_dir``/``join_token_file`` may be empty to leave them out of ``agent.yaml``.
    ``catalog_source`` only describes the catalog in the manifest (``files:DIR``, ``consul:URL``).
    """

    control_plane: str
    xds_address: str
    trust_domain: str = naming.DEFAULT_TRUST_DOMAIN
    state_dir: str = DEFAULT_VM_STATE_DIR
    ca_file: str = DEFAULT_VM_CA_FILE
    config_path: str = DEFAULT_VM_CONFIG
    admin: str = DEFAULT_ADMIN
    admin_by_node: Mapping[str, str] = field(default_factory=dict)
    consul_services_dir: str = DEFAULT_CONSUL_SERVICES_DIR
    join_token_file: str = DEFAULT_JOIN_TOKEN_FILE
    catalog_source: str = ""

    def problems(self) -> list[str]:
        """Every problem with these settings (empty when they are usable)."""
        out: list[str] = []
        parts = urlsplit(self.control_plane or "")
        if parts.scheme != "https" or not parts.hostname:
            out.append(f"control plane {self.control_plane!r} must be the agent API as https://host:port "
                       "(pass --control-plane)")
        else:
            try:
                _ = parts.port  # urlsplit checks the port only when it is read
            except ValueError:
                out.append(f"control plane {self.control_plane!r} has an invalid port")
        for what, value in [("xDS address", self.xds_address), ("admin address", self.admin),
                            *((f"admin address of node {n}", a) for n, a in sorted(self.admin_by_node.items()))]:
            if (problem := _host_port_problem(value)) is not None:
                out.append(f"{what} {value!r} {problem}")
        if not self.trust_domain or "/" in self.trust_domain or ":" in self.trust_domain:
            out.append(f"trust domain {self.trust_domain!r} is not a SPIFFE trust domain name")
        for what, value in (("state dir", self.state_dir), ("CA file", self.ca_file),
                            ("agent config path", self.config_path),
                            ("Consul services dir", self.consul_services_dir),
                            ("join token file", self.join_token_file)):
            optional = what in ("Consul services dir", "join token file")
            if (value or not optional) and not PurePosixPath(value or "").is_absolute():
                out.append(f"{what} {value!r} on the VM must be an absolute path")
        return out

    def validate(self) -> None:
        problems = self.problems()
        if problems:
            raise ConfigError("cannot render: " + "; ".join(problems))

    def admin_for(self, node: str, node_meta: Mapping[str, str] | None = None) -> str:
        return self.admin_by_node.get(node) or (node_meta or {}).get(ADMIN_META_KEY) or self.admin


def _host_port_problem(value: str) -> str | None:
    text = (value or "").strip()
    if not text:
        return "is empty"
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port_text = rest[1:] if sep and rest.startswith(":") else ""
    else:
        host, _, port_text = text.rpartition(":")
        if ":" in host:
            return "is not host:port (write IPv6 as [addr]:port)"
    if not host:
        return "is not host:port"
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        return "needs a port 1-65535"
    return None


def check_bundle(pem: str, where: str = "trust bundle") -> str:
    """Return ``pem`` (normalized to end in one newline) if it holds CA certificates and no key.

    Raises ConfigError otherwise: a bundle with a private key in it must never be pushed to VMs.
    """
    from cryptography import x509

    raw = (pem or "").strip().encode()
    if _FORBIDDEN in raw:
        raise ConfigError(f"{where} contains a PRIVATE KEY block; refusing to render it. Use the CA bundle "
                          "(<state-dir>/ca/bundle.pem on the control plane host), never a key file")
    try:
        certs = x509.load_pem_x509_certificates(raw)
    except ValueError as exc:
        raise ConfigError(f"{where} is not a PEM bundle of certificates ({exc})") from exc
    if not certs:
        raise ConfigError(f"{where} holds no certificate")
    return raw.decode() + "\n"


def select_nodes(catalog: Catalog, wanted: Iterable[str] | None = None) -> list[str]:
    """The nodes to render: ``wanted`` (each must be in the catalog), else every node with mesh services."""
    with_services = sorted({i.node for i in catalog.instances})
    if not wanted:
        return with_services
    known = {n.name for n in catalog.nodes} | set(with_services)
    names = sorted(set(wanted))
    missing = [n for n in names if n not in known]
    if missing:
        raise ConfigError(f"node(s) {', '.join(missing)} not in the catalog; known nodes with mesh services: "
                          f"{', '.join(with_services) or '(none)'}")
    return names


def catalog_digest(catalog: Catalog, node: str) -> str:
    """sha256 over the node and its instances as rendered (health left out)."""
    entry = catalog.node(node)
    data = {
        "node": asdict(entry) if entry else {"name": node},
        "instances": [_without_health(i) for i in catalog.on_node(node)],
    }
    return hashlib.sha256(_canonical(data)).hexdigest()


def _without_health(inst: ServiceInstance) -> dict[str, Any]:
    d = asdict(inst)
    d.pop("healthy", None)
    return d


def _canonical(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def _json(data: Any) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=True) + "\n").encode()


def agent_config(node: str, settings: RenderSettings, admin: str) -> bytes:
    """``agent.yaml``: keys the agent's ``--config`` file accepts, in a fixed order."""
    data: dict[str, str] = {
        "node": node,
        "control_plane": settings.control_plane.rstrip("/"),
        "ca_file": settings.ca_file,
        "state_dir": settings.state_dir,
        "admin": admin,
    }
    if settings.consul_services_dir:
        data["consul_services_dir"] = settings.consul_services_dir
    if settings.join_token_file:
        data["join_token_file"] = settings.join_token_file
    header = (f"# meshcore-agent configuration for node {node}, rendered by `{GENERATOR}`.\n"
              "# Re-render and push instead of editing it on the VM. Flags and MESHCORE_AGENT_* override it.\n")
    return (header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)).encode()


def _service_file_name(service_id: str) -> str:
    if not service_id or "/" in service_id or service_id in (".", "..") or "\0" in service_id:
        raise MeshError(f"service ID {service_id!r} cannot be a file name")
    return f"{SERVICES_DIR}/{service_id}.json"


def render_node(
    catalog: Catalog,
    node: str,
    settings: RenderSettings,
    bundle_pem: str,
    *,
    definition: NodeDefinition | None = None,
) -> dict[str, bytes]:
    """Every file for ``node``, as ``{path relative to the node's directory: content}``.

    ``definition`` (file catalogs) supplies the services as the operator wrote them, with their
    checks; without it the services come from the catalog instances.
    """
    settings.validate()
    bundle = check_bundle(bundle_pem)
    entry = catalog.node(node)
    instances = catalog.on_node(node)
    if entry is None and not instances:
        raise ConfigError(f"node {node!r} is not in the catalog")
    address = entry.address if entry else ""
    admin = settings.admin_for(node, dict(entry.meta) if entry else None)

    state_dir = PurePosixPath(settings.state_dir)
    bootstrap = render_bootstrap(node=node, trust_domain=settings.trust_domain, xds_address=settings.xds_address,
                                 secrets_dir=Path(state_dir / "secrets"), admin_address=admin)
    files: dict[str, bytes] = {
        BOOTSTRAP: render_bootstrap_json(bootstrap).encode(),
        AGENT_CONFIG: agent_config(node, settings, admin),
        BUNDLE: bundle.encode(),
    }
    dests = {
        BOOTSTRAP: str(state_dir / "envoy" / "bootstrap.json"),
        AGENT_CONFIG: settings.config_path,
        BUNDLE: settings.ca_file,
    }
    services_dest = PurePosixPath(settings.consul_services_dir or DEFAULT_CONSUL_SERVICES_DIR)
    mesh_ids = {i.id for i in instances}
    for inst in instances:
        svc_def = definition.service(inst.id) if definition is not None else None
        doc = _service_files.from_definition(svc_def) if svc_def is not None and svc_def.in_mesh \
            else _service_files.from_instance(inst, address)
        path = _service_file_name(inst.id)
        files[path] = _json(doc)
        dests[path] = str(services_dest / PurePosixPath(path).name)

    manifest = {
        "generator": GENERATOR,
        "meshcore_version": __version__,
        "node": node,
        "catalog": {
            "source": settings.catalog_source,
            "node": {"name": node, "address": address, "datacenter": entry.datacenter if entry else ""},
            "services": sorted(mesh_ids),
            "sha256": catalog_digest(catalog, node),
        },
        "control_plane": settings.control_plane.rstrip("/"),
        "xds_address": settings.xds_address,
        "trust_domain": settings.trust_domain,
        "files": [
            {"path": path, "sha256": hashlib.sha256(content).hexdigest(), "size": len(content),
             "dest": dests[path], "mode": FILE_MODE}
            for path, content in sorted(files.items())
        ],
    }
    files[MANIFEST] = _json(manifest)
    for path, content in files.items():
        if _FORBIDDEN in content:  # belt and braces: nothing secret ever leaves this function
            raise MeshError(f"refusing to render {node}/{path}: it would contain a private key")
    return dict(sorted(files.items()))


def render_all(
    catalog: Catalog,
    settings: RenderSettings,
    bundle_pem: str,
    *,
    nodes: Iterable[str] | None = None,
    definitions: Mapping[str, NodeDefinition] | None = None,
) -> dict[str, bytes]:
    """Every node's files as ``{"<node>/<path>": content}`` (see :func:`render_node`)."""
    out: dict[str, bytes] = {}
    for node in select_nodes(catalog, nodes):
        for path, content in render_node(catalog, node, settings, bundle_pem,
                                         definition=(definitions or {}).get(node)).items():
            out[f"{node}/{path}"] = content
    return out


def manifest_problems(files: Mapping[str, bytes]) -> list[str]:
    """Check one node's files against its ``MANIFEST.json``; every mismatch (empty when all match)."""
    try:
        manifest = json.loads(files[MANIFEST])
    except (KeyError, ValueError) as exc:
        return [f"{MANIFEST} missing or not JSON ({exc})"]
    problems = []
    listed = {f["path"] for f in manifest.get("files", [])}
    for f in manifest.get("files", []):
        content = files.get(f["path"])
        if content is None:
            problems.append(f"{f['path']}: listed but missing")
        elif hashlib.sha256(content).hexdigest() != f["sha256"] or len(content) != f["size"]:
            problems.append(f"{f['path']}: content does not match its sha256/size")
    for path in sorted(set(files) - listed - {MANIFEST}):
        problems.append(f"{path}: present but not listed")
    return problems


__all__ = [
    "AGENT_CONFIG", "ADMIN_META_KEY", "BOOTSTRAP", "BUNDLE", "MANIFEST", "SERVICES_DIR", "GENERATOR",
    "RenderSettings", "agent_config", "catalog_digest", "check_bundle", "manifest_problems",
    "render_all", "render_node", "select_nodes",
]
