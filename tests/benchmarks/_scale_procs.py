"""Processes of the scale benchmark and what /proc says about them.

Every process is started in its own process group with a parent-death signal (``PR_SET_PDEATHSIG``,
SIGTERM), so it stops when the benchmark stops, also when the benchmark is killed with SIGKILL; the
normal path stops each group with SIGTERM, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from meshcore.demo.launcher import LocalMesh, _stop_group, wait_until

_PR_SET_PDEATHSIG = 1
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# Set the parent-death signal in the child itself, then exec the real program (the signal survives exec).
# A ``preexec_fn`` would do it between fork and exec, which is unsafe in a process with gRPC threads (the
# fork of a threaded process can crash or hang there); this wrapper is a fresh interpreter instead.
_WRAP = ("import ctypes, os, signal, sys; "
         f"ctypes.CDLL(None, use_errno=True).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0); "
         "os.execvp(sys.argv[1], sys.argv[1:])")


def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-c", _WRAP, *argv], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                env={**os.environ, **(env or {})}, cwd=cwd)


def stop(proc: subprocess.Popen | None, grace: float = 8.0) -> None:
    if proc is not None and proc.poll() is None:
        _stop_group(proc.pid, grace)
    if proc is not None:
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass


# --- /proc ----------------------------------------------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def threads(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def idle_cpu(pids: dict[str, int], seconds: float) -> dict[str, float]:
    """Share of one core each process used over ``seconds`` (0.05 = 5 %)."""
    before = {k: cpu_seconds(p) for k, p in pids.items()}
    t0 = time.monotonic()
    time.sleep(seconds)
    wall = time.monotonic() - t0
    return {k: (cpu_seconds(p) - before[k]) / wall for k, p in pids.items()}


# --- the control plane ----------------------------------------------------------------------------

def has_full_rebuild_flag() -> bool:
    out = subprocess.run([sys.executable, "-m", "meshcore.controlplane", "--help"], capture_output=True, text=True,
                         timeout=60)
    return "--full-rebuild" in out.stdout


class BenchMesh(LocalMesh):
    """The demo launcher's mesh (agents, tokens, status), with processes that die with the benchmark and a
    control plane started with the benchmark's flags (catalog source, --full-rebuild)."""

    def __init__(self, layout, progress, *, catalog: str, env: dict[str, str], extra_args: list[str]):
        super().__init__(layout, progress)
        self.catalog_spec, self.cp_env, self.extra_args = catalog, env, extra_args
        self.cp: subprocess.Popen | None = None
        self.children: list[subprocess.Popen] = []

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        proc = spawn(argv, self.logs / f"{name}.log", env=self.layout.env, cwd=self.state)
        self.processes.append({"name": name, "pid": proc.pid, "argv": argv})
        self._save()
        self.children.append(proc)
        return proc

    def start_control_plane(self) -> dict:
        from meshcore.ca import generate_kek_file

        cp_dir = self.state / "controlplane"
        cp_dir.mkdir(parents=True, exist_ok=True)
        kek = self.state / "kek"
        if not kek.exists():
            generate_kek_file(kek)
        state_file = cp_dir / "controlplane.json"
        state_file.unlink(missing_ok=True)
        argv = [sys.executable, "-m", "meshcore.controlplane", "--state-dir", str(cp_dir), "--catalog", self.catalog_spec,
                "--kek-file", str(kek), "--xds-bind", self.layout.xds_bind, "--api-bind", self.layout.api_bind,
                "--http-bind", self.layout.http_bind, "--leaf-ttl", "24h", "--log-level", "warning", *self.extra_args]
        self.cp = cp = spawn(argv, self.logs / "controlplane.log", env=self.cp_env, cwd=self.state)
        wait_until(lambda: state_file.exists() or cp.poll() is not None, 120,
                   f"the control plane to start (see {self.logs / 'controlplane.log'})")
        if cp.poll() is not None:
            raise RuntimeError(f"the control plane exited with {cp.returncode}; see {self.logs / 'controlplane.log'}")
        self.cp_info = json.loads(state_file.read_text())
        return self.cp_info

    def stop_control_plane(self) -> None:
        stop(self.cp)
        self.cp = None

    def shutdown(self) -> None:
        for proc in reversed(self.children):
            stop(proc)
        self.children.clear()
        self.stop_control_plane()
