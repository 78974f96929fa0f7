"""Where meshctl looks for a control plane's state on this machine (its address, token and CA bundle)."""

from __future__ import annotations

from pathlib import Path

DEMO_STATE_DIR = ".meshcore-demo"
SYSTEM_STATE_DIR = "/var/lib/meshcore"
ADMIN_TOKEN_FILE = "admin.token"


def state_dirs(state_dir: str | None) -> list[Path]:
    """Control plane state dirs to try, in order: --state-dir's, the demo's in ./.meshcore-demo, the system one."""
    dirs = [Path(state_dir) / "controlplane"] if state_dir else []
    return dirs + [Path(DEMO_STATE_DIR) / "controlplane", Path(SYSTEM_STATE_DIR)]
