#!/usr/bin/env python3
"""lab/deploy.py: `make lab-up` - boot the lab (lab/up.sh) and deploy meshcore onto it with site.yml.

Boots (or reuses) two control plane hosts `cp` and `cp2` and three VM hosts, builds the wheelhouse on this machine
(the hosts have no internet), writes the lab's Ansible inventory, runs ansible/playbooks/site.yml over
SSH exactly as onto VMs, waits until productpage answers through the mesh, and prints as the LAST line
of stdout one JSON object: {"hosts": {name: address}, "inventory": path, "ingress": url, ...}.
Progress goes to stderr. Safe to run again (the second deployment changes nothing).
``--check-first`` runs ``site.yml --check --diff`` before deploying (it must pass on never-deployed hosts).
``--datacenters 2`` adds a second datacenter (docs/multi-dc.md, "In the lab"): a mesh gateway gw1 in dc1, and on
the dc2 network a control plane host cp3 (its own Consul stand-in and CA, trust domain dc2.lab), a VM vm4 with a
ratings instance, and a mesh gateway gw2; cp, cp3 and the gateways are also on the WAN, over which alone the two
datacenters meet. site.yml federates the two trust domains, and reviews reach dc2's ratings through gw1 and gw2.

The lab's mesh: a control plane replica, the Consul stand-in (tests/consul_double) and the ingress gateway
(an agent whose Envoy listens on cp's bridge address, port 8080) on `cp`; a second control plane replica on
`cp2` (both with --store consul: one CA, one leader, every agent knows both); bookinfo on vm1..vm3, every
service on every VM (reviews v1/v2/v3 one per VM), so any one VM can be restarted or upgraded while the
others serve.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LAB = ROOT / "lab"
ANSIBLE = ROOT / "ansible"
STATE = Path(os.environ.get("MESHCORE_LAB_STATE", "/var/lib/meshcore-lab"))
HOSTS = ("cp", "cp2", "vm1", "vm2", "vm3")
CONTROL_PLANES = ("cp", "cp2")  # two replicas on one Consul (the stand-in on cp)
INGRESS_PORT = 8080
REVIEWS = {"vm1": "v1", "vm2": "v2", "vm3": "v3"}
# lab/up.sh specs: cp is on the WAN too (its Consul stand-in relays ?dc=dc2 to cp3's, as Consul servers do)
SPECS = {"cp": "cp@dc1+wan"}
# the second datacenter (--datacenters 2)
DC2_HOSTS = ("gw1", "cp3", "vm4", "gw2")
DC2_SPECS = {"gw1": "gw1@dc1+wan", "cp3": "cp3@dc2+wan", "vm4": "vm4@dc2", "gw2": "gw2@dc2+wan"}
DC2_TRUST_DOMAIN = "dc2.lab"
MESH_GATEWAY_PORT = 8443


def log(msg: str) -> None:
    print(f"lab: {msg}", file=sys.stderr, flush=True)


def _svc(name, sid, port, mesh_port, version="v1", upstreams=(), **extra) -> dict:
    return {"name": name, "id": sid, "port": port, "mesh_port": mesh_port, "version": version,
            "upstreams": [{"name": n, "port": p} for n, p in upstreams],
            "check": {"http": f"http://127.0.0.1:{port}/health", "interval": "5s"}, **extra}


def vm_services(vm: str, datacenters: int = 1) -> list[dict]:
    """Every bookinfo service on one VM: apps on loopback, Envoy's mTLS inbound on the mesh ports. With two
    datacenters, reviews reach ratings instances of dc2 through dc1's mesh gateways (mode local)."""
    if vm == "vm4":  # dc2: ratings only
        return [_svc("ratings", "ratings-vm4", 9083, 21003)]
    version = REVIEWS[vm]
    gateways = {"mesh_gateway": "local"} if datacenters > 1 else {}
    return [
        _svc("productpage", f"productpage-{vm}", 9080, 21000, upstreams=[("details", 9091), ("reviews", 9092)]),
        _svc("details", f"details-{vm}", 9081, 21001),
        _svc("reviews", f"reviews-{version}", 9082, 21002, version,
             upstreams=[("ratings", 9093)] if version != "v1" else [], **gateways),
        _svc("ratings", f"ratings-{vm}", 9083, 21003),
    ]


def write_inventory(hosts: dict[str, str], ssh_key: str, directory: Path, wan: dict[str, str] | None = None,
                    datacenters: int = 1) -> Path:
    """The lab inventory: groups as in ansible/inventories/example, plus lab_consul (LAB ONLY); with
    ``datacenters=2`` also the groups dc_dc1/dc_dc2 and meshcore_mesh_gateway of docs/multi-dc.md."""
    cp = hosts["cp"]
    vms = [h for h in HOSTS if h not in CONTROL_PLANES]
    inventory = {"all": {
        "vars": {
            "ansible_user": "root",
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_private_key_file": ssh_key,
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
            "meshcore_common_wheelhouse": str(directory.parent / "wheelhouse"),
            "meshcore_control_plane_bundle_local": str(directory.parent / "bundle.pem"),
            "meshcore_agent_bundle_local": str(directory.parent / "bundle.pem"),
            # the Consul stand-in on cp is every host's "local agent" (it tells them apart by address)
            "meshcore_control_plane_consul_http_addr": f"http://{cp}:8500",
            "meshcore_agent_consul_http_addr": f"http://{cp}:8500",
            "meshcore_agent_refresh_interval": "2s",
        },
        "children": {
            # on every address: with two datacenters the other's stand-in relays ?dc= to it over the WAN (set from the
            # start, so that adding a datacenter reloads the stand-in rather than restarting it)
            "lab_consul": {"hosts": {"cp": None}, "vars": {"lab_consul_double_bind": "0.0.0.0:8500"}},
            # cp2 registers on the stand-in's default node (cp): its TTL checks expire there when it stops
            "meshcore_control_plane": {"hosts": {h: None for h in CONTROL_PLANES}},
            "meshcore_vms": {"hosts": {h: None for h in HOSTS if h != "cp2"}},
            "meshcore_gateways": {"hosts": {"cp": None}},
            "meshcore_mesh_gateway": {},  # none in the one-datacenter lab (docs/multi-dc.md "In the lab")
            "bookinfo": {"hosts": {h: None for h in vms}},
        },
    }}
    host_vars: dict[str, dict] = {name: {"ansible_host": addr} for name, addr in hosts.items()}
    host_vars["cp"]["meshcore_consul_services_definitions"] = [{
        "name": "ingress-gateway", "id": "ingress-gateway", "kind": "ingress-gateway", "port": INGRESS_PORT,
        "upstreams": [{"name": "productpage", "address": cp, "port": INGRESS_PORT}],
        "check": {"tcp": f"{cp}:{INGRESS_PORT}", "interval": "5s"}}]
    for vm in vms:
        host_vars[vm]["meshcore_consul_services_definitions"] = vm_services(vm, datacenters)
    if datacenters > 1:
        _add_second_datacenter(inventory["all"], host_vars, hosts, wan or {}, directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "host_vars").mkdir(exist_ok=True)
    (directory / "hosts.yml").write_text("# written by lab/deploy.py; lab/down.sh removes it\n"
                                         + yaml.safe_dump(inventory, sort_keys=False))
    for name, data in host_vars.items():
        (directory / "host_vars" / f"{name}.yml").write_text(yaml.safe_dump(data, sort_keys=False))
    return directory / "hosts.yml"


def _add_second_datacenter(inventory: dict, host_vars: dict[str, dict], hosts: dict[str, str], wan: dict[str, str],
                           directory: Path) -> None:
    """dc1 = cp, cp2, vm1..vm3 and gw1 (trust domain cluster.local); dc2 = cp3, vm4, gw2 (dc2.lab): each datacenter's
    control plane reads both catalogs, its own Consul stand-in relaying ?dc= to the other's over the WAN."""
    stand_in = {"dc1": "cp", "dc2": "cp3"}
    members = {"dc1": [*HOSTS, "gw1"], "dc2": ["cp3", "vm4", "gw2"]}
    other = {"dc1": "dc2", "dc2": "dc1"}
    domains = {"dc1": "cluster.local", "dc2": DC2_TRUST_DOMAIN}
    children = inventory["children"]
    for dc, names in members.items():
        consul = f"http://{hosts[stand_in[dc]]}:8500"
        peer = other[dc]
        group_vars = {
            "meshcore_datacenter": dc,
            "meshcore_control_plane_catalog": f"consul:{dc},{peer}@{domains[peer]}",
            "meshcore_control_plane_consul_http_addr": consul,
            "meshcore_agent_consul_http_addr": consul,
            "lab_consul_double_wan": {peer: f"http://{wan[stand_in[peer]]}:8500"},
        }
        if dc == "dc2":
            bundle = str(directory.parent / "bundle-dc2.pem")
            group_vars.update({"meshcore_control_plane_trust_domain": DC2_TRUST_DOMAIN,
                               "meshcore_control_plane_bundle_local": bundle, "meshcore_agent_bundle_local": bundle})
        children[f"dc_{dc}"] = {"hosts": {h: None for h in names}, "vars": group_vars}
    children["lab_consul"]["hosts"]["cp3"] = None
    children["meshcore_control_plane"]["hosts"]["cp3"] = None
    children["meshcore_vms"]["hosts"]["vm4"] = None
    children["meshcore_mesh_gateway"] = {"hosts": {"gw1": None, "gw2": None}}
    children["bookinfo"]["hosts"]["vm4"] = None
    host_vars["vm4"]["meshcore_consul_services_definitions"] = vm_services("vm4", 2)
    for gw in ("gw1", "gw2"):
        host_vars[gw].update({"meshcore_mesh_gateway_lan_port": MESH_GATEWAY_PORT,
                              "meshcore_mesh_gateway_wan_address": wan[gw], "meshcore_mesh_gateway_bind_wan": True})


def build_wheelhouse(out: Path, local_version: str = "") -> None:
    log(f"building the wheelhouse {out} (meshcore and its dependencies, for the hosts' Python 3.11)")
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(ANSIBLE / "scripts" / "build-wheelhouse.sh"), str(ROOT), str(out),
                    *([local_version] if local_version else [])], check=True, env=env,
                   stdout=sys.stderr)


def run_playbook(inventory: Path, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    """ansible-playbook from the venv, output to stderr (and returned)."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ANSIBLE / "ansible.cfg"), ANSIBLE_FORCE_COLOR="0",
               ANSIBLE_NOCOLOR="1", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    cmd = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory),
           str(ANSIBLE / "playbooks" / playbook), *extra]
    log(" ".join(cmd))
    proc = subprocess.Popen(cmd, env=env, cwd=ANSIBLE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        sys.stderr.write(line)
    rc = proc.wait()
    return subprocess.CompletedProcess(cmd, rc, "".join(lines), "")


def check_first(inventory: Path, ssh_key: str, hosts: dict[str, str]) -> None:
    """`site.yml --check --diff` before the deployment: on never-deployed hosts it must pass (issue 3).

    Prints ``lab: check-first: never-deployed=<bool> rc=<n>`` for tests/lab; exits 1 when it fails.
    """
    probe = subprocess.run(["ssh", "-i", ssh_key, "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                            "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", f"root@{hosts['cp']}",
                            "test -e /etc/meshcore"], capture_output=True, timeout=60)
    fresh = probe.returncode == 1
    result = run_playbook(inventory, "site.yml", "--check", "--diff")
    log(f"check-first: never-deployed={str(fresh).lower()} rc={result.returncode}")
    if result.returncode != 0:
        raise SystemExit(f"lab: site.yml --check --diff failed (exit {result.returncode}); the output is above")


def wait_ingress(url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                body = json.loads(r.read())
                if r.status == 200 and body.get("details", {}).get("service") == "details":
                    return
                last = f"status {r.status}: {str(body)[:200]}"
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = str(exc)
        time.sleep(1)
    raise SystemExit(f"lab: productpage did not answer through the mesh at {url} within {timeout:.0f}s: {last}")


def main() -> int:
    parser = argparse.ArgumentParser(prog="lab/deploy.py", description=__doc__.split("\n")[0])
    parser.add_argument("--check-first", action="store_true",
                        help="run site.yml --check --diff before deploying (it must pass on never-deployed hosts)")
    parser.add_argument("--datacenters", type=int, choices=(1, 2), default=1,
                        help="2: add the second datacenter (gw1; cp3, vm4, gw2 on the dc2 network)")
    args = parser.parse_args()
    datacenters = args.datacenters
    if os.geteuid() != 0:
        log("error: the lab needs root (network namespaces, bridges, systemd-nspawn); run it as root")
        return 2
    t0 = time.monotonic()
    names = HOSTS + (DC2_HOSTS if datacenters > 1 else ())
    specs = [{**SPECS, **DC2_SPECS}.get(name, name) for name in names]
    up = subprocess.run([str(LAB / "up.sh"), *specs], stdout=subprocess.PIPE, text=True)
    if up.returncode != 0:
        log(f"error: lab/up.sh failed (exit {up.returncode})")
        return up.returncode
    booted = json.loads(up.stdout.strip().splitlines()[-1])
    hosts = {name: booted["hosts"][name] for name in names}
    wan = {name: addr for name, addr in booted["wan"].items() if name in names}
    missing = [spec.split("@")[0] for spec in specs
               if datacenters > 1 and spec.endswith("+wan") and spec.split("@")[0] not in wan]
    if missing:
        log(f"error: {', '.join(missing)} have no WAN link (created before it was asked for): lab/down.sh first")
        return 2
    log(f"hosts up in {time.monotonic() - t0:.0f}s: {hosts}")
    wheelhouse = STATE / "wheelhouse"
    if not list(wheelhouse.glob("meshcore-*.whl")):
        build_wheelhouse(wheelhouse)
    inventory = write_inventory(hosts, booted["ssh_key"], STATE / "inventory", wan, datacenters)
    if args.check_first:
        check_first(inventory, booted["ssh_key"], hosts)
    result = run_playbook(inventory, "site.yml")
    if result.returncode != 0:
        log(f"error: site.yml failed (exit {result.returncode}); the output is above")
        return 1
    ingress = f"http://{hosts['cp']}:{INGRESS_PORT}/productpage"
    wait_ingress(ingress + "?format=json")
    log(f"mesh up in {time.monotonic() - t0:.0f}s; productpage through the mesh: {ingress}")
    print(json.dumps({"hosts": hosts, "inventory": str(inventory), "ingress": ingress,
                      "ssh_key": booted["ssh_key"], "netns": booted["netns"], "wan": wan,
                      "nets": {n: booted["nets"][n] for n in names}}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
