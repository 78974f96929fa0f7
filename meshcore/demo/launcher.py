"""Run a whole mesh on this one machine: a control plane, one agent + Envoy per node, the sample apps.

The same processes and code paths as on VMs: the control plane reads Consul service-definition
files (one directory per node), each node's agent joins with a one-time token, gets its SVIDs
and runs its Envoy on the node's own loopback address. Used by ``meshctl demo`` and by the
end-to-end tests (which pass their own addresses and free ports).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..ca import generate_kek_file
from ..catalog.files import FileCatalogSource
from ..catalog.model import Catalog
from ..errors import DemoError
from . import _guard

REPO_ROOT = Path(__file__).resolve().parents[2]
BOOKINFO = REPO_ROOT / "examples" / "bookinfo"
PROCESSES_FILE = "processes.json"
# Seconds between SIGTERM and SIGKILL, per kind of process (name prefix): an agent stops its Envoy (which
# drains for up to 10 s) before it exits; an app has nothing to drain.
STOP_GRACE = {"controlplane": 10.0, "agent-": 25.0, "app-": 5.0}
DEFAULT_STOP_GRACE = 10.0


def stop_grace(name: str) -> float:
    return next((g for prefix, g in STOP_GRACE.items() if name.startswith(prefix)), DEFAULT_STOP_GRACE)


@dataclass
class MeshLayout:
    state_dir: Path
    catalog_dir: Path
    xds_bind: str = "127.0.0.1:15012"
    api_bind: str = "127.0.0.1:15443"
    http_bind: str = "127.0.0.1:15000"
    admin: dict[str, str] = field(default_factory=dict)  # node -> Envoy admin host:port
    metrics: dict[str, str] = field(default_factory=dict)  # node -> agent --metrics-bind host:port
    leaf_ttl: str = "24h"
    app_script: Path = BOOKINFO / "app.py"
    agent_refresh: str = "5s"
    # Where the control plane reads the catalog: "" = the definition files in catalog_dir; "consul" =
    # Consul (CONSUL_HTTP_ADDR in env), each agent then registering its node's files there itself.
    catalog_source: str = ""
    env: dict[str, str] = field(default_factory=dict)
    collect_interval: str = ""  # control plane --collect-interval (metrics collector); "" = its default
    # Telemetry (control plane flags): access log "stdout" or a path ({node} -> node name), OTLP collector.
    access_log: str = ""
    access_log_format: str = "json"
    tracing_otlp: str = ""
    tracing_sampling: float = 1.0


def http_get(url: str, timeout: float = 3.0, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_until(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the thing we wait for is not up yet
            last_exc = exc
        time.sleep(interval)
    raise DemoError(f"timed out after {timeout:.0f}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


class LocalMesh:
    def __init__(self, layout: MeshLayout, progress: Callable[[str], None] = lambda msg: None, *,
                 owned: bool = True):
        """``owned``: the processes stop when this process does, even when it is SIGKILLed (each child gets
        a parent-death signal; a guard process stops whatever carries this mesh's tag once this process is
        gone; see :mod:`meshcore.demo._guard`). Off for a mesh left running on purpose (``meshctl demo up``
        without ``--foreground``); ``meshctl demo down`` stops it."""
        self.layout = layout
        self.progress = progress
        self.owned = owned
        self.state = layout.state_dir.absolute()
        self.logs = self.state / "logs"
        self.processes: list[dict] = []
        self.cp_info: dict = {}
        self._guard: subprocess.Popen[bytes] | None = None
        self._guard_fd = -1

    # --- processes -------------------------------------------------------------------------
    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        if self.owned and self._guard is None:
            self._guard, self._guard_fd = _guard.start_guard(_guard.STATE_VAR, str(self.state))
        grace = stop_grace(name)
        env = {**os.environ, **self.layout.env, _guard.STATE_VAR: str(self.state), _guard.GRACE_VAR: str(grace)}
        log = open(self.logs / f"{name}.log", "ab")
        proc = subprocess.Popen(_guard.die_with_parent(argv) if self.owned else argv, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                env=env, cwd=self.state)
        log.close()
        self.processes.append({"name": name, "pid": proc.pid, "argv": argv, "grace": grace})
        self._save()
        return proc

    def stop(self, name: str, grace: float | None = None, sig: int = signal.SIGTERM) -> bool:
        """Stop one process this mesh started (e.g. ``controlplane``, ``agent-vm1``); False if not running.
        ``grace`` defaults to the process's own (:data:`STOP_GRACE`). ``sig=signal.SIGKILL`` kills its
        process group at once (a crash: nothing of it gets to clean up; processes in sessions of their own,
        such as an agent's Envoy, live on)."""
        for p in list(self.processes):
            if p["name"] == name:
                self.processes.remove(p)
                self._save()
                return _stop_group(p["pid"], p.get("grace", DEFAULT_STOP_GRACE) if grace is None else grace, sig)
        return False

    def _save(self) -> None:
        (self.state / PROCESSES_FILE).write_text(json.dumps(self.processes, indent=2) + "\n")

    def catalog(self) -> Catalog:
        return FileCatalogSource(self.layout.catalog_dir).poll(None, 0).catalog

    # --- steps -----------------------------------------------------------------------------
    def start_control_plane(self) -> dict:
        cp_dir = self.state / "controlplane"
        cp_dir.mkdir(parents=True, exist_ok=True)
        kek = self.state / "kek"
        if not kek.exists():
            generate_kek_file(kek)
        state_file = cp_dir / "controlplane.json"
        if state_file.exists():
            state_file.unlink()
        self._spawn("controlplane", [
            sys.executable, "-m", "meshcore.controlplane", "--state-dir", str(cp_dir),
            "--catalog", self.layout.catalog_source or f"files:{self.layout.catalog_dir}", "--kek-file", str(kek),
            "--xds-bind", self.layout.xds_bind, "--api-bind", self.layout.api_bind,
            "--http-bind", self.layout.http_bind, "--leaf-ttl", self.layout.leaf_ttl,
            *(["--collect-interval", self.layout.collect_interval] if self.layout.collect_interval else []),
            "--access-log", self.layout.access_log, "--access-log-format", self.layout.access_log_format,
            "--tracing-otlp", self.layout.tracing_otlp, "--tracing-sampling", str(self.layout.tracing_sampling),
        ])
        wait_until(state_file.exists, 30, "the control plane to start (see logs/controlplane.log)")
        self.cp_info = json.loads(state_file.read_text())
        return self.cp_info

    @property
    def admin_token_file(self) -> Path:
        """The bootstrap admin operator token the control plane wrote on first start (0600)."""
        return self.state / "controlplane" / "admin.token"

    def auth_headers(self) -> dict[str, str]:
        """``Authorization`` for the operator API, with the control plane's bootstrap admin token."""
        return {"Authorization": "Bearer " + self.admin_token_file.read_text().strip()}

    def _post(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.cp_info["http"] + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", **self.auth_headers()})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def start_agent(self, node: str) -> None:
        token = self._post("/v1/tokens", {"node": node, "ttl": "10m"})["token"]
        node_dir = self.state / "nodes" / node
        node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        token_file = node_dir / "join-token"
        token_file.write_text(token)
        os.chmod(token_file, 0o600)
        argv = [sys.executable, "-m", "meshcore.agent", "--node", node,
                "--control-plane", self.cp_info["api"], "--ca-file", self.cp_info["ca_file"],
                "--join-token-file", str(token_file), "--state-dir", str(node_dir),
                "--envoy-log", str(self.logs / f"envoy-{node}.log"), "--refresh-interval", self.layout.agent_refresh]
        if node in self.layout.admin:
            argv += ["--admin", self.layout.admin[node]]
        if node in self.layout.metrics:
            argv += ["--metrics-bind", self.layout.metrics[node]]
        if self.layout.catalog_source == "consul":
            argv += ["--consul-services-dir", str(self.layout.catalog_dir / node)]
        self._spawn(f"agent-{node}", argv)

    def start_apps(self, node: str) -> None:
        for inst in self.catalog().on_node(node):
            if inst.kind:
                continue
            argv = [sys.executable, str(self.layout.app_script), "--service", inst.service,
                    "--version", inst.meta_dict.get("version", "v1"), "--instance", inst.id,
                    "--listen", f"{inst.local_service_address}:{inst.port}"]
            for up in inst.upstreams:
                argv += ["--upstream", f"{up.destination_name}=http://{up.local_bind_address}:{up.local_bind_port}"]
            self._spawn(f"app-{inst.id}", argv)

    def status(self) -> dict:
        req = urllib.request.Request(self.cp_info["http"] + "/v1/status", headers=self.auth_headers())
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def wait_synced(self, timeout: float = 60) -> None:
        nodes = {i.node for i in self.catalog().instances}

        last: dict[str, dict] = {}

        def all_synced():
            last.clear()
            last.update({p["node"]: p for p in self.status()["proxies"]})
            return all(last.get(n, {}).get("synced") for n in nodes)

        try:
            wait_until(all_synced, timeout, f"every proxy ({', '.join(sorted(nodes))}) to receive and ACK its config")
        except DemoError as exc:
            raise DemoError(f"{exc}; {self._unsynced_report(sorted(nodes), last)}") from None

    def _unsynced_report(self, nodes: list[str], proxies: dict[str, dict]) -> str:
        """What the control plane last said about each proxy that is not synced, and the tail of its agent's
        log: enough to tell a proxy that never connected from one whose config was refused."""
        parts = []
        for node in nodes:
            p = proxies.get(node)
            if p is not None and p.get("synced"):
                continue
            seen = ("not known to the control plane" if p is None else
                    f"connected={p.get('connected')} version={p.get('version') or '-'} error={p.get('error') or '-'}")
            log = self.logs / f"agent-{node}.log"
            tail = log.read_text(errors="replace").splitlines()[-4:] if log.exists() else []
            parts.append(f"{node}: {seen}" + "".join(f"\n    agent-{node}: {line[:300]}" for line in tail))
        return "not synced: " + ("\n  ".join(parts) if parts else "(none at the last poll)")

    def up(self, wait_url: str | None = None) -> dict:
        self.state.mkdir(parents=True, exist_ok=True)
        os.chmod(self.state, 0o700)
        catalog = self.catalog()
        nodes = sorted({i.node for i in catalog.instances})
        self.progress(f"starting the control plane ({self.layout.http_bind})")
        self.start_control_plane()
        for node in nodes:
            self.progress(f"starting {node}: sample apps, agent and Envoy")
            self.start_apps(node)
            self.start_agent(node)
        self.progress("waiting for every Envoy to join, get its certificates and ACK its config")
        self.wait_synced()
        if wait_url:
            self.progress(f"waiting for {wait_url} to answer through the mesh")

            def serving():
                status, body = http_get(wait_url)
                if status != 200:
                    return False
                data = json.loads(body)
                return "error" not in data.get("details", {}) and "error" not in data.get("reviews", {})

            wait_until(serving, 60, f"{wait_url} to serve details and reviews")
        return self.status()

    def down(self) -> int:
        """Stop everything this mesh started; returns how many processes were running."""
        try:
            return len(stop_mesh(self.state))
        finally:
            self._release_guard()

    def _release_guard(self) -> None:
        """Close the guard's pipe: it sweeps what is left of this mesh (nothing, after :meth:`down`) and exits."""
        if self._guard is None:
            return
        os.close(self._guard_fd)
        try:
            self._guard.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._guard.kill()
            self._guard.wait()
        self._guard, self._guard_fd = None, -1


def stop_processes(state_dir: Path) -> int:
    """Stop every process a mesh started from ``state_dir``; returns how many were running."""
    return len(stop_mesh(state_dir))


def stop_mesh(state_dir: Path) -> list[str]:
    """Stop every process of the mesh in ``state_dir``, each with its own grace (SIGTERM, then SIGKILL);
    returns a description of each one that was running.

    Three sources, so nothing escapes: ``processes.json`` (the process groups the launcher started),
    the Envoy records in ``nodes/*/envoy/envoy.json`` (Envoys that outlived a killed agent: they run in
    sessions of their own), then every process still carrying this mesh's tag in its environment
    (Envoy keepers, an Envoy whose record is gone, whatever an app forked)."""
    state = Path(state_dir).absolute()
    path = state / PROCESSES_FILE
    try:
        procs = json.loads(path.read_text())
    except (OSError, ValueError):
        procs = []  # nothing tracked (any more): the records and the tag still find what runs
    stopped = _stop_groups([p for p in reversed(procs) if _carries_tag(p["pid"], state)])
    path.unlink(missing_ok=True)
    stopped += _stop_orphaned_envoys(state / "nodes")
    stopped += [f"{p.describe()}, left over" for p in _guard.sweep(_guard.STATE_VAR, str(state))]
    return stopped


def _stop_orphaned_envoys(nodes_dir: Path) -> list[str]:
    """Stop the Envoys that outlived their agents. An agent's Envoy runs in a session of its own (so it keeps
    serving while the agent restarts); an agent that was SIGKILLed, or stopped before it took over its
    predecessor's Envoy, leaves that Envoy running and recorded in its state directory."""
    from ..agent.supervisor import STOP_GRACE as ENVOY_GRACE
    from ..agent.supervisor import HotRestart, read_record, stable_base_id, stop_recorded_envoy

    stopped = []
    for node_dir in sorted(nodes_dir.glob("*/")):
        record_path = node_dir / "envoy" / "envoy.json"
        record = read_record(record_path)
        if record is not None and stop_recorded_envoy(HotRestart(stable_base_id(node_dir.name, node_dir),
                                                                 record_path), ENVOY_GRACE):
            stopped.append(f"envoy of {node_dir.name} (pid {record.pid}), left by its agent")
    return stopped


def _carries_tag(pid: int, state: Path) -> bool:
    """True when ``pid`` is still the process this mesh started (its environment carries the mesh's tag):
    a ``processes.json`` from long ago may name pids the system has given to other programs since."""
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False  # gone (or not ours to read)
    return f"{_guard.STATE_VAR}={state}".encode() in env


def _stop_groups(procs: list[dict]) -> list[str]:
    """SIGTERM each tracked process group at once; SIGKILL each one still running after its own grace."""
    deadlines: dict[int, float] = {}
    stopped = []
    for p in procs:
        try:
            os.killpg(p["pid"], signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            continue
        deadlines[p["pid"]] = time.monotonic() + float(p.get("grace", DEFAULT_STOP_GRACE))
        stopped.append(f"{p['name']} (pid {p['pid']})")
    while deadlines:
        for pid, deadline in list(deadlines.items()):
            if not _group_alive(pid):
                del deadlines[pid]
            elif time.monotonic() >= deadline:
                _kill_group(pid)
                _reap(pid)
                del deadlines[pid]
        time.sleep(0.05)
    return stopped


def _group_alive(pid: int) -> bool:
    _reap(pid)
    try:
        os.killpg(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _stop_group(pid: int, grace: float, sig: int = signal.SIGTERM) -> bool:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    _wait_group(pid, time.monotonic() + grace)
    return True


def _wait_group(pid: int, deadline: float) -> None:
    """Wait for a signalled process group to end; KILL it at the deadline."""
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(0.1)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def demo_layout(state_dir: Path) -> MeshLayout:
    """The demo: fixed, well-known addresses (the README and the docs name them)."""
    catalog = Path(state_dir).absolute() / "consul.d"
    if not catalog.exists():
        shutil.copytree(BOOKINFO / "consul.d", catalog)
    return MeshLayout(
        state_dir=Path(state_dir), catalog_dir=catalog,
        admin={"vm1": "127.0.0.11:19000", "vm2": "127.0.0.12:19000", "vm3": "127.0.0.13:19000",
               "gateway": "127.0.0.1:19000"},
        access_log=str(Path(state_dir).absolute() / "logs" / "access-{node}.log"),  # JSON lines per VM
        metrics={"vm1": "127.0.0.11:15090", "vm2": "127.0.0.12:15090", "vm3": "127.0.0.13:15090",
                 "gateway": "127.0.0.1:15090"},
    )
