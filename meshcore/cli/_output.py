"""How meshctl commands print (``-o table|json|yaml``) and read resource files; shared by every command module."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ..api._wire import encode
from ..errors import MeshError

if TYPE_CHECKING:
    from ..api.operator import ResourceFile

OUTPUTS = ("table", "json", "yaml")


def _yaml_dump(data: Any) -> str:
    import yaml  # only for -o yaml and the default rendering of untabled data

    return yaml.safe_dump(data, sort_keys=False)


def out(data: Any, fmt: str, table: Callable[[Any], Any] | None = None) -> None:
    """Print ``data`` as JSON, YAML, or with ``table`` (YAML when a command has no table view). API contracts
    (:mod:`meshcore.api.operator`) print as their wire JSON; ``table`` receives them as they are."""
    if fmt == "json":
        print(json.dumps(encode(data), indent=2, sort_keys=True))
    elif fmt == "yaml" or table is None:
        print(_yaml_dump(encode(data)), end="")
    else:
        table(data)


def table(rows: list[list[str]], headers: list[str]) -> None:
    """Columns padded to their widest cell; the header first."""
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)] if rows else [len(h) for h in headers]
    for row in [headers] + rows:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip())


def read_files(paths: list[str]) -> list[ResourceFile]:
    """The files, directories (their .yaml/.yml/.json) and ``-`` (stdin) to send to the operator API."""
    from ..api.operator import ResourceFile
    from ..resources.loader import STDIN_SOURCE, read_stdin

    files = []
    for p in paths:
        if p == "-":
            files.append(ResourceFile(name=STDIN_SOURCE, content=read_stdin()))
            continue
        path = Path(p)
        if path.is_dir():
            members = sorted(q for q in path.iterdir() if q.suffix in (".yaml", ".yml", ".json"))
        else:
            members = [path]
        for m in members:
            try:
                files.append(ResourceFile(name=str(m), content=m.read_text()))
            except OSError as exc:
                raise MeshError(f"{m}: cannot read: {exc.strerror}") from exc
    return files


def validate_locally(paths: list[str]):
    """Every resource in ``paths``, validated offline (ValidationError with file and field paths)."""
    from ..resources.loader import load_files

    notes: list = []
    resources = load_files(paths, notes)
    for note in notes:  # accepted but ignored or moved (inert Kubernetes metadata, istio-system): say so
        print(f"note: {note}", file=sys.stderr)
    return resources
