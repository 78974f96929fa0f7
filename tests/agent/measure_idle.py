"""Measure an idle agent's CPU on a small real mesh (the e2e bookinfo topology, real Envoys).

Starts the mesh on free loopback ports, waits until it serves and ``--settle`` seconds more, then reports
each agent process's share of one core over ``--seconds`` (utime + stime from /proc, the agent only: its
Envoy runs in a session of its own and is not counted). With ``--py-spy DIR`` it also records a py-spy
profile (raw folded stacks, samples of the thread holding the GIL: where CPU goes) of the first agent over the window.
Prints figures; asserts nothing. Issue 11 item 7: at most 0.2% of one core averaged over 60 s.

Run: .venv/bin/python -m tests.agent.measure_idle [--seconds 60] [--settle 15] [--py-spy DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLK_TCK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def main(argv: list[str] | None = None) -> dict[str, float]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=60.0, help="the measurement window")
    p.add_argument("--settle", type=float, default=15.0, help="seconds after the mesh serves, before measuring")
    p.add_argument("--refresh", default="5s", help="the agents' --refresh-interval (5s as in bench_scale and the demo)")
    p.add_argument("--collect-interval", default="", help="the control plane's metrics collector interval (its "
                   "default, 5s, when empty; 1h: no scrapes in the window)")
    p.add_argument("--py-spy", type=Path, help="also record a py-spy flame graph of one agent into this folder")
    args = p.parse_args(argv)
    from tests.e2e._topology import running_mesh

    with tempfile.TemporaryDirectory(prefix="meshcore-idle-") as tmp, \
            running_mesh(Path(tmp), agent_refresh=args.refresh,
                                                 collect_interval=args.collect_interval) as mesh:
        agents = {p["name"]: p["pid"] for p in mesh.processes if p["name"].startswith("agent-")}
        print(f"mesh serving; {len(agents)} agents; settling {args.settle:.0f} s", flush=True)
        time.sleep(args.settle)
        spy = None
        if args.py_spy:
            args.py_spy.mkdir(parents=True, exist_ok=True)
            name, pid = next(iter(sorted(agents.items())))
            spy = subprocess.Popen([shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy")), "record", "--pid", str(pid), "--duration", str(int(args.seconds)),
                                    "--rate", "100", "--gil", "--format", "raw", "--threads",
                                    "-o", str(args.py_spy / f"{name}.txt")],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        before = {n: _cpu(pid) for n, pid in agents.items()}
        t0 = time.monotonic()
        time.sleep(args.seconds)
        wall = time.monotonic() - t0
        shares = {n: (_cpu(pid) - before[n]) / wall for n, pid in agents.items()}
        if spy is not None:
            spy.wait(timeout=args.seconds + 60)
    for n, share in sorted(shares.items()):
        print(f"{n:<24} {share * 100:6.3f}% of one core over {wall:.0f} s")
    mean = sum(shares.values()) / max(1, len(shares))
    print(f"{'mean':<24} {mean * 100:6.3f}%  (target: at most 0.2%)")
    return shares


if __name__ == "__main__":
    sys.exit(0 if main() is not None else 1)
