"""Running an ansible-playbook of meshcore's ``ansible/`` directory and following its progress.

The IO edge of ``meshctl install``: :func:`find_ansible_dir`, :func:`load_profiles` and
:func:`load_values_file` read files; :func:`run_playbook` writes the extra-vars (a 0600 file in a
private temporary directory, removed afterwards), runs ansible-playbook with the ``meshcore_events``
stdout callback (``ansible/callback_plugins``) and hands every event to a callback as it happens.
:func:`format_event` and :func:`summarize` are pure: events in, lines and a summary out.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, FieldError, MeshError, ValidationError
from .values import PROFILES

ANSIBLE_DIR_ENV = "MESHCORE_ANSIBLE_DIR"
CALLBACK = "meshcore_events"
DIFF_MAX_LINES = 80
ARG_SPEC_TASK = "Validating arguments against arg spec"


def find_ansible_dir(explicit: str | None = None) -> Path:
    """The ``ansible/`` directory: --ansible-dir, $MESHCORE_ANSIBLE_DIR, else the checkout meshcore runs from."""
    candidates = [explicit] if explicit else []
    if not explicit and os.environ.get(ANSIBLE_DIR_ENV):
        candidates.append(os.environ[ANSIBLE_DIR_ENV])
    if not candidates:
        candidates.append(str(Path(__file__).resolve().parents[2] / "ansible"))
    path = Path(candidates[0]).expanduser().resolve()
    if not (path / "playbooks" / "site.yml").is_file():
        raise ConfigError(f"{path} is not meshcore's ansible directory (no playbooks/site.yml); run meshctl from a "
                          f"meshcore checkout, or pass --ansible-dir DIR (or set {ANSIBLE_DIR_ENV})")
    return path


def load_values_file(path: str) -> dict[str, Any]:
    """One ``-f`` values file (YAML); ``-`` is stdin. An empty file is no values."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as exc:
        raise ConfigError(f"-f {path}: cannot read it: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ValidationError([FieldError(path, None, "", f"not valid YAML: {exc}")], "invalid values, nothing run") \
            from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValidationError([FieldError(path, None, "", "a values file is a mapping (e.g. mtls: {mode: STRICT})")],
                              "invalid values, nothing run")
    return data


def load_profiles(ansible_dir: Path) -> dict[str, dict[str, Any]]:
    """Every profile's values from ``ansible/profiles/<name>.yaml``."""
    out = {}
    for name in PROFILES:
        path = ansible_dir / "profiles" / f"{name}.yaml"
        if path.is_file():
            out[name] = load_values_file(str(path))
    return out


def resolve_playbook(ansible_dir: Path, playbook: str) -> Path:
    """``site.yml`` means ``ansible/playbooks/site.yml``; anything with a slash is a path."""
    path = Path(playbook) if "/" in playbook else ansible_dir / "playbooks" / playbook
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in (ansible_dir / "playbooks").glob("*.yml")))
        raise ConfigError(f"--playbook {playbook}: no such playbook ({path}); meshcore's are: {known}")
    return path.resolve()


def ansible_playbook_binary() -> str:
    """ansible-playbook beside this Python (the venv meshctl runs from), else on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if not found:
        raise ConfigError("ansible-playbook is not installed: pip install 'ansible-core>=2.16,<2.19' "
                          "into meshctl's environment")
    return found


@dataclass
class PlaybookRun:
    """What to run: the playbook, inventory, extra-vars and the switches of ansible-playbook."""

    ansible_dir: Path
    playbook: Path
    inventory: str
    extra_vars: Mapping[str, Any]
    check: bool = False
    limit: str | None = None
    verbose: int = 0

    def command(self, extra_vars_file: str) -> list[str]:
        cmd = [ansible_playbook_binary(), "-i", self.inventory, str(self.playbook), "-e", f"@{extra_vars_file}"]
        if self.check:
            cmd += ["--check", "--diff"]
        if self.limit:
            cmd += ["--limit", self.limit]
        if self.verbose:
            cmd.append("-" + "v" * self.verbose)
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        plugins = str(self.ansible_dir / "callback_plugins")
        env.update({
            "ANSIBLE_CONFIG": str(self.ansible_dir / "ansible.cfg"),
            "ANSIBLE_STDOUT_CALLBACK": CALLBACK,
            "ANSIBLE_CALLBACK_PLUGINS": plugins + (os.pathsep + env["ANSIBLE_CALLBACK_PLUGINS"]
                                                   if env.get("ANSIBLE_CALLBACK_PLUGINS") else ""),
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_FORCE_COLOR": "0",
            "PYTHONUNBUFFERED": "1",
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        })
        return env


@dataclass
class RunResult:
    returncode: int
    hosts: dict[str, dict[str, int]] = field(default_factory=dict)
    stderr: str = ""

    @property
    def failed_hosts(self) -> list[str]:
        return sorted(h for h, s in self.hosts.items() if s.get("failed") or s.get("unreachable"))

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.failed_hosts and bool(self.hosts)


def write_extra_vars(directory: Path, extra_vars: Mapping[str, Any]) -> Path:
    """The extra-vars as JSON (valid YAML) in a file only this user can read (mode 0600, O_EXCL)."""
    path = directory / "values.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(dict(extra_vars), f, indent=2, sort_keys=True)
    return path


def run_playbook(run: PlaybookRun, on_event: Callable[[dict], None],
                 on_text: Callable[[str], None] = lambda line: None) -> RunResult:
    """Run it; ``on_event`` gets every callback event as it happens, ``on_text`` any other output line."""
    with tempfile.TemporaryDirectory(prefix="meshctl-install-") as tmp:  # mode 0700
        values_file = write_extra_vars(Path(tmp), run.extra_vars)
        cmd = run.command(str(values_file))
        try:
            proc = subprocess.Popen(cmd, cwd=run.ansible_dir, env=run.environment(), stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True, bufsize=1)
        except OSError as exc:
            raise MeshError(f"cannot run {cmd[0]}: {exc.strerror}") from exc
        stderr_lines: list[str] = []

        def drain_stderr() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                stderr_lines.append(line)
                on_text(line.rstrip("\n"))

        reader = threading.Thread(target=drain_stderr, daemon=True)
        reader.start()
        hosts: dict[str, dict[str, int]] = {}
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                event = _parse_event(line)
                if event is None:
                    if line.strip():
                        on_text(line.rstrip("\n"))
                    continue
                if event.get("event") == "stats":
                    hosts = event.get("hosts", {})
                on_event(event)
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(30)
            raise
        reader.join(10)
    return RunResult(rc, hosts, "".join(stderr_lines))


def _parse_event(line: str) -> dict | None:
    line = line.strip()
    if not line.startswith("{"):
        return None
    try:
        event = json.loads(line)
    except ValueError:
        return None
    return event if isinstance(event, dict) and "event" in event else None


# --- pure: events -> lines ------------------------------------------------------------------------

STATUS_WORDS = {"ok": "ok", "changed": "changed", "failed": "FAILED", "ignored": "failed (ignored)",
                "skipped": "skipped", "unreachable": "UNREACHABLE"}


def format_event(event: Mapping[str, Any], show_skipped: bool = False, show_diff: bool = False) -> list[str]:
    """The progress lines of one event: a play header, or one line per host result (diffs indented under it)."""
    kind = event.get("event")
    if kind == "play":
        return [f"PLAY {event.get('name') or '(unnamed)'}"]
    if kind == "result":
        status = event.get("status", "")
        if status == "skipped" and not show_skipped:
            return []
        if status == "ok" and str(event.get("task", "")).split(" : ")[-1].startswith(ARG_SPEC_TASK):
            return []  # every role's argument check: noise unless it fails
        line = f"  {event.get('host', '?'):<12} {STATUS_WORDS.get(status, status):<8} {event.get('task', '')}"
        msg = str(event.get("msg") or "").strip()
        said = str(event.get("action", "")).rsplit(".", 1)[-1] == "debug"  # a task that explains itself
        if msg and (status in ("failed", "unreachable", "ignored") or said):
            line += f": {_one_line(msg)}"
        lines = [line]
        if show_diff and status == "changed" and event.get("diff"):
            lines += ["      " + d for d in format_diffs(event["diff"])]
        return lines
    if kind == "retry":
        return [f"  {event.get('host', '?'):<12} waiting  {event.get('task', '')} "
                f"(attempt {event.get('attempt')} of {event.get('retries')})"]
    if kind == "warning":
        return [f"  warning: {event.get('msg')}"]
    return []


def _one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def format_diffs(diffs: Iterable[Mapping[str, Any]]) -> list[str]:
    """Unified diffs of Ansible's ``diff`` results (before/after text, or prepared text), capped in length."""
    lines: list[str] = []
    for d in diffs:
        if not isinstance(d, Mapping):
            continue
        if d.get("prepared"):
            lines += str(d["prepared"]).splitlines()
            continue
        if d.get("src_binary") or d.get("dst_binary"):
            lines.append(f"binary file {d.get('after_header') or d.get('before_header') or ''}".rstrip())
            continue
        before, after = d.get("before", ""), d.get("after", "")
        if not isinstance(before, str) or not isinstance(after, str):
            before = yaml.safe_dump(before, sort_keys=True) if before not in ("", None) else ""
            after = yaml.safe_dump(after, sort_keys=True) if after not in ("", None) else ""
        lines += [x.rstrip("\n") for x in difflib.unified_diff(
            before.splitlines(keepends=True), after.splitlines(keepends=True),
            fromfile=str(d.get("before_header") or "before"), tofile=str(d.get("after_header") or "after"))]
    if len(lines) > DIFF_MAX_LINES:
        lines = lines[:DIFF_MAX_LINES] + [f"... {len(lines) - DIFF_MAX_LINES} more diff lines"]
    return lines


def summarize(result: RunResult, **extra: Any) -> dict[str, Any]:
    """The final JSON summary: per-host ok/changed/failed/unreachable, which hosts failed, the exit code."""
    return {**extra, "ok": result.ok, "returncode": result.returncode, "failed_hosts": result.failed_hosts,
            "hosts": {h: {k: s.get(k, 0) for k in ("ok", "changed", "failed", "unreachable", "skipped")}
                      for h, s in sorted(result.hosts.items())}}
