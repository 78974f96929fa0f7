"""Pure parsing: what the probes print on a host -> one host's report, and the fleet table.

No IO here: every function takes text (recorded or live) and returns plain data, so the report is
unit-tested with outputs recorded from real hosts.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

# Everything :func:`redact` removes, wherever it appears (log lines, unit files and command lines, process
# lists, JSON, environment dumps). Order matters: key blocks first, then tokens by their prefix, then
# values of secret-named fields, flags and variables.
_PRIVATE_BLOCK = re.compile(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
                            re.S)
#: meshcore's own secrets carry a fixed prefix: join tokens ``mjt_``, operator API tokens ``mco_``.
_PREFIXED_TOKEN = re.compile(r"(?<![A-Za-z0-9])(mjt|mco)_[A-Za-z0-9_-]+")
_SECRET_WORD = r"(?:token|secret|passw(?:or)?d|kek|api[_-]?key|private[_-]?key|credentials?|authorization)"
_NOT_A_VALUE = r"(?![\w-]*(?:file|path|dir|prefix|ttl|expires|name)\b)"  # --kek-file PATH, token_ttl: 1h stay
#: ``--join-token X``, ``--token=X``, ``-token X`` on command lines (ps, ExecStart=, shell history).
_SECRET_FLAG = re.compile(r"(?i)(--?[\w-]*" + _SECRET_WORD + _NOT_A_VALUE + r"[\w-]*(?:=|\s+))(?!-)([^\s\"',]+)")
#: ``MESHCORE_KEK=X``, ``Environment=CONSUL_HTTP_TOKEN=X``, ``token: X``, ``"admin_token": "X"``, headers.
_SECRET_FIELD = re.compile(r"(?i)((?<![A-Za-z0-9-])[\w.-]*" + _SECRET_WORD + _NOT_A_VALUE
                           + r"[\w.-]*[\"']?\s*[:=]\s*[\"']?(?:(?:bearer|basic|token)\s+)?)([^\s\"',;]{4,})")
REDACTED_KEY = "[private key removed by meshctl bug-report]"
REDACTED = "[redacted]"


@dataclass(frozen=True)
class HostReport:
    """One host in ``meshctl fleet status``."""

    host: str
    address: str
    groups: tuple[str, ...] = ()
    units: dict[str, str] = field(default_factory=dict)
    envoy: dict[str, Any] = field(default_factory=dict)
    agent_state: str | None = None
    certificates: list[dict[str, Any]] = field(default_factory=list)
    not_after: str | None = None
    error: str | None = None

    @property
    def healthy(self) -> bool:
        """Reached, and every installed unit (and Envoy, where an agent runs) active."""
        if self.error:
            return False
        return all(state in ("active", "not-installed") for state in self.units.values())

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "address": self.address, "groups": list(self.groups), "units": self.units,
                "envoy": self.envoy, "agent_state": self.agent_state, "certificates": self.certificates,
                "not_after": self.not_after, "healthy": self.healthy, "error": self.error}


def split_sections(text: str) -> dict[str, str]:
    """``@@name`` headed sections -> {name: body}; text before the first header is dropped."""
    out: dict[str, str] = {}
    name: str | None = None
    lines: list[str] = []
    for line in text.splitlines():
        if line.startswith("@@"):
            if name is not None:
                out[name] = "\n".join(lines).strip("\n")
            name, lines = line[2:].strip(), []
        elif name is not None:
            lines.append(line)
    if name is not None:
        out[name] = "\n".join(lines).strip("\n")
    out.pop("end", None)
    return out


def parse_key_values(text: str) -> dict[str, str]:
    """``Key=Value`` lines (``systemctl show``, the Envoy probe) -> dict; other lines ignored."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key and " " not in key:
            out[key.strip()] = value.strip()
    return out


def unit_state(show: dict[str, str]) -> str:
    """A unit's state from ``systemctl show``: ``active``, ``inactive``, ``failed``, ``activating``, ...

    ``not-installed`` when systemd does not know the unit; ``unknown`` when systemctl said nothing
    usable (no systemd, or no permission).
    """
    if show.get("LoadState") in ("not-found", "masked") and show.get("ActiveState") in (None, "", "inactive"):
        return "not-installed" if show.get("LoadState") == "not-found" else "masked"
    return show.get("ActiveState") or "unknown"


def envoy_state(probe: dict[str, str], agent: str) -> dict[str, Any]:
    """Envoy (the agent's child) from the probe: its state, pid and /ready answer."""
    pid = int(probe["pid"]) if probe.get("pid", "").isdigit() else None
    alive = probe.get("pid_alive") == "1"
    ready = probe.get("ready_code") == "200" and probe.get("ready_body", "").upper() == "LIVE"
    if agent == "not-installed":
        state = "not-installed"
    elif ready and (alive or pid is None):
        state = "active"
    elif alive:
        state = "activating"
    elif agent == "active":
        state = "failed" if pid else "inactive"
    else:
        state = "inactive"
    out: dict[str, Any] = {"state": state, "pid": pid, "ready": ready, "admin": probe.get("admin") or None}
    if probe.get("ready_error"):
        out["ready_error"] = probe["ready_error"]
    return out


def certificates_from_status(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The agent's certificates from its ``status.json``: node certificate first, then each service's."""
    certs = []
    node = doc.get("node_certificate")
    if node:
        certs.append({"name": "node", "spiffe_id": node.get("spiffe_id"), "serial": node.get("serial"),
                      "not_after": node.get("not_after"), "renew_at": node.get("renew_at")})
    for svc in doc.get("services") or []:
        if svc.get("not_after"):
            certs.append({"name": svc.get("name"), "spiffe_id": svc.get("spiffe_id"), "serial": svc.get("serial"),
                          "not_after": svc.get("not_after"), "renew_at": svc.get("renew_at")})
    return certs


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


def earliest(certs: list[dict[str, Any]]) -> str | None:
    dates = [c["not_after"] for c in certs if c.get("not_after")]
    return min(dates, key=_when) if dates else None


def build_host_report(host: str, address: str, groups: tuple[str, ...], probe_output: str) -> HostReport:
    """The report of one host from the output of :func:`meshcore.fleet._scripts.status_probe`."""
    sections = split_sections(probe_output)
    units = {}
    for key in ("agent", "control-plane"):
        units[key] = unit_state(parse_key_values(sections.get(f"unit {key}", "")))
    status_text = sections.get("status", "").strip()
    doc: dict[str, Any] = {}
    error = None
    if status_text:
        try:
            doc = json.loads(status_text)
        except ValueError:
            error = "the agent's status.json is not valid JSON"
    envoy = envoy_state(parse_key_values(sections.get("envoy", "")), units["agent"])
    if units["agent"] != "not-installed":
        units["envoy"] = envoy["state"]
    certs = certificates_from_status(doc)
    if "@@end" not in probe_output:
        error = error or "the probe's output ended early"
    return HostReport(host=host, address=address, groups=groups, units=units, envoy=envoy,
                      agent_state=doc.get("state"), certificates=certs, not_after=earliest(certs), error=error)


def format_table(reports: list[HostReport]) -> str:
    """The human view of ``meshctl fleet status``."""
    headers = ["HOST", "ADDRESS", "AGENT", "ENVOY", "CONTROL-PLANE", "CERTS NOT AFTER", "ERROR"]
    rows = [[r.host, r.address, r.units.get("agent", "-"), r.units.get("envoy", "-"),
             r.units.get("control-plane", "-"), r.not_after or "-", (r.error or "")[:80]] for r in reports]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [headers, *rows])


# --- bug report helpers --------------------------------------------------------------------------

def redact(text: str) -> str:
    """Remove every secret :mod:`meshctl bug-report <meshcore.fleet.operations>` could collect, wherever it is:
    private key PEM blocks (also a truncated one), ``mjt_`` join and ``mco_`` operator tokens (bare, in
    log lines, command lines and process lists), and the value of every secret-named flag
    (``--join-token X``, ``--token=X``), variable (``MESHCORE_KEK=X``, ``CONSUL_HTTP_TOKEN=X``), field
    (``"admin_token": "X"``, ``token: X``) and header (``Authorization: Bearer X``, ``X-Consul-Token: X``).

    The one redaction every collected text (and the archive's manifest) goes through; idempotent."""
    text = _PRIVATE_BLOCK.sub(REDACTED_KEY, text)
    text = text.replace("PRIVATE KEY", "PRIVATE-KEY(redacted)")
    text = _PREFIXED_TOKEN.sub(lambda m: f"{m.group(1)}_{REDACTED}", text)
    text = _SECRET_FLAG.sub(lambda m: m.group(1) + _keep_redacted(m.group(2)), text)
    return _SECRET_FIELD.sub(lambda m: m.group(1) + _keep_redacted(m.group(2)), text)


def _keep_redacted(value: str) -> str:
    return value if value.endswith(REDACTED) else REDACTED


def certificate_metadata(pem: str) -> dict[str, Any]:
    """What an operator needs from one certificate, never the certificate's key."""
    cert = x509.load_pem_x509_certificate(pem.encode())
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        uris = san.get_values_for_type(x509.UniformResourceIdentifier)
        dns = san.get_values_for_type(x509.DNSName)
    except x509.ExtensionNotFound:
        uris, dns = [], []
    try:
        is_ca = cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    der = cert.public_bytes(serialization.Encoding.DER)
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "not_before": cert.not_valid_before_utc.isoformat().replace("+00:00", "Z"),
        "not_after": cert.not_valid_after_utc.isoformat().replace("+00:00", "Z"),
        "uri_sans": uris,
        "dns_sans": dns,
        "is_ca": is_ca,
        "sha256": hashlib.sha256(der).hexdigest(),
    }


def certificates_metadata(files: dict[str, list[str]]) -> dict[str, list[dict[str, Any]]]:
    """{path: [PEM...]} (the certificates probe) -> {path: [metadata...]}; unparsable blocks say so."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path, pems in sorted(files.items()):
        items = []
        for pem in pems:
            try:
                items.append(certificate_metadata(pem))
            except ValueError as exc:
                items.append({"error": f"not a parsable certificate: {exc}"})
        out[path] = items
    return out
