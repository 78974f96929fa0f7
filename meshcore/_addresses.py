"""Address helpers shared by the generation path, the policies' schemas and the agent (stdlib only, so any of
them imports it without pulling in the others: see ``tests/test_imports.py``)."""

from __future__ import annotations

import ipaddress


def is_ip(host: str) -> bool:
    """Whether ``host`` is an IP address (v4 or v6, without brackets) rather than a name resolved by DNS."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


__all__ = ["is_ip"]
