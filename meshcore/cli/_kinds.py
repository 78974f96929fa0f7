"""The resource kinds as meshctl spells them: any case, singular or plural, or a short name (``vs``).

meshctl resolves the spelling itself, without loading the resource registry (its validators pull in
heavy modules); ``tests/cli/test_cli_basics.py`` checks this table against :data:`meshcore.resources.registry.KINDS`.
"""

from __future__ import annotations

import difflib

from ..errors import MeshError

#: kind -> (plural, short names), in the order ``get all`` lists them.
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "PeerAuthentication": ("PeerAuthentications", ("pa",)),
    "AuthorizationPolicy": ("AuthorizationPolicies", ("ap",)),
    "DestinationRule": ("DestinationRules", ("dr",)),
    "VirtualService": ("VirtualServices", ("vs",)),
    "ServiceEntry": ("ServiceEntries", ("se",)),
    "Sidecar": ("Sidecars", ()),
    "RateLimit": ("RateLimits", ("rl",)),
    "RequestAuthentication": ("RequestAuthentications", ("ra",)),
    "Gateway": ("Gateways", ("gw",)),
    "AlertRule": ("AlertRules", ("alr",)),
}
#: what ``meshctl get`` takes besides the resource kinds.
PSEUDO_KINDS: dict[str, tuple[str, ...]] = {
    "proxies": ("proxy", "proxies", "px"),
    "services": ("service", "services", "svc"),
    "all": ("all",),
}


def _spellings() -> dict[str, str]:
    names: dict[str, str] = {}
    for kind, (plural, shorts) in KINDS.items():
        for spelling in (kind, plural, *shorts):
            names[spelling.lower()] = kind
    for pseudo, spellings in PSEUDO_KINDS.items():
        for spelling in spellings:
            names[spelling] = pseudo
    return names


def resolve(text: str) -> str:
    """The kind (``VirtualService``) or pseudo kind (``proxies``, ``services``, ``all``) ``text`` names;
    MeshError with the closest spellings otherwise."""
    names = _spellings()
    found = names.get(text.lower())
    if found:
        return found
    close = difflib.get_close_matches(text.lower(), list(names), n=3, cutoff=0.6)
    suggestions = list(dict.fromkeys(names[c] for c in close))
    hint = f"; did you mean {' or '.join(suggestions)}?" if suggestions else ";"
    known = ", ".join(f"{k} ({'/'.join(s)})" for k, (_, s) in KINDS.items())
    raise MeshError(f"unknown kind {text!r}{hint} known kinds: {known}, and proxies, services, all")
