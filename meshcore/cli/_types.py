"""Argument types for meshctl: every option is parsed and checked by argparse, before a command runs.

A command therefore never sends anything (a rotation, a certificate request) with an argument that turns
out to be wrong afterwards: argparse refuses it first, in one line (:class:`MeshctlParser`), exit 2.
Each type returns the parsed value, or, where the control plane takes the operator's spelling (``--ttl
1h``), that text unchanged once it is known to be good.
"""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NoReturn
from urllib.parse import urlsplit

from ..durations import format_duration, parse_duration
from ..errors import MeshError

#: ``--type`` of ``meshctl proxy-config``: the spellings accepted -> the xDS kind it filters on.
XDS_TYPES = {
    "listener": "listener", "listeners": "listener", "lds": "listener",
    "route": "route", "routes": "route", "rds": "route",
    "cluster": "cluster", "clusters": "cluster", "cds": "cluster",
    "endpoint": "endpoint", "endpoints": "endpoint", "eds": "endpoint",
    "secret": "secret", "secrets": "secret", "sds": "secret",
}
_HTTP_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 token: a method, a header name


class MeshctlParser(argparse.ArgumentParser):
    """argparse with a one-line error (``meshctl ca rotate: argument --timeout: ...``) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}{did_you_mean(self, message)} (see `{self.prog} --help`)\n")


def _all_options(parser: argparse.ArgumentParser) -> set[str]:
    """Every long option of ``parser`` and of its (already built) subcommands."""
    found: set[str] = set()
    for action in parser._actions:
        found.update(o for o in action.option_strings if o.startswith("--"))
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if child is not parser:
                    found |= _all_options(child)
    return found


def did_you_mean(parser: argparse.ArgumentParser, message: str) -> str:
    """``"; did you mean 'status'?"`` for an argparse error naming an unknown command, choice or option."""
    import difflib

    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        wanted, options = choice.group(1), re.findall(r"'([^']*)'", choice.group(2))
    else:
        unknown = re.search(r"unrecognized arguments: (\S+)", message)
        if not unknown or not unknown.group(1).startswith("-"):
            return ""
        wanted, options = unknown.group(1).split("=")[0], sorted(_all_options(parser))
    close = difflib.get_close_matches(wanted, options, n=3, cutoff=0.6)
    return f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _typed(name: str, check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from ``check(text) -> value`` that raises ValueError or MeshError to refuse."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except (ValueError, MeshError) as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = name  # argparse names it in "invalid <name> value" when there is no message
    return parse


def _seconds(text: str, *, low: float, high: float | None) -> float:
    seconds = parse_duration(text).total_seconds()
    if seconds < low or (high is not None and seconds > high):
        upper = f" and at most {format_duration(timedelta(seconds=high))}" if high is not None else ""
        raise ValueError(f"{text!r} must be at least {format_duration(timedelta(seconds=low))}{upper}")
    return seconds


def seconds(low: float = 0.001, high: float | None = None) -> Callable[[str], float]:
    """A duration (``500ms``, ``30s``, ``10m``, ``1h30m``; a bare number is seconds) -> seconds."""
    return _typed("duration", lambda t: _seconds(t, low=low, high=high))


def duration_text(low: float = 0.001, high: float | None = None) -> Callable[[str], str]:
    """A duration, checked as :func:`seconds` does, returned as written (the control plane parses it)."""

    def check(text: str) -> str:
        _seconds(text, low=low, high=high)
        return text.strip()

    return _typed("duration", check)


def _number(text: str, convert: Callable[[str], Any], low: float | None, high: float | None, what: str) -> Any:
    try:
        value = convert(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not {what}") from None
    if value != value or (low is not None and value < low) or (high is not None and value > high):  # NaN too
        bounds = " and ".join(b for b in (f"at least {low}" if low is not None else "",
                                          f"at most {high}" if high is not None else "") if b)
        raise ValueError(f"{text!r} must be {bounds}")
    return value


def integer(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    return _typed("integer", lambda t: _number(t, int, low, high, "a whole number"))


def number(low: float | None = None, high: float | None = None) -> Callable[[str], float]:
    return _typed("number", lambda t: _number(t, float, low, high, "a number"))


def _ip(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text.strip().strip("[]")))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address (e.g. 10.0.0.7 or fd00::7)") from None


ip_address = _typed("ip_address", _ip)


def _host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c in host for c in "/@ "):
        raise ValueError(f"{text!r} is not HOST:PORT (e.g. 10.0.0.5:15012; a port from 1 to 65535)")
    return text


host_port = _typed("host_port", _host_port)


def _node_host_port(text: str) -> str:
    """``[NODE=]HOST:PORT``."""
    node, sep, address = text.rpartition("=")
    if sep and not node:
        raise ValueError(f"{text!r}: the node before '=' is empty; write NODE=HOST:PORT or HOST:PORT")
    _host_port(address)
    return text


node_host_port = _typed("node_host_port", _node_host_port)


def _http_url(text: str) -> str:
    parts = urlsplit(text.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{text!r} is not an http:// or https:// URL (e.g. https://10.0.0.2:15443)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a number from 1 to 65535") from None
    return text.strip()


http_url = _typed("url", _http_url)


def _key_value(text: str) -> str:
    name, sep, _ = text.partition("=")
    if not sep or not name.strip():
        raise ValueError(f"{text!r}: expected NAME=VALUE, e.g. x-env=prod")
    return text


key_value = _typed("key_value", _key_value)


def _header(text: str) -> str:
    _key_value(text)
    name = text.partition("=")[0].strip()
    if not _HTTP_TOKEN.fullmatch(name):
        raise ValueError(f"{text!r}: {name!r} is not a header name (letters, digits and -)")
    return text


header = _typed("header", _header)


def _method(text: str) -> str:
    if not _HTTP_TOKEN.fullmatch(text):
        raise ValueError(f"{text!r} is not an HTTP method (e.g. GET, POST)")
    return text.upper()


http_method = _typed("method", _method)


def _path(text: str) -> str:
    if not text.startswith("/") or any(c in text for c in " \r\n\t"):
        raise ValueError(f"{text!r} is not a request path: it starts with / and has no spaces (e.g. /api/v1)")
    return text


http_path = _typed("path", _path)


def _xds_type(text: str) -> str:
    kind = XDS_TYPES.get(text.strip().lower())
    if kind is None:
        raise ValueError(f"{text!r} is not an xDS type; use one of listener, route, cluster, endpoint, secret")
    return kind


xds_type = _typed("type", _xds_type)


def _trust_domain(text: str) -> str:
    from ..ca._spiffeid import check_trust_domain  # the CA's own rule (py-spiffe), imported only when used
    from ..errors import ConfigError

    return check_trust_domain(text, ConfigError)


trust_domain = _typed("trust_domain", _trust_domain)


def checked(name: str, check: Callable[[str], object]) -> Callable[[str], str]:
    """An argparse type that runs ``check(text)`` (a parser that raises MeshError/ValueError) and keeps the text."""

    def keep(text: str) -> str:
        check(text)
        return text

    return _typed(name, keep)


__all__ = ["MeshctlParser", "XDS_TYPES", "checked", "duration_text", "header", "host_port", "http_method",
           "http_path", "http_url", "integer", "ip_address", "key_value", "node_host_port", "number", "seconds",
           "trust_domain", "xds_type"]
