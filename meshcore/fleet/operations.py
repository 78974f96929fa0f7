"""The fleet commands: status, logs, restart and the bug report, on top of :mod:`.remote` sessions."""

from __future__ import annotations

import io
import json
import tarfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from meshcore.errors import MeshError

from . import _scripts
from .inventory import Host
from .remote import FabricSession, RemoteError, Session, SessionFactory, for_each_host, progress
from .report import HostReport, build_host_report, certificates_metadata, redact, split_sections

SERVICES = {"agent": "meshcore-agent", "control-plane": "meshcore-control-plane"}
DEFAULT_MESHCTL = "/opt/meshcore/venv/bin/meshctl"


def _meshctl(host: Host) -> str:
    venv = host.variables.get("meshcore_common_venv")
    return f"{venv}/bin/meshctl" if isinstance(venv, str) and "{{" not in venv else DEFAULT_MESHCTL


def _admin(host: Host) -> str:
    admin = host.variables.get("meshcore_agent_admin")
    return admin if isinstance(admin, str) and "{{" not in admin else "127.0.0.1:19000"


def _cp_server(host: Host) -> str:
    bind = host.variables.get("meshcore_control_plane_http_bind")
    bind = bind if isinstance(bind, str) and "{{" not in bind else "127.0.0.1:15000"
    return "http://" + bind.replace("0.0.0.0", "127.0.0.1")


def probe_status(session: Session) -> HostReport:
    host = session.host
    out = session.run(_scripts.as_root(_scripts.status_probe(host.agent_state_dir, _admin(host)), host.user))
    if "@@unit" not in out.stdout:
        raise RemoteError(f"{host.name}: the status probe printed nothing usable (exit {out.exited}): "
                          f"{(out.stderr or out.stdout).strip()[-300:]}")
    return build_host_report(host.name, host.address, host.groups, out.stdout)


def fleet_status(hosts: list[Host], factory: SessionFactory = FabricSession) -> list[HostReport]:
    """Every host's report; an unreachable host is a report with ``error`` set."""
    results = for_each_host(hosts, probe_status, what="status", factory=factory)
    reports = []
    for host in hosts:
        r = results[host.name]
        reports.append(r if isinstance(r, HostReport) else
                       HostReport(host=host.name, address=host.address, groups=host.groups, error=str(r)))
    return reports


def unit_name(service: str) -> str:
    try:
        return SERVICES[service]
    except KeyError:
        raise MeshError(f"unknown service {service!r}: choose one of {', '.join(SERVICES)}") from None


def fleet_logs(host: Host, service: str, lines: int, factory: SessionFactory = FabricSession) -> str:
    session = factory(host)
    try:
        out = session.run(_scripts.as_root(_scripts.journal(unit_name(service), lines), host.user), timeout=60)
    finally:
        getattr(session, "close", lambda: None)()
    if out.exited != 0:
        raise RemoteError(f"{host.name}: journalctl exited {out.exited}: {(out.stderr or out.stdout).strip()[-300:]}")
    return out.stdout


def fleet_restart(host: Host, service: str, factory: SessionFactory = FabricSession,
                  wait: float = 60) -> str:
    """Restart a meshcore unit on one host and wait until it is active again; returns its final state."""
    unit = unit_name(service)
    session = factory(host)
    try:
        out = session.run(_scripts.as_root(f"systemctl restart {unit}", host.user), timeout=wait + 30)
        if out.exited != 0:
            raise RemoteError(f"{host.name}: systemctl restart {unit} exited {out.exited}: "
                              f"{(out.stderr or out.stdout).strip()[-300:]}; see `meshctl fleet logs {host.name} "
                              f"--unit {service}`")
        deadline = time.monotonic() + wait
        state = ""
        while time.monotonic() < deadline:
            state = session.run(f"systemctl is-active {unit}", timeout=20).stdout.strip()
            if state in ("active", "failed"):
                break
            time.sleep(1)
    finally:
        getattr(session, "close", lambda: None)()
    if state != "active":
        raise RemoteError(f"{host.name}: {unit} is {state or 'unknown'} after the restart; "
                          f"see `meshctl fleet logs {host.name} --unit {service}`")
    return state


# --- bug report ----------------------------------------------------------------------------------

def _collect(session: Session, lines: int) -> dict[str, str]:
    """Files (archive-relative name -> text) for one host. Every text is redacted before it is kept."""
    host = session.host
    files: dict[str, str] = {}
    errors: list[str] = []

    def run(name: str, command: str, timeout: float = 60) -> str | None:
        try:
            out = session.run(_scripts.as_root(command, host.user), timeout=timeout)
        except RemoteError as exc:
            errors.append(f"{name}: {exc}")
            return None
        if out.exited != 0:
            errors.append(f"{name}: exit {out.exited}: {(out.stderr or out.stdout).strip()[-300:]}")
        return out.stdout

    status = probe_status(session)
    files["fleet-status.json"] = json.dumps(status.to_json(), indent=2)
    text = run("units", _scripts.unit_status())
    if text is not None:
        files["units.txt"] = text
    for service, unit in SERVICES.items():
        if status.units.get(service) not in (None, "not-installed"):
            text = run(f"journal {unit}", _scripts.journal(unit, lines))
            if text is not None:
                files[f"journal-{service}.txt"] = text
    if status.units.get("agent") not in (None, "not-installed"):
        text = run("status.json", f"cat {host.agent_state_dir}/status.json")
        if text:
            files["agent-status.json"] = text
        admin = status.envoy.get("admin") or _admin(host)
        text = run("envoy config_dump", _scripts.envoy_config_dump(admin))
        if text:
            files["envoy-config_dump.json"] = text
    patterns = [f"{host.agent_state_dir}/*.crt", f"{host.agent_state_dir}/*.pem", f"{host.agent_state_dir}/*/*.pem",
                f"{host.agent_state_dir}/*/*.crt", host.ca_file]
    if host.is_control_plane:
        patterns += ["/var/lib/meshcore/ca/*.pem", "/var/lib/meshcore/ca/*.crt", "/var/lib/meshcore/*.crt"]
    text = run("certificates", _scripts.certificates(patterns))
    if text:
        try:
            files["certificates.json"] = json.dumps(certificates_metadata(json.loads(text)), indent=2)
        except ValueError as exc:
            errors.append(f"certificates: not JSON ({exc})")
    if host.is_control_plane:
        text = run("control plane", _scripts.control_plane_status(_meshctl(host), server=_cp_server(host)))
        if text:
            for name, body in split_sections(text).items():
                files[f"control-plane-{name}.json"] = body
    if errors:
        files["errors.txt"] = "\n".join(errors) + "\n"
    return {name: redact(body) for name, body in files.items()}


def _add(tar: tarfile.TarFile, name: str, text: str) -> None:
    """Add one text to the archive, redacted (every member goes through here, the manifest included)."""
    data = redact(text).encode()
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = int(time.time())
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def bug_report(hosts: list[Host], out: Path, *, lines: int = 500,
               factory: SessionFactory = FabricSession) -> dict[str, Any]:
    """Collect from every host into ``out`` (.tar.gz); returns the manifest (hosts, files, errors)."""
    results = for_each_host(hosts, lambda s: _collect(s, lines), what="bug-report", factory=factory)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    top = f"meshcore-bug-report-{stamp}"
    manifest: dict[str, Any] = {"created": stamp, "hosts": {}, "failed": []}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".part")
    with tarfile.open(tmp, "w:gz") as tar:
        for host in hosts:
            r = results[host.name]
            if isinstance(r, RemoteError):
                manifest["failed"].append(host.name)
                manifest["hosts"][host.name] = {"address": host.address, "error": str(r)}
                _add(tar, f"{top}/hosts/{host.name}/errors.txt", str(r) + "\n")
                continue
            manifest["hosts"][host.name] = {"address": host.address, "groups": list(host.groups),
                                            "files": sorted(r)}
            for name, text in sorted(r.items()):
                _add(tar, f"{top}/hosts/{host.name}/{name}", text)
        _add(tar, f"{top}/manifest.json", json.dumps(manifest, indent=2) + "\n")
    tmp.replace(out)
    progress(f"bug-report: wrote {out} ({out.stat().st_size} bytes, {len(hosts) - len(manifest['failed'])}/"
             f"{len(hosts)} host(s))")
    return manifest


def scan_archive(path: Path, needles: tuple[str, ...] = ("PRIVATE KEY",)) -> list[str]:
    """Members of a .tar.gz that contain any of ``needles`` (a bug report must have none)."""
    found = []
    with tarfile.open(path, "r:gz") as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member)
            if f is None:
                continue
            data = f.read()
            if any(n.encode() in data for n in needles):
                found.append(member.name)
    return found
