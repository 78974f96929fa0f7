"""Istio's string patterns and the attribute spellings both the evaluator and the Envoy compiler share.

A policy value is one of: exact (``GET``), prefix (``/api/*``), suffix (``*.js``) or any (``*``).
Host and namespace patterns become regular expressions, written in the subset that Python's ``re``
and Envoy's RE2 read the same way, so that :mod:`meshcore.authz` and Envoy agree on every request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXACT, PREFIX, SUFFIX, ANY = "exact", "prefix", "suffix", "any"

_RE_SPECIAL = set("\\.^$|?*+()[]{}")
_HOST_PORT = re.compile(r".*:[0-9]+")
_PRINCIPAL_NAMESPACE = re.compile(r"[^/]+/ns/([^/]+)/")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


@dataclass(frozen=True)
class Pattern:
    """One parsed value: ``kind`` is exact, prefix, suffix or any; ``text`` is the value without its ``*``."""

    kind: str
    text: str

    @classmethod
    def parse(cls, value: str) -> "Pattern":
        if value == "*":
            return cls(ANY, "")
        if value.endswith("*"):
            return cls(PREFIX, value[:-1])
        if value.startswith("*"):
            return cls(SUFFIX, value[1:])
        return cls(EXACT, value)

    def matches(self, candidate: str | None) -> bool:
        """Whether ``candidate`` matches; None (the attribute is absent) never does, ``*`` needs a non-empty value."""
        if candidate is None:
            return False
        if self.kind == ANY:
            return candidate != ""
        if self.kind == PREFIX:
            return candidate.startswith(self.text)
        if self.kind == SUFFIX:
            return candidate.endswith(self.text)
        return candidate == self.text


def re_escape(text: str) -> str:
    """Escape regex metacharacters with a backslash (the spelling both ``re`` and RE2 accept)."""
    return "".join("\\" + c if c in _RE_SPECIAL else c for c in text)


def host_regex(value: str) -> str:
    """Regex for a ``hosts`` value against ``:authority``: case-insensitive, and a value without a port
    also matches the host with any port (``productpage`` matches ``productpage:9080``), as in Istio."""
    p = Pattern.parse(value)
    if p.kind == ANY:
        return "(?i).+"
    if p.kind == PREFIX:
        return "(?i)" + re_escape(p.text) + ".*"
    body = (".*" if p.kind == SUFFIX else "") + re_escape(p.text)
    return "(?i)" + body + ("" if _HOST_PORT.fullmatch(p.text) else "(:[0-9]+)?")


def namespace_regex(value: str) -> str:
    """Regex for one namespace pattern (a single SPIFFE path segment)."""
    p = Pattern.parse(value)
    if p.kind == ANY:
        return "[^/]+"
    if p.kind == PREFIX:
        return re_escape(p.text) + "[^/]*"
    if p.kind == SUFFIX:
        return "[^/]*" + re_escape(p.text)
    return re_escape(p.text)


def spiffe_namespace_regex(value: str) -> str:
    """Regex for the URI SAN of any workload in the namespaces ``value`` matches: ``spiffe://<td>/ns/<ns>/...``."""
    return "spiffe://[^/]+/ns/" + namespace_regex(value) + "/.*"


def namespace_of_principal(principal: str | None) -> str | None:
    """``cluster.local/ns/shop/sa/cart`` -> ``shop``; None for a principal without a namespace (or none at all)."""
    if not principal:
        return None
    m = _PRINCIPAL_NAMESPACE.match(principal)
    return m.group(1) if m else None


def _decode_unreserved(path: str) -> str:
    """Decode ``%XX`` escapes of unreserved characters (``%61`` -> ``a``); upper-case the others' hex."""

    def one(m: re.Match) -> str:
        char = chr(int(m.group(1), 16))
        return char if char in _UNRESERVED else "%" + m.group(1).upper()

    return _ESCAPE.sub(one, path)


def normalize_path(path: str) -> str:
    """The path as Envoy's inbound HTTP connection manager hands it to RBAC (``normalize_path`` then
    ``merge_slashes``): no query or fragment, escaped unreserved characters decoded, ``.``/``..``
    segments resolved (RFC 3986), then repeated slashes merged."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    path = _decode_unreserved(path)
    segments = path.split("/")[1:] if path.startswith("/") else path.split("/")
    out: list[str] = []
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg in (".", ".."):
            if seg == ".." and out:
                out.pop()
            if last:
                out.append("")
            continue
        out.append(seg)
    return re.sub("/{2,}", "/", "/" + "/".join(out))


__all__ = [
    "ANY", "EXACT", "PREFIX", "SUFFIX", "Pattern", "host_regex", "namespace_of_principal", "namespace_regex",
    "normalize_path", "re_escape", "spiffe_namespace_regex",
]
