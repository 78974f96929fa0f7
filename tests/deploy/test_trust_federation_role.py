"""The meshcore_trust_federation role, run by a real ansible-playbook (local connection) over an inventory of three
datacenters: the first control plane host of each imports the roots of the datacenters of other trust domains
(one import per domain), waits until every control plane host of its datacenter says its agents hold them,
re-imports them only when they change (a rotation), and a single domain needs nothing.

meshctl is a stand-in here (a script keeping each host's bundle and imports in a directory): the role's part is
which host calls what with whose bundle; meshctl's own import is tested against a real control plane in
tests/federation and tests/e2e/test_federation.py."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from .test_control_plane_replicas import _play

FAKE_MESHCTL = r'''#!PYTHON
"""meshctl trust-bundle export|list|import --server DIR: the host's bundle and imports in DIR."""
import json, sys
from pathlib import Path
args = sys.argv[1:]
state = Path(args[args.index("--server") + 1])
assert args[0] == "trust-bundle", args
imported = json.loads((state / "imported.json").read_text()) if (state / "imported.json").exists() else []
if args[1] == "export":
    sys.stdout.write((state / "own.pem").read_text())
elif args[1] == "list":
    # after an import the agents take two lists to hold it (a file counts them down)
    pending = int((state / "pending").read_text()) if (state / "pending").exists() else 0
    (state / "pending").write_text(str(max(pending - 1, 0)))
    with open(state / "lists", "a") as lists:
        lists.write(f"{pending}\n")
    print(json.dumps([{**e, "agents_without": ["vm9"] if pending else []} for e in imported]))
elif args[1] == "import":
    domain = args[args.index("--trust-domain") + 1]
    bundle = sys.stdin.read()
    imported = [e for e in imported if e["trust_domain"] != domain] + [{"trust_domain": domain, "bundle": bundle}]
    (state / "imported.json").write_text(json.dumps(imported))
    (state / "pending").write_text("2")
    with open(state / "calls", "a") as calls:
        calls.write(domain + "\n")
    print(json.dumps({"trust_domain": domain, "roots": []}))
'''

DATACENTERS = {  # dc: (hosts, trust domain)
    "dc1": (("cp", "cp2"), "cluster.local"),
    "dc2": (("cp3",), "dc2.example"),
    "dc3": (("cp4",), "cluster.local"),  # one trust domain with dc1: nothing between them
}
PLAY = [{"name": "Trust between datacenters", "hosts": "meshcore_control_plane", "gather_facts": False,
         "become": False, "roles": ["meshcore_trust_federation"]}]


def _pem(tag: str) -> str:
    body = "".join(f"{tag}{i:02d}" for i in range(12))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


def _setup(tmp_path: Path) -> tuple[Path, dict[str, Path]]:
    meshctl = tmp_path / "meshctl"
    meshctl.write_text(FAKE_MESHCTL.replace("PYTHON", sys.executable, 1))
    meshctl.chmod(0o755)
    dirs, hosts, children = {}, {}, {}
    for dc, (members, domain) in DATACENTERS.items():
        children[f"dc_{dc}"] = {"hosts": {h: None for h in members},
                                "vars": {"meshcore_datacenter": dc, "meshcore_control_plane_trust_domain": domain}}
        for h in members:
            d = dirs[h] = tmp_path / h
            d.mkdir()
            (d / "own.pem").write_text(_pem(f"{dc.upper()}ROOT"))
            (d / "admin.token").write_text("token\n")
            hosts[h] = {"ansible_connection": "local", "ansible_python_interpreter": sys.executable,
                        "meshcore_trust_federation_meshctl": str(meshctl), "meshcore_trust_federation_server": str(d),
                        "meshcore_trust_federation_token_file": str(d / "admin.token")}
    children["meshcore_control_plane"] = {"hosts": {h: None for h in hosts}}
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts, "children": children}}))
    return inventory, dirs


def _calls(d: Path) -> list[str]:
    return (d / "calls").read_text().split() if (d / "calls").exists() else []


def test_each_datacenter_imports_the_other_trust_domains_once_and_again_only_after_a_change(tmp_path):
    inventory, dirs = _setup(tmp_path)
    run = _play(tmp_path, inventory, PLAY)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    # dc1's first host imports dc2's roots; dc2's imports cluster.local's once (from dc1, the first of that
    # domain); dc3 (cluster.local too) imports dc2's; cp2 (not its datacenter's first) does nothing
    assert {h: _calls(d) for h, d in dirs.items()} == {
        "cp": ["dc2.example"], "cp2": [], "cp3": ["cluster.local"], "cp4": ["dc2.example"]}
    imported = json.loads((dirs["cp3"] / "imported.json").read_text())
    assert imported == [{"trust_domain": "cluster.local", "bundle": _pem("DC1ROOT")}]
    # after its import each first host waited until its agents held it: lists answered "vm9 without" twice, then
    # none; cp2 (dc1's other control plane host) was asked too, for the agents that call it
    assert (dirs["cp3"] / "lists").read_text().split() == ["0", "2", "1", "0"]
    assert (dirs["cp2"] / "lists").read_text().split() == ["0"]

    again = _play(tmp_path, inventory, PLAY)
    assert again.returncode == 0 and "changed=0" in again.stdout and "changed=1" not in again.stdout, \
        again.stdout[-3000:]
    assert _calls(dirs["cp3"]) == ["cluster.local"]

    # dc1 rotates: its bundle holds two roots now; dc2 imports it again, nobody else has anything to do
    (dirs["cp"] / "own.pem").write_text(_pem("DC1ROOT") + _pem("DC1NEXT"))
    third = _play(tmp_path, inventory, PLAY)
    assert third.returncode == 0, third.stdout[-3000:]
    assert {h: _calls(d) for h, d in dirs.items()} == {
        "cp": ["dc2.example"], "cp2": [], "cp3": ["cluster.local", "cluster.local"], "cp4": ["dc2.example"]}
    assert json.loads((dirs["cp3"] / "imported.json").read_text())[0]["bundle"].count("BEGIN CERTIFICATE") == 2


def test_one_datacenter_or_one_trust_domain_needs_nothing(tmp_path):
    inventory, dirs = _setup(tmp_path)
    data = yaml.safe_load(inventory.read_text())
    data["all"]["children"]["dc_dc2"]["vars"]["meshcore_control_plane_trust_domain"] = "cluster.local"
    inventory.write_text(yaml.safe_dump(data))
    run = _play(tmp_path, inventory, PLAY)
    assert run.returncode == 0 and "changed=0" in run.stdout, run.stdout[-3000:]
    assert all(_calls(d) == [] for d in dirs.values())
    # not even a stat: every task is skipped (the one ok is the role's argument check)
    assert run.stdout.count("ok=1    changed=0    unreachable=0    failed=0    skipped=6") == 4, run.stdout[-3000:]
