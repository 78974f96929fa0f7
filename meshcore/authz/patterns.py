"""Istio's string patterns and the attribute spellings both the evaluator and the Envoy compiler share.

A policy value is one of: exact (``GET``), prefix (``/api/*``), suffix (``*.js``) or any (``*``); a header value
may also be ``*text*`` (contains; validation allows it for ``request.headers`` only).
Host and namespace patterns become regular expressions, written in the subset that Python's ``re``
and Envoy's RE2 read the same way, so that :mod:`meshcore.authz` and Envoy agree on every request.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

EXACT, PREFIX, SUFFIX, ANY, CONTAINS = "exact", "prefix", "suffix", "any", "contains"

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
        if len(value) > 2 and value.startswith("*") and value.endswith("*"):
            return cls(CONTAINS, value[1:-1])
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
        if self.kind == CONTAINS:
            return self.text in candidate
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

def split_namespace(value: str, trust_domain: str) -> tuple[str, str]:
    """A ``namespaces`` entry as (trust domain pattern, namespace pattern).

    A bare namespace (``default``) means that namespace of the **local** trust domain only; another trust
    domain's namespace is written qualified, as a principal spells it: ``other.example/ns/default``
    (``*/ns/default``: that namespace in every trust domain, the local one and every federated one)."""
    td, sep, ns = value.partition("/ns/")
    return (td, ns) if sep else (trust_domain, value)


def spiffe_namespace_regex(value: str, trust_domain: str) -> str:
    """Regex for the URI SAN of any workload in the namespaces ``value`` matches (see :func:`split_namespace`):
    ``spiffe://<trust domain>/ns/<ns>/...``."""
    td, ns = split_namespace(value, trust_domain)
    return "spiffe://" + ("[^/]+" if td == "*" else re_escape(td)) + "/ns/" + namespace_regex(ns) + "/.*"


def namespace_matches(value: str, principal: str | None, namespace: str | None, trust_domain: str) -> bool:
    """Whether a caller (``principal`` without the scheme; or only its ``namespace`` when there is no
    principal, which then counts as the local trust domain's) is in the namespaces ``value`` matches."""
    td, ns = split_namespace(value, trust_domain)
    caller_td = principal.split("/", 1)[0] if principal and "/ns/" in principal else trust_domain
    return (td == "*" or td == caller_td) and Pattern.parse(ns).matches(namespace)


_OWS = "[ \\t]*"


def header_element_regex(value: str) -> str:
    """Regex for a header value that matches ``value`` as the whole value **or as any element** of a
    comma-separated list (``x-env: dev, prod``, or two ``x-env`` lines, which Envoy joins with ``,``).

    DENY and AUDIT rules match header values so: a list cannot slip past them (see
    :mod:`meshcore.policies.authorization_policy.rbac`)."""
    p = Pattern.parse(value)
    if p.kind == ANY:
        return ".+"
    if p.kind == PREFIX:
        body = re_escape(p.text) + "[^,]*"
    elif p.kind == SUFFIX:
        body = "[^,]*" + re_escape(p.text)
    elif p.kind == CONTAINS:
        body = "[^,]*" + re_escape(p.text) + "[^,]*"
    else:
        body = re_escape(p.text)
    return "(.*,)?" + _OWS + body + _OWS + "(,.*)?"


def normalize_host(host: str) -> str:
    """The ``:authority`` as the HTTP connection manager hands it to RBAC (``strip_trailing_host_dot``):
    ``secret.details.`` -> ``secret.details``, ``secret.details.:9080`` -> ``secret.details:9080``."""
    name, sep, port = host.rpartition(":") if _HOST_PORT.fullmatch(host) else (host, "", "")
    return name[:-1] + sep + port if name.endswith(".") else host


NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES = "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES"
PATH_NORMALIZATIONS = (NONE, BASE, MERGE_SLASHES, DECODE_AND_MERGE_SLASHES)
"""Istio's MeshConfig ``pathNormalization`` options (the control plane's ``--path-normalization``)."""
DEFAULT_PATH_NORMALIZATION = MERGE_SLASHES
_ESCAPED_SLASH = re.compile(r"%(2[fF]|5[cC])")
PATH_PARAMETER = re.compile(r"[^?#]*(;|%3[bB])")
"""A path (before its query) with a path parameter (``;``), plain or percent-encoded."""
PATH_PARAMETER_RE2 = "[^?]*(;|%3[bB]).*"
"""The same test in RE2, as an Envoy route matches it (``safe_regex`` sees the path without its query)."""


def path_rejection(path: str, normalization: str = DEFAULT_PATH_NORMALIZATION,
                   allow_path_parameters: bool = False) -> str | None:
    """Why the inbound side answers 400 to ``path`` before any policy decides it, or None.

    * an escaped slash or backslash (``%2F``, ``%5C``) under BASE and MERGE_SLASHES (Envoy's
      ``path_with_escaped_slashes_action: REJECT_REQUEST``; DECODE_AND_MERGE_SLASHES decodes them, NONE keeps them);
    * a path parameter (``;``, plain or ``%3B``) unless the mesh allows them (``--allow-path-parameters``)."""
    bare = path.split("?", 1)[0].split("#", 1)[0]
    if normalization in (BASE, MERGE_SLASHES) and _ESCAPED_SLASH.search(bare):
        return (f"path {path!r} has an escaped slash (%2F or %5C): rejected with 400 under pathNormalization "
                f"{normalization}")
    if not allow_path_parameters and PATH_PARAMETER.match(path):
        return f"path {path!r} has a path parameter (';' or %3B): rejected with 400, the mesh does not allow them"
    return None


def normalize_path(path: str, normalization: str = DEFAULT_PATH_NORMALIZATION) -> str:
    """The path as Envoy's inbound HTTP connection manager hands it to RBAC under Istio's ``normalization``
    option: no query or fragment; then (DECODE_AND_MERGE_SLASHES) ``%2F``/``%5C`` decoded; (BASE and up)
    escaped unreserved characters decoded, backslashes made slashes, ``.``/``..`` segments resolved
    (RFC 3986); (MERGE_SLASHES and up) repeated slashes merged. NONE: the path as sent."""
    path = path.split("?", 1)[0].split("#", 1)[0] or "/"
    if normalization == NONE:
        return path
    if normalization == DECODE_AND_MERGE_SLASHES:
        path = _ESCAPED_SLASH.sub("/", path)
    path = _decode_unreserved(path).replace("\\", "/")
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
    path = "/" + "/".join(out)
    return path if normalization == BASE else re.sub("/{2,}", "/", path)


# --- path templates ---------------------------------------------------------------------------------
# Istio (1.23+): a ``paths`` value holding ``{*}`` or ``{**}`` is an Envoy URI template
# (envoy.path.match.uri_template.uri_template_matcher). ``{*}`` is one path segment (at least one character),
# ``{**}`` zero or more characters across segments, and only as the last operator; an operator is a segment of
# its own, except that the last segment may follow it with a literal suffix (``/logs/{**}.gz``: Envoy's suffix,
# which Istio's own path-templating test uses); no other ``*``, ``{`` or ``}`` may appear. A literal is RFC 3986
# pchar without ``*`` and ``=`` (what Envoy's parser accepts).
ONE_SEGMENT, ANY_SEGMENTS = "{*}", "{**}"
_TEMPLATE_LITERAL = re.compile(r"[A-Za-z0-9\-._~%!$&'()+,;:@]+")
_ONE_SEGMENT_RE = r"[A-Za-z0-9\-._~%!$&'()+,;:@]+"  # Envoy's regex for "*"
_ANY_SEGMENTS_RE = r"[A-Za-z0-9\-._~%!$&'()+,;:@/]*"  # and for "**"


def is_path_template(value: str) -> bool:
    """Whether a ``paths`` value is a URI template (holds ``{*}`` or ``{**}``) rather than Istio's plain pattern."""
    return ONE_SEGMENT in value or ANY_SEGMENTS in value


def _template_segments(value: str) -> list[str]:
    return value[1:].split("/")


def _operator_and_suffix(segment: str) -> tuple[str, str] | None:
    """``"{**}.gz"`` -> ``("{**}", ".gz")``; ``"{*}"`` -> ``("{*}", "")``; None when the segment is no operator."""
    for op in (ANY_SEGMENTS, ONE_SEGMENT):
        if segment.startswith(op):
            return op, segment[len(op):]
    return None


def path_template_problem(value: str) -> str | None:
    """Why ``value`` is not a path template Istio and Envoy accept, or None."""
    if not value.startswith("/"):
        return f"{value!r}: a path template starts with '/'"
    segments = _template_segments(value)
    seen_any = False
    for i, seg in enumerate(segments):
        op = _operator_and_suffix(seg)
        if op is not None and (not op[1] or i == len(segments) - 1):
            if seen_any:
                return f"{value!r}: {{**}} must be the last operator of a path template"
            seen_any = op[0] == ANY_SEGMENTS
            if op[1] and not _TEMPLATE_LITERAL.fullmatch(op[1]):
                return (f"{value!r}: suffix {op[1]!r} is not allowed in a path template (letters, digits and "
                        "-._~%!$&'()+,;:@ only)")
            continue
        if seg == "" and i == len(segments) - 1 and i > 0:
            continue  # one trailing "/"
        if "{" in seg or "}" in seg or "*" in seg:
            return (f"{value!r}: in a path template, {{*}} and {{**}} must each be a whole path segment (the last "
                    "segment may add a suffix: /logs/{**}.gz), and no other '*', '{' or '}' may appear (e.g. "
                    "/api/{*}/items, /static/{**})")
        if not _TEMPLATE_LITERAL.fullmatch(seg):
            what = "an empty segment ('//')" if seg == "" else f"segment {seg!r}"
            return (f"{value!r}: {what} is not allowed in a path template (letters, digits and "
                    "-._~%!$&'()+,;:@ only)")
    return None


def path_template_envoy(value: str) -> str:
    """The template in Envoy's spelling: ``/api/{*}/x/{**}`` -> ``/api/*/x/**``."""
    return value.replace(ANY_SEGMENTS, "**").replace(ONE_SEGMENT, "*")


def path_template_regex(value: str) -> str:
    """The regular expression Envoy matches a template with (the whole path, without its query), for Python."""
    def segment(seg: str) -> str:
        op = _operator_and_suffix(seg)
        if op is None:
            return re.escape(seg)
        return (_ANY_SEGMENTS_RE if op[0] == ANY_SEGMENTS else _ONE_SEGMENT_RE) + re.escape(op[1])

    return "/" + "/".join(segment(s) for s in _template_segments(value))


def path_matches(value: str, path: str) -> bool:
    """Whether a ``paths`` value (plain pattern or template) matches an already normalized ``path``."""
    if is_path_template(value):
        return re.fullmatch(path_template_regex(value), path) is not None
    return Pattern.parse(value).matches(path)


__all__ = [
    "ANY", "CONTAINS", "EXACT", "PREFIX", "SUFFIX", "NONE", "BASE", "MERGE_SLASHES", "DECODE_AND_MERGE_SLASHES",
    "DEFAULT_PATH_NORMALIZATION", "PATH_NORMALIZATIONS", "PATH_PARAMETER", "PATH_PARAMETER_RE2", "Pattern",
    "header_element_regex", "host_regex", "namespace_matches", "namespace_of_principal", "namespace_regex",
    "normalize_host", "normalize_path", "path_matches", "path_rejection", "path_template_envoy",
    "path_template_problem", "path_template_regex", "is_path_template", "re_escape", "spiffe_namespace_regex", "split_namespace",
]
