"""Private: the CA's revocation record, ``revoked.jsonl``: append-only, one JSON object per line.

Two kinds of entries:

* ``{"kind": "node", "node": N, "revoked_at": T, "reason": R, "by": B}``: every certificate issued to
  node ``N`` up to ``T`` is no longer honoured (renew-node, sign, services, ADS, recovery). A node
  joined again afterwards with a new token gets a certificate whose ``not_before`` is after ``T``
  (the CA never backdates past a revocation), so it is honoured again; the old ones stay dead.
* ``{"kind": "issuer", "key_id": K, "revoked_at": T, "reason": R}``: leaves signed by the intermediate
  with subject key id ``K`` (hex) are no longer honoured: written when a root rotation finishes, for
  every intermediate under the old root.

Nothing is ever removed (a revocation is a fact about the past); the file grows by one line per
revocation. Appends are one ``write(2)`` on an ``O_APPEND`` descriptor followed by ``fdatasync``, under the
CA's file lock; readers re-read the file when its size or inode changed, so another process's
revocation (``meshctl`` on the same state directory) is seen at the next check. A damaged line is
skipped with a warning, a torn last line (a writer killed mid-append) is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from meshcore._files import fsync_dir

from .model import parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

KIND_NODE = "node"
KIND_ISSUER = "issuer"


@dataclass(frozen=True)
class Revocation:
    """One line of ``revoked.jsonl``: a node's certificates, or an intermediate's leaves, revoked at ``revoked_at``."""

    kind: str
    subject: str  # the node name, or the intermediate's hex subject key id
    revoked_at: datetime
    reason: str = ""
    by: str = ""

    def to_dict(self) -> dict[str, Any]:
        key = "node" if self.kind == KIND_NODE else "key_id"
        return {"kind": self.kind, key: self.subject, "revoked_at": rfc3339(self.revoked_at),
                "reason": self.reason, "by": self.by}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Revocation:
        kind = data["kind"]
        if kind not in (KIND_NODE, KIND_ISSUER):
            raise ValueError(f"unknown kind {kind!r}")
        subject = data["node"] if kind == KIND_NODE else data["key_id"]
        if not isinstance(subject, str) or not subject:
            raise ValueError("empty subject")
        return cls(kind=kind, subject=subject, revoked_at=parse_rfc3339(data["revoked_at"]),
                   reason=str(data.get("reason") or ""), by=str(data.get("by") or ""))


class RevocationTable:
    """The latest revocation per node and per retired intermediate, as the CA looks them up."""

    def __init__(self) -> None:
        self._nodes: dict[str, Revocation] = {}  # node -> its latest revocation
        self._issuers: dict[str, Revocation] = {}  # key id -> revocation

    def node(self, name: str) -> Revocation | None:
        return self._nodes.get(name)

    def issuer(self, key_id: str) -> Revocation | None:
        return self._issuers.get(key_id.lower())

    def nodes(self) -> list[Revocation]:
        return sorted(self._nodes.values(), key=lambda r: r.subject)

    def issuers(self) -> list[Revocation]:
        return sorted(self._issuers.values(), key=lambda r: r.subject)


class RevocationJournal(RevocationTable):
    """The revocations of one CA state directory (see the module docstring). Not thread-safe: the CA locks."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path
        self._stamp: tuple[int, int] | None = None

    def refresh(self) -> None:
        """Read the file again when it changed since the last look (cheap: one ``stat``)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self._stamp, self._nodes, self._issuers = None, {}, {}
            return
        stamp = (st.st_ino, st.st_size)
        if stamp == self._stamp:
            return
        with open(self.path, "rb") as fh:
            data = fh.read()
        nodes: dict[str, Revocation] = {}
        issuers: dict[str, Revocation] = {}
        end = data.rfind(b"\n") + 1
        for number, raw in enumerate(data[:end].splitlines(), 1):
            if not raw.strip():
                continue
            try:
                entry = Revocation.from_dict(json.loads(raw))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("revocation journal %s line %d is damaged (%s); skipping it", self.path, number, exc)
                continue
            table = nodes if entry.kind == KIND_NODE else issuers
            old = table.get(entry.subject)
            if old is None or entry.revoked_at >= old.revoked_at:
                table[entry.subject] = entry
        self._stamp, self._nodes, self._issuers = stamp, nodes, issuers

    def append(self, entries: list[Revocation]) -> None:
        """Record ``entries`` durably (the caller holds the CA's file lock). Raises OSError."""
        if not entries:
            return
        self.refresh()
        created = not self.path.exists()
        body = b"".join(json.dumps(e.to_dict(), separators=(",", ":")).encode() + b"\n" for e in entries)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size:  # a torn last line (a writer died mid-append) must not swallow ours
                with open(self.path, "rb") as fh:
                    fh.seek(size - 1)
                    if fh.read(1) != b"\n":
                        body = b"\n" + body
            os.write(fd, body)
            os.fdatasync(fd)
        finally:
            os.close(fd)
        if created:
            fsync_dir(self.path.parent)
        self._stamp = None
        self.refresh()
