"""Hosts from an Ansible inventory (YAML, INI or a dynamic script), as ``ansible-inventory --list`` sees them.

:func:`hosts_from_inventory` is pure (it reads the JSON ``ansible-inventory --list`` prints);
:func:`load_inventory` runs ``ansible-inventory`` so every inventory format Ansible reads works here,
group and host variables included.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from meshcore.errors import InventoryError

CONTROL_PLANE_GROUP = "meshcore_control_plane"
VM_GROUP = "meshcore_vms"




@dataclass(frozen=True)
class Host:
    """One host to reach over SSH, with the connection settings Ansible would use."""

    name: str
    address: str
    user: str | None = None
    port: int = 22
    key_file: str | None = None
    groups: tuple[str, ...] = ()
    strict_host_keys: bool = True
    variables: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_control_plane(self) -> bool:
        return CONTROL_PLANE_GROUP in self.groups

    @property
    def is_vm(self) -> bool:
        return VM_GROUP in self.groups

    @property
    def agent_state_dir(self) -> str:
        return str(self.variables.get("meshcore_agent_state_dir") or "/var/lib/meshcore-agent")

    @property
    def ca_file(self) -> str:
        return str(self.variables.get("meshcore_agent_ca_file") or "/etc/meshcore/bundle.pem")


def _groups_of(data: dict[str, Any]) -> dict[str, set[str]]:
    """host -> every group it is in (directly or through children)."""
    member: dict[str, set[str]] = {}

    def walk(group: str, ancestors: tuple[str, ...], seen: frozenset[str]) -> None:
        if group in seen:
            return
        entry = data.get(group) or {}
        for host in entry.get("hosts", []) or []:
            member.setdefault(host, set()).update((group, *ancestors))
        for child in entry.get("children", []) or []:
            walk(child, (group, *ancestors), seen | {group})

    walk("all", (), frozenset())
    return member


def _strict(variables: dict[str, Any]) -> bool:
    args = " ".join(str(variables.get(k) or "") for k in ("ansible_ssh_common_args", "ansible_ssh_extra_args"))
    words = shlex.split(args)
    return not any(w.replace(" ", "").lower() in ("stricthostkeychecking=no", "stricthostkeychecking=off")
                   for w in words)


def hosts_from_inventory(data: dict[str, Any]) -> list[Host]:
    """Every host in ``ansible-inventory --list`` output, sorted by name."""
    hostvars: dict[str, dict[str, Any]] = (data.get("_meta") or {}).get("hostvars") or {}
    groups = _groups_of(data)
    names = sorted(set(groups) | set(hostvars))
    hosts = []
    for name in names:
        v = hostvars.get(name) or {}
        try:
            port = int(v.get("ansible_port") or v.get("ansible_ssh_port") or 22)
        except (TypeError, ValueError) as exc:
            raise InventoryError(f"host {name}: ansible_port {v.get('ansible_port')!r} is not a number") from exc
        hosts.append(Host(
            name=name,
            address=str(v.get("ansible_host") or v.get("ansible_ssh_host") or name),
            user=(str(v["ansible_user"]) if v.get("ansible_user") else
                  str(v["ansible_ssh_user"]) if v.get("ansible_ssh_user") else None),
            port=port,
            key_file=str(v.get("ansible_ssh_private_key_file") or v.get("ansible_private_key_file") or "") or None,
            groups=tuple(sorted(g for g in groups.get(name, set()) if g not in ("all", "ungrouped"))),
            strict_host_keys=_strict(v),
            variables=dict(v),
        ))
    return hosts


def _ansible_inventory() -> str:
    beside = Path(sys.executable).parent / "ansible-inventory"
    found = str(beside) if beside.exists() else shutil.which("ansible-inventory")
    if not found:
        raise InventoryError("ansible-inventory not found: install ansible-core in this environment "
                             "(pip install ansible-core) or put it on PATH")
    return found


def load_inventory(path: str, *, limit: str | None = None) -> list[Host]:
    """Hosts of the inventory at ``path`` (``--limit`` pattern optional), via ``ansible-inventory --list``."""
    if not Path(path).exists():
        raise InventoryError(f"inventory {path} does not exist; pass -i PATH (an Ansible YAML/INI inventory)")
    cmd = [_ansible_inventory(), "-i", path, "--list"]
    if limit:
        cmd += ["--limit", limit]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise InventoryError(f"ansible-inventory -i {path} failed (exit {proc.returncode}): "
                             f"{proc.stderr.strip()[-800:]}")
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise InventoryError(f"ansible-inventory -i {path} printed no JSON: {proc.stdout[:200]!r}") from exc
    hosts = hosts_from_inventory(data)
    if not hosts:
        raise InventoryError(f"inventory {path} names no hosts")
    return hosts


def find_host(hosts: list[Host], name: str) -> Host:
    for h in hosts:
        if name in (h.name, h.address):
            return h
    raise InventoryError(f"no host {name!r} in the inventory; hosts: {', '.join(h.name for h in hosts)}")
