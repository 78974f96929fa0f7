"""The lab: real Debian hosts (systemd-nspawn --boot, systemd as PID 1, sshd) on a private bridge,
meshcore deployed onto them by ansible/playbooks/site.yml over SSH, exactly as onto VMs.

Needs root (network namespaces, bridges, nspawn); skips with the reason otherwise, or when nspawn
cannot boot a host here. The lab is brought up once for the module (``lab/deploy.py``, what
``make lab-up`` runs) and removed at the end (``lab/down.sh``) unless MESHCORE_LAB_KEEP=1.
Two control plane hosts (cp, cp2: replicas on the Consul stand-in). The tests run in order: deploy, traffic,
units, a control plane host stopped under traffic, kill recovery, reboot, idempotence, upgrade, and last a second
datacenter (``lab/deploy.py --datacenters 2``: gw1, cp3, vm4, gw2) with failover through the mesh gateways.
Progress goes to stdout (``pytest -s`` to watch it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LAB_STATE = Path(os.environ.get("MESHCORE_LAB_STATE", "/var/lib/meshcore-lab"))
VMS = ("vm1", "vm2", "vm3")
CONTROL_PLANES = ("cp", "cp2")
BOOT_FAILURES = ("did not come up", "stopped while booting", "Failed to open system bus", "No medium found")

pytestmark = pytest.mark.timeout(1500)


def progress(msg: str) -> None:
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, a bridge, systemd-nspawn); run the tests as root"
    missing = [c for c in ("systemd-nspawn", "debootstrap", "nsenter", "ip", "ssh") if not shutil.which(c)]
    if missing:
        return (f"missing {', '.join(missing)}: apt-get install debootstrap systemd-container iproute2 "
                "openssh-client (make lab-deps does)")
    return None


@pytest.fixture(scope="module")
def lab():
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    progress("make lab-up: boot cp cp2 vm1 vm2 vm3 and deploy with site.yml (1-3 minutes)")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "lab" / "deploy.py"), "--check-first"], capture_output=True,
                          text=True, timeout=1200)
    if proc.returncode != 0:
        tail = "\n".join(proc.stderr.splitlines()[-60:])
        if any(marker in proc.stderr for marker in BOOT_FAILURES):
            subprocess.run([str(ROOT / "lab" / "down.sh")], capture_output=True, timeout=120)
            pytest.skip(f"systemd-nspawn cannot boot a lab host here:\n{tail}")
        pytest.fail(f"lab/deploy.py failed (exit {proc.returncode}):\n{tail}")
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    info["deploy_output"] = proc.stderr
    info["deploy_seconds"] = time.monotonic() - t0
    progress(f"lab up in {info['deploy_seconds']:.0f}s: {info['hosts']}")
    yield info
    if os.environ.get("MESHCORE_LAB_KEEP") == "1":
        progress("MESHCORE_LAB_KEEP=1: leaving the lab up (make lab-down removes it)")
        return
    progress("make lab-down")
    subprocess.run([str(ROOT / "lab" / "down.sh")], capture_output=True, timeout=300)


def ssh(lab, host: str, command: str, *, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        ["ssh", "-i", lab["ssh_key"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=3",
         f"root@{lab['hosts'][host]}", command], capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{host}: {command!r} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    return proc


def page(lab, timeout: float = 5) -> dict:
    with urllib.request.urlopen(lab["ingress"] + "?format=json", timeout=timeout) as r:
        assert r.status == 200
        return json.loads(r.read())


def wait_for(what: str, fn, timeout: float, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = fn()
            if result:
                return result
            last = result
        except Exception as exc:  # noqa: BLE001 - retried until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:.0f}s (last: {last!r})")


def envoy_ready(lab, host: str) -> bool:
    return ssh(lab, host, "curl -fsS -m 2 http://127.0.0.1:19000/ready", check=False).stdout.strip() == "LIVE"


def mesh_serves(lab) -> bool:
    data = page(lab)
    return data["details"].get("service") == "details" and data["reviews"].get("service") == "reviews"


def run_playbook(lab, playbook: str, *extra: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible" / "ansible.cfg"), ANSIBLE_NOCOLOR="1",
               PATH=f"{BIN}:{os.environ.get('PATH', '')}")
    return subprocess.run([str(BIN / "ansible-playbook"), "-i", lab["inventory"],
                           str(ROOT / "ansible" / "playbooks" / playbook), *extra],
                          cwd=ROOT / "ansible", env=env, capture_output=True, text=True, timeout=600)


def recap(output: str) -> dict[str, dict[str, int]]:
    out = {}
    for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", output, re.M):
        out[m.group(1)] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2))}
    return out


# ------------------------------------------------------------------------------------------- tests

def test_site_yml_deployed_every_host(lab):
    assert set(lab["hosts"]) == {*CONTROL_PLANES, *VMS}
    assert Path(lab["inventory"]).is_file()
    stats = recap(lab["deploy_output"])
    assert {*CONTROL_PLANES, *VMS} <= set(stats), stats
    assert all(s["failed"] == 0 and s["unreachable"] == 0 for s in stats.values()), stats
    assert lab["ingress"].startswith(f"http://{lab['hosts']['cp']}:")


def test_check_diff_passed_before_the_first_deploy(lab):
    """deploy.py ran `site.yml --check --diff` first; on never-deployed hosts it must not fail (no bundle yet...)."""
    m = re.search(r"check-first: never-deployed=(\w+) rc=(\d+)", lab["deploy_output"])
    assert m, "deploy.py did not run site.yml --check --diff first"
    progress(f"site.yml --check --diff before the deploy: never-deployed hosts={m.group(1)}, exit {m.group(2)}")
    assert m.group(2) == "0"
    if m.group(1) == "true":  # the roles said why they skipped what needs a running control plane
        assert "no trust bundle at" in lab["deploy_output"]


def test_productpage_answers_through_the_mesh(lab):
    seen = {"productpage": set(), "reviews": set()}
    for _ in range(30):
        data = page(lab)
        assert data["details"]["service"] == "details", data["details"]
        assert data["reviews"]["service"] == "reviews", data["reviews"]
        seen["productpage"].add(data["instance"])
        seen["reviews"].add(data["reviews"]["version"])
    progress(f"productpage instances {sorted(seen['productpage'])}, reviews {sorted(seen['reviews'])}")
    assert len(seen["productpage"]) >= 2, "the gateway should spread requests over the VMs"
    assert len(seen["reviews"]) >= 2
    # the apps listen on loopback only: from outside the VM, only Envoy's mTLS port answers
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{lab['hosts']['vm1']}:9080/health", timeout=3)


def test_units_are_active_on_every_host(lab):
    units = {"cp": "consul-double meshcore-control-plane meshcore-agent", "cp2": "meshcore-control-plane"}
    for vm in VMS:
        units[vm] = ("meshcore-agent bookinfo-productpage-{vm} bookinfo-details-{vm} bookinfo-ratings-{vm} "
                     "bookinfo-reviews-v{n}").format(vm=vm, n=vm[-1])
    for host, names in units.items():
        out = ssh(lab, host, f"systemctl is-active {names}").stdout.split()
        assert out == ["active"] * len(names.split()), f"{host}: {dict(zip(names.split(), out))}"
        assert ssh(lab, host, "systemctl is-system-running", check=False).stdout.strip() in ("running", "degraded")


def cp_status(lab, host: str) -> dict:
    """``GET /v1/status`` of the control plane on ``host`` (its operator API on loopback, its token file)."""
    return json.loads(ssh(lab, host, "curl -fsS -m 5 -H \"Authorization: Bearer $(cat /var/lib/meshcore/admin.token)\" "
                               "http://127.0.0.1:15000/v1/status").stdout)["control_plane"]


def test_stopping_the_leading_control_plane_host_loses_no_request(lab):
    """Two replicas, one leader: `systemctl stop` the leader's unit under traffic, the other leads at once (the
    key is released), agents and Envoys on it fail over, no request is lost; started again, it follows."""
    wait_for("both replicas healthy", lambda: sorted(
        r["id"] for r in cp_status(lab, "cp")["replicas"] if r["healthy"]) == ["cp-15000", "cp2-15000"], timeout=60)
    # meshctl works on cp2 too: the role copied the operator token the first replica wrote on cp
    out = ssh(lab, "cp2", "meshctl status").stdout
    assert "leader" in out, out
    leader = cp_status(lab, "cp2")["leader"]
    host = leader.rsplit("-", 1)[0]
    other = next(h for h in CONTROL_PLANES if h != host)
    client = Client(lab)
    client.start()
    try:
        wait_for("traffic flowing", lambda: client.ok >= 10, timeout=30)
        t0 = time.monotonic()
        ssh(lab, host, "systemctl stop meshcore-control-plane")
        wait_for(f"{other} to lead", lambda: cp_status(lab, other)["leader"] == f"{other}-15000", timeout=30)
        progress(f"{host} (leader) stopped -> {other} leads {time.monotonic() - t0:.1f}s later")
        seen = client.ok
        wait_for("traffic while one control plane host is down", lambda: client.ok >= seen + 40, timeout=60)
        ssh(lab, host, "systemctl start meshcore-control-plane")
        wait_for(f"{host} healthy again, following {other}", lambda: cp_status(lab, host)["leader"] == f"{other}-15000"
                 and all(r["healthy"] for r in cp_status(lab, host)["replicas"]), timeout=60)
        seen = client.ok
        wait_for("traffic after the restart", lambda: client.ok >= seen + 20, timeout=60)
    finally:
        client.stop.set()
        client.join(15)
    progress(f"control plane host stopped and started under traffic: {client.ok} pages, "
             f"{len(client.failures)} failures")
    assert client.failures == [], client.failures[:10]


def test_systemctl_kill_of_the_agent_recovers_within_seconds(lab):
    before = ssh(lab, "vm1", "systemctl show -p MainPID --value meshcore-agent").stdout.strip()
    t0 = time.monotonic()
    ssh(lab, "vm1", "systemctl kill meshcore-agent")
    def back():
        pid = ssh(lab, "vm1", "systemctl show -p MainPID --value meshcore-agent").stdout.strip()
        active = ssh(lab, "vm1", "systemctl is-active meshcore-agent", check=False).stdout.strip()
        return pid not in ("0", before) and active == "active" and envoy_ready(lab, "vm1")
    wait_for("agent and Envoy back on vm1", back, timeout=30)
    progress(f"agent killed -> active with Envoy ready in {time.monotonic() - t0:.1f}s")
    wait_for("mesh serves", lambda: mesh_serves(lab), timeout=15)


def test_kill_of_envoy_recovers_within_seconds(lab):
    agent = ssh(lab, "vm2", "systemctl show -p MainPID --value meshcore-agent").stdout.strip()
    envoy = ssh(lab, "vm2", f"pgrep -P {agent} -f envoy").stdout.split()[0]
    t0 = time.monotonic()
    ssh(lab, "vm2", f"kill -9 {envoy}")
    def back():
        pids = ssh(lab, "vm2", f"pgrep -P {agent} -f envoy", check=False).stdout.split()
        return pids and pids[0] != envoy and envoy_ready(lab, "vm2")
    wait_for("Envoy restarted by the agent on vm2", back, timeout=20)
    progress(f"envoy killed -> ready again in {time.monotonic() - t0:.1f}s (agent pid unchanged)")
    assert ssh(lab, "vm2", "systemctl show -p MainPID --value meshcore-agent").stdout.strip() == agent
    wait_for("mesh serves", lambda: mesh_serves(lab), timeout=15)


def test_reboot_brings_the_vm_back_without_a_new_join_token(lab):
    tokens_before = ssh(lab, "cp", "curl -fsS -H \"Authorization: Bearer $(cat /var/lib/meshcore/admin.token)\" http://127.0.0.1:15000/v1/tokens").stdout
    serial = ssh(lab, "vm3", "openssl x509 -noout -serial -in /var/lib/meshcore-agent/node.crt 2>/dev/null "
                 "|| sha256sum /var/lib/meshcore-agent/node.crt").stdout
    assert ssh(lab, "vm3", "cat /var/lib/meshcore-agent/join-token").stdout.strip() == "", "token not consumed"
    boot_id = ssh(lab, "vm3", "cat /proc/sys/kernel/random/boot_id").stdout.strip()
    t0 = time.monotonic()
    ssh(lab, "vm3", "systemctl reboot", check=False, timeout=20)
    def booted_again():
        out = ssh(lab, "vm3", "cat /proc/sys/kernel/random/boot_id; systemctl is-system-running --wait",
                  check=False, timeout=90).stdout.split()
        return len(out) == 2 and out[0] != boot_id and out[1] in ("running", "degraded")
    wait_for("vm3 booted again (new boot id)", booted_again, timeout=120, interval=1)
    wait_for("agent active and Envoy ready on vm3", lambda: envoy_ready(lab, "vm3"), timeout=60)
    progress(f"vm3 rebooted -> back in the mesh in {time.monotonic() - t0:.1f}s")
    boots = ssh(lab, "vm3", "journalctl --list-boots --no-pager | wc -l", check=False).stdout.strip()
    log = ssh(lab, "vm3", "journalctl -b -u meshcore-agent --no-pager -o cat").stdout
    assert "no join needed" in log, log[-2000:]
    assert "joined the mesh" not in log
    assert ssh(lab, "vm3", "openssl x509 -noout -serial -in /var/lib/meshcore-agent/node.crt 2>/dev/null "
               "|| sha256sum /var/lib/meshcore-agent/node.crt").stdout == serial
    assert ssh(lab, "cp", "curl -fsS -H \"Authorization: Bearer $(cat /var/lib/meshcore/admin.token)\" http://127.0.0.1:15000/v1/tokens").stdout == tokens_before
    progress(f"boots recorded on vm3: {boots}")
    wait_for("reviews v3 (on vm3) served again", lambda: any(
        page(lab)["reviews"].get("version") == "v3" for _ in range(10)), timeout=60)


def test_second_site_run_changes_nothing(lab):
    t0 = time.monotonic()
    proc = run_playbook(lab, "site.yml")
    assert proc.returncode == 0, proc.stdout[-4000:]
    stats = recap(proc.stdout)
    progress(f"second site.yml in {time.monotonic() - t0:.0f}s: {stats}")
    assert stats and all(s["changed"] == 0 for s in stats.values()), proc.stdout[-4000:]


def test_check_diff_mode_works_and_reports_no_changes(lab):
    proc = run_playbook(lab, "site.yml", "--check", "--diff")
    assert proc.returncode == 0, proc.stdout[-4000:]
    stats = recap(proc.stdout)
    assert all(s["changed"] == 0 for s in stats.values()), proc.stdout[-4000:]


class Client(threading.Thread):
    """Keeps sending requests through the ingress; counts answers that are not a whole page."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data = page(self.lab, timeout=10)
                if "error" in data["details"] or "error" in data["reviews"]:
                    self.failures.append(f"degraded page: {json.dumps(data)[:300]}")
                else:
                    self.ok += 1
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                self.failures.append(f"{time.strftime('%H:%M:%S')} {exc!r}")
            time.sleep(0.05)


def test_upgrade_rolls_a_new_build_while_a_client_loses_nothing(lab):
    version = f"lab{int(time.time())}"
    wheelhouse = LAB_STATE / f"wheelhouse-{version}"
    env = dict(os.environ, PYTHON=sys.executable)
    subprocess.run([str(ROOT / "ansible" / "scripts" / "build-wheelhouse.sh"), str(ROOT), str(wheelhouse), version],
                   check=True, env=env, capture_output=True, timeout=300)
    new = next(wheelhouse.glob("meshcore-*.whl")).name.split("-")[1]
    assert new.endswith("+" + version)
    gateway_agent = ssh(lab, "cp", "systemctl show -p MainPID --value meshcore-agent").stdout.strip()
    client = Client(lab)
    client.start()
    t0 = time.monotonic()
    # everything in one run, the gateway host (cp) included: its Envoy is handed over, not drained
    proc = run_playbook(lab, "upgrade.yml", "-e", f"meshcore_common_wheelhouse={wheelhouse}")
    client.stop.set()
    client.join(15)
    progress(f"upgrade.yml (control plane, vm1..vm3, gateway) in {time.monotonic() - t0:.0f}s; client: "
             f"{client.ok} pages, {len(client.failures)} failures")
    assert proc.returncode == 0, proc.stdout[-5000:]
    for host in (*CONTROL_PLANES, *VMS):
        got = ssh(lab, host, "/opt/meshcore/venv/bin/python -c \"import importlib.metadata as m; "
                  "print(m.version('meshcore'))\"").stdout.strip()
        assert got == new, f"{host} runs {got}, expected {new}"
    for host in ("cp", *VMS):
        assert ssh(lab, host, "systemctl is-active meshcore-agent").stdout.strip() == "active"
    order = re.findall(r"TASK \[Drain this VM.*?\]\s*\*+\s*\n\w+: \[(\w+)\]", proc.stdout)
    assert order == list(VMS), f"VMs were not upgraded one at a time in order: {order}"
    settled = re.findall(r"TASK \[Let agents and Envoys settle[^\]]*\][^\n]*\n(?:(?!TASK).*\n)*?\w+: \[(\w+)\]",
                         proc.stdout)
    assert settled == list(CONTROL_PLANES), f"the control plane hosts were not upgraded one at a time: {settled}"
    # the gateway's agent runs the new build, and its Envoy was hot-restarted rather than stopped
    assert ssh(lab, "cp", "systemctl show -p MainPID --value meshcore-agent").stdout.strip() != gateway_agent
    assert re.search(r"RUNNING HANDLER \[meshcore_agent : Hand Envoy over[^\]]*\]\s*\*+\s*\nchanged: \[cp\]", proc.stdout), \
        "the gateway's Envoy was not handed over"
    record = json.loads(ssh(lab, "cp", "cat /var/lib/meshcore-agent/envoy/envoy.json").stdout)
    assert record["epoch"] >= 1, record
    assert client.ok > 20
    assert client.failures == [], client.failures[:10]
    wait_for("mesh serves after the upgrade", lambda: mesh_serves(lab), timeout=30)


# ------------------------------------------------------------------ fleet operations and CA rotation

def meshctl_fleet(*args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """``meshctl fleet ...`` / ``meshctl bug-report ...`` (through meshcore.cli.fleet until main.py wires it)."""
    meshctl = BIN / "meshctl"
    wired = meshctl.exists() and "fleet" in subprocess.run([str(meshctl), "--help"], capture_output=True,
                                                           text=True).stdout
    cmd = [str(meshctl)] if wired else [sys.executable, "-m", "meshcore.cli.fleet"]
    return subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_fleet_status_lists_every_host_with_active_units_and_cert_expiry(lab):
    wait_for("mesh serves", lambda: mesh_serves(lab), timeout=60)
    t0 = time.monotonic()
    proc = meshctl_fleet("fleet", "status", "-i", lab["inventory"], "-o", "json")
    progress(f"meshctl fleet status over {len(lab['hosts'])} hosts in {time.monotonic() - t0:.1f}s")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    hosts = {h["host"]: h for h in json.loads(proc.stdout)}
    assert set(hosts) == {*CONTROL_PLANES, *VMS}
    cp2 = hosts.pop("cp2")  # a control plane replica only: no agent, no Envoy
    assert cp2["error"] is None and cp2["units"]["control-plane"] == "active", cp2
    assert cp2["units"]["agent"] == "not-installed"
    for name, h in hosts.items():
        assert h["error"] is None and h["address"] == lab["hosts"][name], h
        assert h["units"]["agent"] == "active" and h["units"]["envoy"] == "active", (name, h["units"])
        assert h["envoy"]["ready"] is True
        assert h["certificates"] and h["not_after"], h
        assert all(c["not_after"] for c in h["certificates"])
    assert hosts["cp"]["units"]["control-plane"] == "active"
    assert all(hosts[vm]["units"]["control-plane"] == "not-installed" for vm in VMS)
    # what the agent wrote is what the control plane issued
    serial = ssh(lab, "vm1", "cat /var/lib/meshcore-agent/status.json").stdout
    assert json.loads(serial)["node_certificate"]["not_after"] in {c["not_after"] for c in hosts["vm1"]["certificates"]}


def test_fleet_logs_and_restart(lab):
    proc = meshctl_fleet("fleet", "logs", "vm2", "-i", lab["inventory"], "-n", "20")
    assert proc.returncode == 0, proc.stderr
    assert 0 < len(proc.stdout.splitlines()) <= 21 and "meshcore" in proc.stdout.lower()
    before = ssh(lab, "vm2", "systemctl show -p MainPID --value meshcore-agent").stdout.strip()
    proc = meshctl_fleet("fleet", "restart", "vm2", "-i", lab["inventory"], "--service", "agent")
    assert proc.returncode == 0, proc.stderr
    assert "active" in proc.stdout
    assert ssh(lab, "vm2", "systemctl show -p MainPID --value meshcore-agent").stdout.strip() != before
    wait_for("Envoy ready on vm2 after the restart", lambda: envoy_ready(lab, "vm2"), timeout=60)


def test_bug_report_collects_every_host_without_private_keys(lab, tmp_path):
    out = tmp_path / "bug.tar.gz"
    t0 = time.monotonic()
    proc = meshctl_fleet("bug-report", "-i", lab["inventory"], "--out", str(out))
    progress(f"meshctl bug-report in {time.monotonic() - t0:.1f}s: {out.stat().st_size if out.exists() else 0} bytes")
    assert proc.returncode == 0, proc.stderr[-3000:]
    import tarfile
    with tarfile.open(out) as tar:
        members = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
        blobs = {n: tar.extractfile(m).read() for n, m in members.items()}
    for host in ("cp", *VMS):
        for f in ("fleet-status.json", "units.txt", "journal-agent.txt", "agent-status.json",
                  "envoy-config_dump.json", "certificates.json"):
            assert f"hosts/{host}/{f}" in members, (host, f, sorted(members))
        certs = json.loads(blobs[f"hosts/{host}/certificates.json"])
        assert any(c.get("uri_sans") for items in certs.values() for c in items), certs
    assert "hosts/cp/control-plane-status.json" in members and "hosts/cp/journal-control-plane.txt" in members
    assert "hosts/cp2/control-plane-status.json" in members  # meshctl on cp2 found the copied operator token
    assert "roots" in json.loads(blobs["hosts/cp/control-plane-ca.json"])  # the operator API answered (token)
    assert json.loads(blobs["hosts/vm1/envoy-config_dump.json"])["configs"]
    assert [n for n, b in blobs.items() if b"PRIVATE KEY" in b] == []
    token_files = ssh(lab, "vm1", "cat /var/lib/meshcore-agent/join-token", check=False).stdout.strip()
    if token_files:
        assert [n for n, b in blobs.items() if token_files.encode() in b] == []


def _presented_chain(host_addr: str, port: int) -> list[str]:
    proc = subprocess.run(["openssl", "s_client", "-connect", f"{host_addr}:{port}", "-showcerts"],
                          input="", capture_output=True, text=True, timeout=20)
    return re.findall(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", proc.stdout, re.S)


def _chains_to(chain: list[str], bundle: str, tmp_path: Path) -> bool:
    (tmp_path / "leaf.pem").write_text(chain[0] + "\n")
    (tmp_path / "untrusted.pem").write_text("\n".join(chain[1:]) + "\n")
    (tmp_path / "roots.pem").write_text(bundle)
    args = ["openssl", "verify", "-CAfile", str(tmp_path / "roots.pem")]
    if chain[1:]:
        args += ["-untrusted", str(tmp_path / "untrusted.pem")]
    return subprocess.run([*args, str(tmp_path / "leaf.pem")], capture_output=True, text=True).returncode == 0


def test_rotate_ca_yml_while_a_client_loses_nothing(lab, tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed here")
    old_bundle = ssh(lab, "cp", "cat /var/lib/meshcore/ca/bundle.pem").stdout
    chain = _presented_chain(lab["hosts"]["vm1"], 21000)
    assert chain and _chains_to(chain, old_bundle, tmp_path), "vm1's inbound leaf should chain to the current root"
    wait_for("mesh serves", lambda: mesh_serves(lab), timeout=30)
    client = Client(lab)
    client.start()
    t0 = time.monotonic()
    proc = run_playbook(lab, "rotate-ca.yml", "-e", "meshcore_rotate_ca_timeout=6m")
    client.stop.set()
    client.join(15)
    progress(f"rotate-ca.yml in {time.monotonic() - t0:.0f}s; client: {client.ok} pages, "
             f"{len(client.failures)} failures; {recap(proc.stdout)}")
    assert proc.returncode == 0, proc.stdout[-5000:]
    new_bundle = ssh(lab, "cp", "cat /var/lib/meshcore/ca/bundle.pem").stdout
    assert new_bundle.count("BEGIN CERTIFICATE") == 1 and new_bundle != old_bundle
    for vm in VMS:
        assert ssh(lab, vm, "cat /etc/meshcore/bundle.pem").stdout == new_bundle, f"{vm} lacks the new bundle"
    chain = wait_for("vm1 presents a leaf from the new root", lambda: (
        c if (c := _presented_chain(lab["hosts"]["vm1"], 21000)) and _chains_to(c, new_bundle, tmp_path) else None),
        timeout=60)
    assert not _chains_to(chain, old_bundle, tmp_path)
    assert client.ok > 20
    assert client.failures == [], client.failures[:10]
    # the bundle is pushed idempotently: only redistributing changes nothing
    proc = run_playbook(lab, "rotate-ca.yml", "-e", "meshcore_rotate_ca_start=false")
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert all(s["changed"] == 0 for s in recap(proc.stdout).values()), proc.stdout[-4000:]
    # an agent restarted after the rotation still reaches the control plane with the pushed bundle
    ssh(lab, "vm3", "systemctl restart meshcore-agent")
    wait_for("Envoy ready on vm3 after a restart on the new root", lambda: envoy_ready(lab, "vm3"), timeout=60)
    wait_for("mesh serves", lambda: mesh_serves(lab), timeout=30)


# ------------------------------------------------------- meshctl install: production profile, default deny

def meshctl_install(lab, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(BIN / "meshctl"), "install", "-i", lab["inventory"], *args, "-o", "json"],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    progress(f"meshctl install {' '.join(args)}: exit {proc.returncode}")
    return proc


def gateway_status(lab) -> int:
    try:
        with urllib.request.urlopen(lab["ingress"], timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def mesh_resources(lab, kind: str) -> dict[str, dict]:
    out = ssh(lab, "cp", f"MESHCORE_TOKEN_FILE=/var/lib/meshcore/admin.token meshctl get {kind} -o json").stdout
    return {f"{d['metadata']['namespace']}/{d['metadata']['name']}": d for d in json.loads(out)}


INSTALL = ("--set", "profile=production", "--set", "resources.agent.tasksMax=640",
           "--set", "resources.controlPlane.memoryMax=3G")


def test_meshctl_install_production_with_default_deny(lab):
    wait_for("mesh serves", lambda: mesh_serves(lab), timeout=60)
    t0 = time.monotonic()
    proc = meshctl_install(lab, *INSTALL, "--set", "security.defaultDeny=true")
    progress(f"production install with default deny in {time.monotonic() - t0:.0f}s")
    assert proc.returncode == 0, proc.stderr[-5000:] + proc.stdout[-2000:]
    summary = json.loads(proc.stdout)
    assert summary["ok"] is True and summary["profile"] == "production" and summary["failed_hosts"] == []
    assert {"cp", *VMS} <= set(summary["hosts"]) and all(h["failed"] == 0 for h in summary["hosts"].values())
    assert "PLAY Control plane" in proc.stderr and "meshcore_mesh_policy : Apply the mesh-wide policy" in proc.stderr
    # the switch: the mesh-wide deny-all, and the STRICT PeerAuthentication, both marked as the playbook's
    deny = mesh_resources(lab, "AuthorizationPolicy")["meshcore-system/deny-all"]
    assert deny["spec"] == {} and deny["metadata"]["labels"]["meshcore.io/managed-by"] == "meshcore-ansible"
    assert mesh_resources(lab, "PeerAuthentication")["meshcore-system/default"]["spec"] == {"mtls": {"mode": "STRICT"}}
    # a call that no ALLOW policy opens is refused: the gateway -> productpage
    wait_for("403 through the gateway under default deny", lambda: gateway_status(lab) == 403, timeout=60)
    # production units: the limits from the values, as systemd applies them
    show = "systemctl show -p MemoryMax -p TasksMax -p LimitNOFILE --value"
    assert ssh(lab, "vm1", f"{show} meshcore-agent").stdout.split() == [str(1 << 30), "640", "65536"]
    assert ssh(lab, "cp", f"{show} meshcore-control-plane").stdout.split() == [str(3 << 30), "1024", "65536"]
    env = ssh(lab, "cp", "cat /etc/meshcore/control-plane.env").stdout
    assert "MESHCORE_ACCESS_LOG=stdout" in env and "MESHCORE_LEAF_TTL=24h" in env
    for host in ("cp", "vm1"):
        assert ssh(lab, host, "systemctl is-active meshcore-agent").stdout.strip() == "active"


def test_meshctl_install_default_deny_off_removes_it_and_nothing_else_changes(lab):
    t0 = time.monotonic()
    proc = meshctl_install(lab, *INSTALL, "--set", "security.defaultDeny=false", "--limit", "meshcore_control_plane")
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "meshcore-system/deny-all" not in mesh_resources(lab, "AuthorizationPolicy")
    assert "meshcore-system/default" in mesh_resources(lab, "PeerAuthentication")  # still wanted: kept
    wait_for("the mesh answers again without default deny", lambda: mesh_serves(lab), timeout=60)
    progress(f"default deny lifted in {time.monotonic() - t0:.0f}s")
    # the same values but the switch: only the policy file and the deletion change (the rest is idempotent)
    changed = re.findall(r"^\s+cp\s+changed\s+(.+)$", proc.stderr, re.M)
    assert changed == ["meshcore_mesh_policy : Write the mesh-wide policy documents",
                       "meshcore_mesh_policy : Delete what this role applied and is no longer wanted "
                       "(never a resource without its label)"], proc.stderr[-4000:]
    stats = json.loads(proc.stdout)["hosts"]
    assert sorted(stats) == ["cp", "cp2"] and stats["cp"]["changed"] == 2 and stats["cp"]["failed"] == 0, stats
    assert stats["cp2"]["changed"] == 0 and stats["cp2"]["failed"] == 0, stats  # the policy is applied once


# ------------------------------------------------ two datacenters' networks (docs/multi-dc.md "In the lab")

def _reaches(lab, host_addr: str, target: str, port: int = 22) -> bool:
    """Whether a TCP connection from the lab host at ``host_addr`` to ``target:port`` (sshd) opens."""
    probe = (f"python3 -c \"import socket,sys\ntry: socket.create_connection(('{target}', {port}), 3).close()\n"
             f"except OSError as e: sys.exit(str(e))\"")
    proc = subprocess.run(["ssh", "-i", lab["ssh_key"], "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=no",
                           "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-o", "ConnectTimeout=5",
                           f"root@{host_addr}", probe], capture_output=True, text=True, timeout=60)
    return proc.returncode == 0


# ---------------------------------------------------------------- two datacenters (last: they add four hosts)

RATINGS_FAILOVER = """
apiVersion: networking.mesh.io/v1beta1
kind: DestinationRule
metadata: {name: ratings-failover, namespace: default}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        failover: [{from: dc1, to: dc2}]
    outlierDetection: {consecutive5xxErrors: 1, interval: 1s, baseEjectionTime: 2s, maxEjectionPercent: 100}
"""
DENY_REVIEWS = """
apiVersion: security.mesh.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: ratings-deny-reviews, namespace: default}
spec:
  selector: {matchLabels: {app: ratings}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/reviews"]}}]
"""


@pytest.fixture(scope="module")
def dc2(lab):
    """`lab/deploy.py --datacenters 2`: gw1 in dc1; cp3 (control plane, Consul stand-in, trust domain dc2.lab), vm4
    (ratings) and gw2 in dc2; site.yml over all nine hosts adds the datacenter to the running mesh."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(ROOT / "lab" / "deploy.py"), "--datacenters", "2"],
                          capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        pytest.fail(f"lab/deploy.py --datacenters 2 failed (exit {proc.returncode}):\n"
                    + "\n".join(proc.stderr.splitlines()[-80:]))
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    progress(f"second datacenter deployed in {time.monotonic() - t0:.0f}s: {info['nets']}, wan {info['wan']}")
    return {**lab, **info, "deploy_output": proc.stderr}


def meshctl_on(lab, host: str, command: str, stdin: str = "") -> str:
    body = f"MESHCORE_TOKEN_FILE=/var/lib/meshcore/admin.token meshctl {command}"
    if stdin:
        body += f" <<'EOF'\n{stdin.strip()}\nEOF"
    return ssh(lab, host, body).stdout


def ratings_seen(lab, pages: int = 12) -> list[str]:
    """The ratings instance (or error) behind each page whose reviews called ratings (v2, v3)."""
    seen = []
    for _ in range(pages):
        reviews = page(lab)["reviews"]
        if reviews.get("version") in ("v2", "v3"):
            ratings = reviews.get("ratings", {})
            seen.append(ratings.get("instance") or f"error {ratings.get('status')}")
    return seen


class RatingsClient(threading.Thread):
    """Pages through the ingress without pause; records (time, ratings instance or error) of every v2/v3 page."""

    def __init__(self, lab):
        super().__init__(daemon=True)
        self.lab = lab
        self.stop = threading.Event()
        self.answers: list[tuple[float, str]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                reviews = page(self.lab, timeout=10)["reviews"]
                if "error" in reviews:
                    got = f"error reviews {reviews.get('status')}"
                elif reviews.get("version") not in ("v2", "v3"):
                    continue
                else:
                    ratings = reviews.get("ratings", {})
                    got = ratings.get("instance") or f"error {ratings.get('status')} {ratings.get('reason', '')[:80]}"
            except Exception as exc:  # noqa: BLE001 - every failure is what the test counts
                got = f"error {exc!r}"
            self.answers.append((time.monotonic(), got))
            time.sleep(0.05)

    def since(self, t: float) -> list[str]:
        return [got for at, got in self.answers if at >= t]


def envoy_admin(lab, host: str, path: str) -> str:
    return ssh(lab, host, f"curl -fsS -m 5 http://127.0.0.1:19000{path}").stdout


def test_site_yml_adds_a_second_datacenter_with_federated_trust_and_gateways(dc2):
    deployed = recap(dc2["deploy_output"])
    assert {"gw1", "gw2", "cp3", "vm4", "cp"} <= set(deployed) and all(r["failed"] == 0 for r in deployed.values())
    # each control plane imported the other's trust domain (role meshcore_trust_federation)
    dc1_trusts = json.loads(meshctl_on(dc2, "cp", "trust-bundle list -o json"))
    dc2_trusts = json.loads(meshctl_on(dc2, "cp3", "trust-bundle list -o json"))
    assert [d["trust_domain"] for d in dc1_trusts] == ["dc2.lab"]
    assert [d["trust_domain"] for d in dc2_trusts] == ["cluster.local"]
    assert json.loads(meshctl_on(dc2, "cp3", "ca status -o json"))["trust_domain"] == "dc2.lab"
    for gw in ("gw1", "gw2"):
        wait_for(f"{gw}'s Envoy ready", lambda gw=gw: envoy_ready(dc2, gw), timeout=120)
    # the gateways hold no key and terminate no TLS: no listener of theirs has a transport socket
    for gw in ("gw1", "gw2"):
        listeners = json.loads(envoy_admin(dc2, gw, "/config_dump?resource=dynamic_listeners"))
        text = json.dumps(listeners)
        assert "tls_inspector" in text and "DownstreamTlsContext" not in text and "transport_socket" not in text, gw
    # a second run changes nothing on the hosts the second datacenter added (the one-datacenter hosts' second run
    # is test_second_site_run_changes_nothing; the suite's time budget leaves one per host)
    again = run_playbook(dc2, "site.yml", "--limit", "dc_dc2:gw1")
    totals = recap(again.stdout)
    assert again.returncode == 0 and all(r["changed"] == 0 and r["failed"] == 0 for r in totals.values()), (
        {h: r for h, r in totals.items() if r["changed"] or r["failed"]}, again.stdout[-3000:])
    assert {"gw1", "gw2", "cp3", "vm4"} <= set(totals)


def test_two_datacenter_networks_meet_only_on_the_wan(dc2):
    """A dc1 VM reaches no dc2 host and no WAN address; the gateways' hosts reach each other over the WAN."""
    hosts, wan = dc2["hosts"], dc2["wan"]
    assert dc2["nets"]["vm1"] == "dc1" and dc2["nets"]["vm4"] == "dc2" and set(wan) == {"cp", "gw1", "cp3", "gw2"}
    assert hosts["vm4"].rsplit(".", 1)[0] != hosts["vm1"].rsplit(".", 1)[0] != wan["gw1"].rsplit(".", 1)[0]
    expect = {  # (from, to address): reachable
        ("vm1", hosts["gw1"]): True, ("gw1", wan["gw2"]): True, ("gw2", hosts["vm4"]): True,
        ("vm4", hosts["gw2"]): True,
        ("vm1", hosts["vm4"]): False, ("vm1", hosts["gw2"]): False, ("vm1", wan["gw2"]): False,
        ("vm4", hosts["vm1"]): False, ("vm4", wan["gw1"]): False, ("gw1", hosts["vm4"]): False,
    }
    got = {key: _reaches(dc2, hosts[key[0]], key[1]) for key in expect}
    assert got == expect, {k: v for k, v in got.items() if v != expect[k]}
    # this machine reaches both datacenters (ssh, tests), never the WAN
    assert ssh(dc2, "vm4", "cat /etc/hostname").stdout.strip() == "vm4"


def test_ratings_fail_over_to_dc2_through_both_gateways_under_traffic_and_back(dc2):
    """dc1's DestinationRule fails ratings over to dc2: with ratings stopped on vm1..vm3, reviews (dc1, SVIDs of
    cluster.local) reach vm4's ratings (dc2.lab) through gw1 and gw2, end to end mTLS, and no request fails once
    the outlier detection window has passed; ratings started again, traffic comes back to dc1 without a failure.
    A dc2 AuthorizationPolicy naming reviews' principal answers 403: dc2's sidecar saw dc1's SPIFFE ID. dc1's root
    rotation (rotate-ca.yml, held while dc2 imports the new root) fails no call into dc2."""
    meshctl_on(dc2, "cp", "apply -f -", RATINGS_FAILOVER)
    dc1_ratings = {f"ratings-vm{n}" for n in (1, 2, 3)}
    wait_for("ratings answered in dc1 only", lambda: set(ratings_seen(dc2)) <= dc1_ratings, timeout=120)
    gw2_before = gateway_cx(dc2, "gw2", "mesh_gateway_service_ratings|dc2")
    client = RatingsClient(dc2)
    client.start()
    try:
        wait_for("traffic flowing", lambda: len(client.answers) >= 10, timeout=60)
        stopped = time.monotonic()
        for n in (1, 2, 3):
            ssh(dc2, f"vm{n}", f"systemctl stop bookinfo-ratings-vm{n}")
        wait_for("a ratings answer from dc2", lambda: "ratings-vm4" in client.since(stopped), timeout=120)
        first_dc2 = next(at for at, got in client.answers if at >= stopped and got == "ratings-vm4")
        # outlier detection ejects a failing instance for 2 s, 4 s, ...; until its Consul check (every 5 s) says
        # critical and the catalog change reaches the sidecars, an instance back from ejection fails once more
        wait_until(stopped + 5)
        report_checks(dc2, "critical")
        wait_for("dc1's ratings critical in Consul", lambda: dc1_ratings_critical(dc2) == dc1_ratings, timeout=60)
        critical = time.monotonic()
        settled = max(first_dc2 + 3, critical + 2)  # the ejection window (interval 1 s + 2 s), the push after it
        wait_for("traffic after the failover", lambda: len(client.since(settled)) >= 40, timeout=120)
        after = client.since(settled)
        failed = [a for a in client.since(stopped) if a.startswith("error")]
        progress(f"ratings stopped in dc1: first dc2 answer {first_dc2 - stopped:.1f}s later, critical in Consul "
                 f"{critical - stopped:.1f}s later; {len(client.since(stopped))} answers since ({len(failed)} failed "
                 f"before the window), {len(after)} after the window: {sorted(set(after))}")
        assert set(after) == {"ratings-vm4"}, [a for a in after if a != "ratings-vm4"][:10]
        assert gateway_cx(dc2, "gw2", "mesh_gateway_service_ratings|dc2") > gw2_before

        # dc2's sidecar sees dc1's reviews by its SPIFFE ID: a DENY naming it, applied in dc2, answers 403
        meshctl_on(dc2, "cp3", "apply -f -", DENY_REVIEWS)
        denied = time.monotonic()
        wait_for("403 from dc2's ratings", lambda: "error 403" in " ".join(client.since(denied)), timeout=60)
        meshctl_on(dc2, "cp3", "delete AuthorizationPolicy ratings-deny-reviews -n default")
        allowed = time.monotonic()
        wait_for("ratings allowed again", lambda: client.since(allowed)[-10:] == ["ratings-vm4"] * 10, timeout=60)

        # dc1 rotates its root while every ratings call crosses to dc2: rotate-ca.yml holds the rotation until
        # dc2's control plane has imported the two-root bundle, so vm4's sidecar trusts dc1's new certificates
        # before the first one is issued; after the finish dc2 holds dc1's new root alone
        old_roots = {r["sha256"] for r in json.loads(meshctl_on(dc2, "cp", "ca status -o json"))["roots"]}
        rotated = time.monotonic()
        proc = run_playbook(dc2, "rotate-ca.yml")
        during = client.since(rotated)
        progress(f"rotate-ca.yml over two datacenters in {time.monotonic() - rotated:.0f}s; {len(during)} answers, "
                 f"{sorted(set(during))}")
        assert proc.returncode == 0, proc.stdout[-4000:]
        totals = recap(proc.stdout)
        assert totals["cp3"]["changed"] == 2, totals  # dc1's two-root bundle imported, then its one-root bundle
        assert set(during) == {"ratings-vm4"}, [a for a in during if a != "ratings-vm4"][:10]
        new_roots = {r["sha256"] for r in json.loads(meshctl_on(dc2, "cp", "ca status -o json"))["roots"]}
        [dc1_in_dc2] = [d for d in json.loads(meshctl_on(dc2, "cp3", "trust-bundle list -o json"))
                        if d["trust_domain"] == "cluster.local"]
        assert {r["sha256"] for r in dc1_in_dc2["roots"]} == new_roots and not new_roots & old_roots

        back = time.monotonic()
        for n in (1, 2, 3):
            ssh(dc2, f"vm{n}", f"systemctl start bookinfo-ratings-vm{n}")
        wait_for("ratings answering on vm1..vm3", lambda: all(ssh(
            dc2, f"vm{n}", "curl -fsS -m 2 http://127.0.0.1:9083/health", check=False).returncode == 0
            for n in (1, 2, 3)), timeout=60)
        report_checks(dc2, "passing")
        wait_for("ratings back in dc1", lambda: set(client.since(time.monotonic() - 3)) <= dc1_ratings
                 and len(client.since(time.monotonic() - 3)) >= 5, timeout=120)
        failback = client.since(back)
        progress(f"ratings started in dc1 again: {len(failback)} answers during the fail-back, "
                 f"{sorted(set(failback))}")
        assert all(not a.startswith("error") for a in failback), [a for a in failback if a.startswith("error")][:10]
    finally:
        client.stop.set()
        client.join(15)
        for n in (1, 2, 3):
            ssh(dc2, f"vm{n}", f"systemctl start bookinfo-ratings-vm{n}", check=False)
        report_checks(dc2, "passing")
        meshctl_on(dc2, "cp3", "delete AuthorizationPolicy ratings-deny-reviews -n default --ignore-not-found")
        meshctl_on(dc2, "cp", "delete DestinationRule ratings-failover -n default")


def wait_until(moment: float) -> None:
    while time.monotonic() < moment:
        time.sleep(0.1)


def report_checks(lab, status: str) -> None:
    """What the Consul agents on vm1..vm3 report for their ratings checks. The stand-in does not run the VMs'
    HTTP checks (they dial the VM's loopback, where Consul's own agent would run them): the test sets their result
    in the catalog (PUT /v1/catalog/register with the check, Consul's API for it)."""
    for n in (1, 2, 3):
        body = {"Node": f"vm{n}", "Address": lab["hosts"][f"vm{n}"], "SkipNodeUpdate": True,
                "Check": {"Node": f"vm{n}", "CheckID": f"ratings-vm{n}-check", "Name": "ratings health",
                          "ServiceID": f"ratings-vm{n}", "Status": status,
                          "Output": f"HTTP GET http://127.0.0.1:9083/health: {status} (reported by the lab test)"}}
        req = urllib.request.Request(f"http://{lab['hosts']['cp']}:8500/v1/catalog/register", method="PUT",
                                     data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            assert r.status == 200


def dc1_ratings_critical(lab) -> set[str]:
    """The ratings instances dc1's Consul (the stand-in on cp) holds with a critical check."""
    with urllib.request.urlopen(f"http://{lab['hosts']['cp']}:8500/v1/health/service/ratings", timeout=5) as r:
        entries = json.loads(r.read())
    return {e["Service"]["ID"] for e in entries if any(c["Status"] == "critical" for c in e["Checks"])}


def gateway_cx(lab, gw: str, cluster_stat: str) -> int:
    """upstream_cx_total of a gateway cluster by its stat name (docs/multi-dc.md: alt_stat_name without dots)."""
    stats = envoy_admin(lab, gw, "/stats?filter=upstream_cx_total")
    return sum(int(line.rsplit(":", 1)[1]) for line in stats.splitlines()
               if line.startswith(f"cluster.{cluster_stat}.upstream_cx_total:"))
