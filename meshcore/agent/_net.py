"""Parsing of ``host:port`` strings (IPv4, IPv6 in brackets, DNS names)."""

from __future__ import annotations

import ipaddress

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


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True

