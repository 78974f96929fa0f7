"""Focused measurement of idle CPU (not a test): the control plane with N connected proxies, and an agent.

* ``cp``: a real :class:`~meshcore.controlplane.daemon.ControlPlane` in this process (file catalog of
  ``--proxies`` nodes with one service each, every listener on a free loopback port, the metrics
  collector at its default interval), ``--proxies`` proxies connected in process (the engine builds
  and caches their config), then nothing changes: the process's CPU over ``--seconds``.
* ``agent``: the e2e bookinfo mesh on free loopback ports (``tests/e2e/_topology.running_mesh``), the
  agents at ``--refresh`` (default: the agent's own default), then nothing changes: each agent's and
  each Envoy's CPU over ``--seconds``, read from ``/proc/<pid>/stat``.

Run: ``.venv/bin/python -m tests.controlplane.measure_idle cp --proxies 200``
     ``.venv/bin/python -m tests.controlplane.measure_idle agent [--refresh 5s]``
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of ``pid`` (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def _children(pid: int) -> list[int]:
    out = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    for task in tasks:
        try:
            out += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            pass
    return out


def _descendants(pid: int, comm: str) -> list[int]:
    """Descendants of ``pid`` whose command name is ``comm`` (Envoy may run under a wrapper)."""
    found, queue = [], _children(pid)
    while queue:
        child = queue.pop(0)
        try:
            if Path(f"/proc/{child}/comm").read_text().strip() == comm:
                found.append(child)
            queue += _children(child)
        except OSError:
            continue
    return found


def measure_cp(proxies: int, seconds: float, settle: float) -> dict:
    from meshcore.controlplane.daemon import ControlPlane, Settings
    from meshcore.snapshot import ProxyInfo

    with tempfile.TemporaryDirectory(prefix="meshcore-idle-") as tmp:
        root = Path(tmp)
        catalog = root / "consul.d"
        for n in range(proxies):
            d = catalog / f"vm{n}"
            d.mkdir(parents=True)
            (d / "node.json").write_text(json.dumps({"node_name": f"vm{n}", "advertise_addr": "127.0.0.1"}))
            up = [{"destination_name": f"svc{(n + 1) % proxies}", "local_bind_port": 20000}]
            (d / f"svc{n}.json").write_text(json.dumps({"service": {
                "name": f"svc{n}", "id": f"svc{n}", "port": 8000,
                "connect": {"sidecar_service": {"port": 21000, "proxy": {"upstreams": up}}}}}))
        settings = Settings(state_dir=root / "state", catalog=f"files:{catalog}", xds_bind="127.0.0.1:0",
                            api_bind="127.0.0.1:0", http_bind="127.0.0.1:0")
        cp = ControlPlane(settings, os.urandom(32))
        cp.start()
        try:
            deadline = time.monotonic() + 60
            while cp.engine.catalog() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            for n in range(proxies):  # no admin or metrics address: nothing to scrape, as synthetic ADS clients
                cp.engine.proxy_connected(ProxyInfo(node=f"vm{n}", secrets_dir="/tmp/secrets"))
            time.sleep(settle)
            threads = len(os.listdir("/proc/self/task"))
            c0, t0 = proc_cpu(os.getpid()), time.monotonic()
            time.sleep(seconds)
            cpu, wall = proc_cpu(os.getpid()) - c0, time.monotonic() - t0
        finally:
            cp.stop()
    return {"what": "control plane idle", "proxies": proxies, "seconds": round(wall, 1),
            "cpu_percent_of_core": round(100 * cpu / wall, 3), "threads": threads}


def measure_agent(seconds: float, settle: float, refresh: str) -> dict:
    from tests.e2e._topology import running_mesh

    layout = {"agent_refresh": refresh} if refresh else {}
    with tempfile.TemporaryDirectory(prefix="meshcore-idle-") as tmp:
        with running_mesh(Path(tmp), **layout) as mesh:
            time.sleep(settle)
            agents = {p["name"]: p["pid"] for p in mesh.processes if p["name"].startswith("agent-")}
            envoys = {}
            for name, pid in agents.items():
                found = _descendants(pid, "envoy")
                if found:
                    envoys[name.replace("agent-", "envoy-")] = found[0]
            cp = {p["name"]: p["pid"] for p in mesh.processes if p["name"] == "controlplane"}
            pids = {**agents, **envoys, **cp}
            before = {n: proc_cpu(p) for n, p in pids.items()}
            t0 = time.monotonic()
            time.sleep(seconds)
            wall = time.monotonic() - t0
            after = {n: proc_cpu(p) for n, p in pids.items()}
    per = {n: round(100 * (after[n] - before[n]) / wall, 3) for n in sorted(pids)}
    agent_values = [per[n] for n in agents]
    return {"what": "agent idle", "refresh": refresh or "default", "seconds": round(wall, 1),
            "cpu_percent_of_core": per, "agent_mean": round(sum(agent_values) / len(agent_values), 3),
            "agent_max": max(agent_values)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("cp", "agent"))
    p.add_argument("--proxies", type=int, default=200)
    p.add_argument("--seconds", type=float, default=60.0)
    p.add_argument("--settle", type=float, default=15.0, help="seconds to let start-up work finish first")
    p.add_argument("--refresh", default="", help="agent --refresh-interval (default: the agent's default)")
    args = p.parse_args(argv)
    if args.what == "cp":
        result = measure_cp(args.proxies, args.seconds, args.settle)
    else:
        result = measure_agent(args.seconds, args.settle, args.refresh)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
