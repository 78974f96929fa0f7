"""Pure: an Ansible inventory built from the mesh catalog (``meshctl inventory``).

Hosts are the catalog's nodes that run mesh services (sidecar-proxied services or gateways),
named by their Consul node name, so ``envoy_configs/<node>/`` and ``--limit vm1`` line up.

Groups:

* ``meshcore_vms``: every such node;
* ``meshcore_gateways``: nodes running a gateway (``kind = "ingress-gateway"``), always present;
* ``svc_<service>``: nodes running an instance of ``<service>`` (characters other than letters,
  digits and ``_`` become ``_``: ``svc_ingress_gateway``);
* ``dc_<datacenter>``: nodes of that Consul datacenter.

Host variables: ``ansible_host`` (the node's address), ``meshcore_node``, ``meshcore_datacenter``
and ``meshcore_services``, a list of ``{name, id, kind, port, mesh_port, version}`` sorted by id
(``version`` is the service meta ``version``, or null).

:func:`build_inventory` returns Ansible's dynamic-inventory ``--list`` document (groups with
``hosts`` and ``vars``, ``all.children``, ``_meta.hostvars``); :func:`to_yaml` and :func:`to_ini`
write the same inventory in Ansible's static YAML and INI formats.
"""

from __future__ import annotations

import ast
import re
from typing import Any

import yaml

from meshcore.catalog.definitions import INGRESS_GATEWAY
from meshcore.catalog.model import Catalog
from meshcore.errors import MeshError

ALL_VMS = "meshcore_vms"
GATEWAYS = "meshcore_gateways"
GATEWAY_KINDS = frozenset({INGRESS_GATEWAY, "mesh-gateway", "terminating-gateway", "api-gateway"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_]")
_INI_BARE = re.compile(r"[A-Za-z0-9_.:/@+-]+")


def group_name(prefix: str, name: str) -> str:
    """``svc_`` + ``ingress-gateway`` -> ``svc_ingress_gateway`` (Ansible group names are identifiers)."""
    return prefix + _UNSAFE.sub("_", name)


def service_group(service: str) -> str:
    return group_name("svc_", service)


def datacenter_group(datacenter: str) -> str:
    return group_name("dc_", datacenter)


def host_vars(catalog: Catalog, node: str) -> dict[str, Any]:
    """The host variables of ``node`` (raises MeshError when it runs no mesh service)."""
    instances = catalog.on_node(node)
    if not instances:
        hosts = sorted({i.node for i in catalog.instances})
        raise MeshError(f"host {node!r} is not in the inventory (no mesh services on it); "
                        f"hosts: {', '.join(hosts) or '(none)'}")
    entry = catalog.node(node)
    address = entry.address if entry and entry.address else instances[0].mesh_address
    datacenter = entry.datacenter if entry else instances[0].datacenter
    return {
        "ansible_host": address,
        "meshcore_node": node,
        "meshcore_datacenter": datacenter,
        "meshcore_services": [
            {"name": i.service, "id": i.id, "kind": i.kind, "port": i.port, "mesh_port": i.mesh_port,
             "version": i.meta_dict.get("version")}
            for i in sorted(instances, key=lambda i: i.id)
        ],
    }


def build_inventory(catalog: Catalog) -> dict[str, Any]:
    """Ansible's dynamic-inventory ``--list`` JSON document for ``catalog`` (see module docstring)."""
    hostvars = {node: host_vars(catalog, node) for node in sorted({i.node for i in catalog.instances})}
    groups: dict[str, set[str]] = {ALL_VMS: set(hostvars), GATEWAYS: set()}
    for inst in catalog.instances:
        groups.setdefault(service_group(inst.service), set()).add(inst.node)
        groups.setdefault(datacenter_group(hostvars[inst.node]["meshcore_datacenter"]), set()).add(inst.node)
        if inst.kind in GATEWAY_KINDS:
            groups[GATEWAYS].add(inst.node)
    inventory: dict[str, Any] = {name: {"hosts": sorted(hosts), "vars": {}} for name, hosts in sorted(groups.items())}
    inventory["all"] = {"children": sorted(groups) + ["ungrouped"]}
    inventory["_meta"] = {"hostvars": hostvars}
    return inventory


def _groups(inventory: dict[str, Any]) -> list[str]:
    return [g for g in inventory if g not in ("all", "_meta")]


def to_yaml(inventory: dict[str, Any]) -> str:
    """The inventory in Ansible's YAML inventory format (host variables once, under ``meshcore_vms``)."""
    hostvars = inventory["_meta"]["hostvars"]
    children: dict[str, Any] = {}
    for group in _groups(inventory):
        hosts = inventory[group]["hosts"]
        if group == ALL_VMS:
            children[group] = {"hosts": {h: hostvars[h] for h in hosts}}
        else:
            children[group] = {"hosts": {h: None for h in hosts}}
    header = "# Ansible inventory from the mesh catalog, written by `meshctl inventory -o yaml`.\n"
    return header + yaml.safe_dump({"all": {"children": children}}, sort_keys=False, default_flow_style=False)


def _ini_value(value: Any) -> str:
    """One INI host variable value that Ansible's INI parser (shlex + ast.literal_eval) reads back exactly."""
    if isinstance(value, str) and _INI_BARE.fullmatch(value):
        try:
            ast.literal_eval(value)
        except (ValueError, SyntaxError):
            return value  # stays a string: readable as is
    literal = repr(value)
    return '"' + literal.replace("\\", "\\\\").replace('"', '\\"') + '"'


def to_ini(inventory: dict[str, Any]) -> str:
    """The inventory in Ansible's INI format (host variables on the ``[meshcore_vms]`` lines)."""
    hostvars = inventory["_meta"]["hostvars"]
    lines = ["# Ansible inventory from the mesh catalog, written by `meshctl inventory -o ini`."]
    for group in _groups(inventory):
        lines.append("")
        lines.append(f"[{group}]")
        for host in inventory[group]["hosts"]:
            if group == ALL_VMS:
                pairs = " ".join(f"{k}={_ini_value(v)}" for k, v in hostvars[host].items())
                lines.append(f"{host} {pairs}")
            else:
                lines.append(host)
    return "\n".join(lines) + "\n"


__all__ = [
    "ALL_VMS", "GATEWAYS", "build_inventory", "datacenter_group", "group_name", "host_vars", "service_group",
    "to_ini", "to_yaml",
]
