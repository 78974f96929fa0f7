"""Process hygiene: nothing a mesh's owner started outlives it, even when the owner is SIGKILLed; each
process gets its own grace; ``stop_mesh`` finds leftovers by the mesh's tag and says what it stopped."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from meshcore.demo import _guard
from meshcore.demo.launcher import LocalMesh, MeshLayout, stop_mesh, wait_until
from meshcore.errors import DemoError

ROOT = Path(__file__).resolve().parents[2]



def _processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (parent pid, start time, command) of every live process of this user."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        if fields[0] not in ("Z", "X"):
            out[int(entry.name)] = (int(fields[1]), int(fields[19]), cmd)
    return out


def _descendants(root: int) -> dict[int, tuple[int, str]]:
    """Every live descendant of ``root`` (pid -> (start time, command)), found through parent pids."""
    procs = _processes()
    found: dict[int, tuple[int, str]] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, start, cmd) in procs.items():
            if ppid == parent and pid not in found:
                found[pid] = (start, cmd)
                frontier.append(pid)
    return found


def _survivors(before: dict[int, tuple[int, str]]) -> list[str]:
    now = _processes()
    return [f"{pid}: {cmd}" for pid, (start, cmd) in before.items() if pid in now and now[pid][1] == start]


def test_sigkilled_demo_owner_leaves_nothing_running(tmp_path):
    """A launcher (the demo's owner) brings a mesh up and is SIGKILLed: its control plane, agent, app, Envoy
    keeper and Envoy (the last two in a session of their own) are all gone soon after."""
    owner = subprocess.Popen([sys.executable, "-m", "tests.demo._owner", str(tmp_path / "mesh")], cwd=ROOT,
                             stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        line = ""
        deadline = time.monotonic() + 180
        while line != "ready\n" and time.monotonic() < deadline and owner.poll() is None:
            line = owner.stdout.readline()
        assert line == "ready\n", "the owner did not bring its mesh up (see its stderr above)"
        started = _descendants(owner.pid)
        commands = " | ".join(cmd for _, cmd in started.values())
        assert "meshcore.controlplane" in commands and "meshcore.agent" in commands
        assert "_envoy_keeper.py" in commands and "envoy" in commands and "app.py" in commands, commands
        owner.kill()
        owner.wait()
        try:
            wait_until(lambda: not _survivors(started), 90, "every process of the killed owner to stop")
        except DemoError:
            pytest.fail("still running after the owner was SIGKILLed:\n" + "\n".join(_survivors(started)))
    finally:
        if owner.poll() is None:
            owner.kill()
        stop_mesh(tmp_path / "mesh")


STUBBORN = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('up', flush=True); time.sleep(120)"
POLITE = "import time; print('up', flush=True); time.sleep(120)"


def test_stop_mesh_gives_each_process_its_own_grace_and_finds_leftovers(tmp_path, monkeypatch):
    """A stubborn process (ignores SIGTERM) is killed at the end of its own short grace while a polite one
    stops at once; a process that carries the mesh's tag but is not in processes.json (a keeper, an app's
    child) is found and stopped too; the report names each."""
    monkeypatch.setitem(__import__("meshcore.demo.launcher", fromlist=["STOP_GRACE"]).STOP_GRACE, "stubborn", 1.0)
    mesh = LocalMesh(MeshLayout(state_dir=tmp_path, catalog_dir=tmp_path / "catalog"))
    stubborn = mesh._spawn("stubborn", [sys.executable, "-c", STUBBORN])
    polite = mesh._spawn("polite", [sys.executable, "-c", POLITE])
    leftover = subprocess.Popen([sys.executable, "-c", POLITE], start_new_session=True, stdout=subprocess.PIPE,
                                env={**os.environ, _guard.STATE_VAR: str(tmp_path.absolute())})
    stranger = subprocess.Popen([sys.executable, "-c", POLITE], start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert leftover.stdout.readline() == b"up\n"
        wait_until(lambda: (tmp_path / "logs" / "stubborn.log").read_text() == "up\n", 30, "the stubborn process")
        started = time.monotonic()
        report = stop_mesh(tmp_path)
        took = time.monotonic() - started
        for proc in (stubborn, polite, leftover):  # reaped by stop_mesh already: no exit status left to read
            proc.wait(timeout=5)
        assert 1.0 <= took < 9, f"took {took:.1f}s: not the stubborn process's own 1 s grace"
        assert f"stubborn (pid {stubborn.pid})" in report and f"polite (pid {polite.pid})" in report
        assert any(f"pid {leftover.pid}" in line and "left over" in line for line in report), report
        assert not (tmp_path / "processes.json").exists()
        assert stop_mesh(tmp_path) == []
        # a processes.json naming a pid the system gave to another program since: that one is left alone
        (tmp_path / "processes.json").write_text(json.dumps([{"name": "app-old", "pid": stranger.pid, "grace": 1}]))
        assert stop_mesh(tmp_path) == [] and stranger.poll() is None
    finally:
        for proc in (stubborn, polite, leftover, stranger):
            if proc.poll() is None:
                proc.kill()
        mesh._release_guard()


INNER_TEST = '''
import subprocess, sys, time

def test_starts_a_daemon_and_hangs():
    # its own session, no parent-death signal: only the suite's guard can stop it
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    print("daemon", proc.pid, flush=True)
    time.sleep(120)
'''


def test_sigkilled_pytest_leaves_nothing_running(tmp_path):
    """The suite's own guard (tests/conftest.py): a pytest process killed with SIGKILL leaves nothing running,
    not even a process in a session of its own."""
    inner = ROOT / "tests" / "demo" / f"_inner_{os.getpid()}_test.py"
    inner.write_text(INNER_TEST)
    try:
        run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:xdist",
                                str(inner)], cwd=ROOT, stdout=subprocess.PIPE, text=True, start_new_session=True)
        line, deadline = "", time.monotonic() + 120
        while not line.startswith("daemon") and time.monotonic() < deadline and run.poll() is None:
            line = run.stdout.readline()
        assert line.startswith("daemon"), "the inner test did not start its daemon"
        daemon = int(line.split()[1])
        started = {daemon: _processes()[daemon][1:]}
        run.kill()
        run.wait()
        wait_until(lambda: not _survivors(started), 60, "the daemon of the killed pytest to stop")
    finally:
        inner.unlink(missing_ok=True)


PARENT = """
import subprocess, sys, threading, time
from meshcore.demo._guard import die_with_parent
argv = [sys.executable, "-c", "import time; time.sleep(120)"]
assert die_with_parent(argv) != argv
off_main = []
threading.Thread(target=lambda: off_main.append(die_with_parent(argv))).start()
time.sleep(0.5)
assert off_main == [argv], off_main  # a worker thread may end before the owner: no parent-death signal there
child = subprocess.Popen(die_with_parent(argv), start_new_session=True)
print(child.pid, flush=True)
time.sleep(120)
"""


def test_parent_death_signal_stops_a_child_in_its_own_session():
    """No guard involved: the kernel's PR_SET_PDEATHSIG alone stops the child when its parent is SIGKILLed."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = parent.stdout.readline()
    assert line.strip().isdigit(), "the parent did not start its child"
    child = int(line)
    started = {child: _processes()[child][1:]}
    parent.kill()
    parent.wait()
    wait_until(lambda: not _survivors(started), 30, "the child of the killed parent to stop")


def test_meshctl_demo_down_says_what_it_stopped(tmp_path):
    """Nothing tracked any more (processes.json gone), yet a process of the mesh runs: `demo down` finds it by
    the mesh's tag and names it; a second `demo down` says nothing was running."""
    state = tmp_path / "demo"
    state.mkdir()
    leftover = subprocess.Popen([sys.executable, "-c", POLITE], start_new_session=True, stdout=subprocess.PIPE,
                                env={**os.environ, _guard.STATE_VAR: str(state.absolute())})
    try:
        assert leftover.stdout.readline() == b"up\n"
        down = [sys.executable, "-m", "meshcore.cli.main", "demo", "down", "--state-dir", str(state)]
        out = subprocess.run(down, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "stopped 1 process(es):" in out.stdout and f"(pid {leftover.pid}), left over" in out.stdout, out.stdout
        leftover.wait(timeout=10)
        again = subprocess.run(down, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert again.stdout.strip() == "no demo processes were running", again.stdout
    finally:
        if leftover.poll() is None:
            leftover.kill()
