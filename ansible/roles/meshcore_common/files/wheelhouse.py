#!/usr/bin/env python3
"""wheelhouse.py manifest DIR | pack DIR: what the meshcore_common role pushes of a wheelhouse, in one piece.

``manifest DIR`` prints one line per wheel, sorted: ``<sha256>  <file name>`` (what the role records on each host
as ``MANIFEST``: equal manifests mean the host already holds every wheel, and the push is skipped).
``pack DIR`` writes every wheel of DIR into one uncompressed tar (wheels are zip files already) in a new private
temporary directory and prints its path: the role pushes that one file instead of one module run per wheel.
Stdlib only: it runs with the controller's Python (``ansible_playbook_python``).
"""

from __future__ import annotations

import hashlib
import sys
import tarfile
import tempfile
from pathlib import Path


def wheels(directory: Path) -> list[Path]:
    found = sorted(p for p in directory.glob("*.whl") if p.is_file())
    if not found:
        raise SystemExit(f"wheelhouse.py: no wheel in {directory}; build one with scripts/build-wheelhouse.sh")
    return found


def manifest(directory: Path) -> str:
    lines = []
    for path in wheels(directory):
        digest = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.name}")
    return "\n".join(lines) + "\n"


def pack(directory: Path) -> Path:
    out = Path(tempfile.mkdtemp(prefix="meshcore-wheelhouse-")) / "wheelhouse.tar"
    with tarfile.open(out, "w") as tar:
        for path in wheels(directory):
            info = tar.gettarinfo(str(path), arcname=path.name)
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("manifest", "pack"):
        print(__doc__.split("\n")[0], file=sys.stderr)
        return 2
    directory = Path(argv[1])
    if argv[0] == "manifest":
        sys.stdout.write(manifest(directory))
    else:
        print(pack(directory))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
