"""Parsing of ``host:port`` strings (IPv4, IPv6 in brackets, DNS names); Envoy admin requests."""

from __future__ import annotations

import http.client

from meshcore.errors import ConfigError


def split_host_port(value: str, *, what: str = "address") -> tuple[str, int]:
    """``"127.0.0.1:19000"`` / ``"[::1]:19000"`` / ``"cp.example:15012"`` -> ``(host, port)``."""
    text = value.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise ConfigError(f"{what} {value!r} is not [IPv6]:port")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise ConfigError(f"{what} {value!r} is not host:port (write IPv6 as [addr]:port)")
    if not host:
        raise ConfigError(f"{what} {value!r} has no host")
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"{what} {value!r} has a non-numeric port") from None
    if not 0 < port < 65536:
        raise ConfigError(f"{what} {value!r}: port must be 1-65535")
    return host, port





WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


def admin_get(admin: str, path: str, timeout: float = 2.0) -> tuple[int, bytes] | None:
    """``GET path`` on Envoy's admin ``host:port`` (a wildcard bind is asked on loopback): (status, body),
    or None when Envoy did not answer. Direct (never through an HTTP proxy, unlike urllib) and without
    urllib's opener machinery, which costs more CPU than the request on an idle agent."""
    try:
        host, port = split_host_port(admin)
    except ConfigError:
        return None
    conn = http.client.HTTPConnection(WILDCARDS.get(host, host), port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()
