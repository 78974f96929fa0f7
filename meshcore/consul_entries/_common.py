"""Helpers the entry compilers share (pure)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from .model import ENTRY_LABEL, ORIGIN, ORIGIN_LABEL, ConfigEntry, Finding, Severity

MAX_NAME = 63


@dataclass
class Out:
    """One compiled meshcore document, what it is about, and the entries it came from."""

    doc: dict[str, Any]
    concern: str  # "authz", "traffic" (VirtualService), "destination" (DestinationRule)
    service: str  # the service it is about ("" for mesh-wide)
    entries: tuple[str, ...]


@dataclass
class Report:
    findings: list[Finding] = field(default_factory=list)

    def add(self, entry: ConfigEntry | str, path: str, severity: Severity, message: str) -> None:
        ref = entry.ref if isinstance(entry, ConfigEntry) else entry
        self.findings.append(Finding(ref, path, severity, message))

    def unsupported(self, entry: ConfigEntry, path: str, message: str) -> None:
        self.add(entry, path, "unsupported", message)


def resource_name(prefix: str, service: str) -> str:
    """``<prefix>-<service>`` as a DNS label (long names keep a hash suffix)."""
    name = f"{prefix}-{service}".lower().replace("_", "-").replace(".", "-")
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return name[: MAX_NAME - 9].rstrip("-") + "-" + digest


def document(api_version: str, kind: str, name: str, namespace: str, spec: dict, entries: tuple[str, ...]) -> dict:
    label = ",".join(e.replace("/", ".") for e in entries)
    if len(label) > 63:
        label = label[:54] + "-" + hashlib.sha256(label.encode()).hexdigest()[:8]
    return {"apiVersion": api_version, "kind": kind,
            "metadata": {"name": name, "namespace": namespace,
                         "labels": {ORIGIN_LABEL: ORIGIN, ENTRY_LABEL: label}},
            "spec": spec}


KNOWN_COMMON = ("Kind", "Name", "Namespace", "Partition", "Meta", "CreateIndex", "ModifyIndex")


def report_unknown(entry: ConfigEntry, body: dict, known: tuple[str, ...], report: Report, prefix: str = "") -> None:
    """Every field of ``body`` not in ``known`` is reported (unsupported), never silently ignored."""
    for key in sorted(body):
        if key in known or key in KNOWN_COMMON and not prefix:
            continue
        value = body[key]
        if value in (None, "", [], {}, False, 0):
            continue  # zero values: what Consul itself returns for unset fields
        report.unsupported(entry, f"{prefix}{key}", "meshcore does not implement this field; it has no effect")


def partition_problem(entry: ConfigEntry, report: Report) -> bool:
    partition = entry.get("Partition") or "default"
    if partition != "default":
        report.unsupported(entry, "Partition", f"admin partitions are a Consul Enterprise feature meshcore does not "
                                               f"have; the entry (partition {partition!r}) is left out")
        return True
    return False
