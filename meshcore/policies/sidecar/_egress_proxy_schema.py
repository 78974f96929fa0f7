"""The schema of ``Sidecar.outboundTrafficPolicy.egressProxy`` (behaviour: :mod:`.egress_proxy`); light, as the
resource registry imports the Sidecar schema before any plugin."""

from __future__ import annotations

from meshcore.resources.schema import Context, Int, Obj, Path, Required, Str

EGRESS_PROXY = Obj({
    "host": Required(Str(min_len=1, max_len=253)),
    "subset": Str(min_len=1, max_len=63),
    "port": Obj({"number": Required(Int(1, 65535))}),
})
"""The egress proxy: Istio's Destination (host, subset, port)."""


def egress_proxy_rules(cleaned: dict, path: Path, ctx: Context) -> None:
    """A Sidecar spec's ``outboundTrafficPolicy.egressProxy``: written with mode ALLOW_ANY (as Istio), and with an
    egress listener (``egress[].port``) whose undeclared destinations it takes (upstreams always name theirs)."""
    policy = cleaned.get("outboundTrafficPolicy") or {}
    if "egressProxy" not in policy:
        return
    at = path.field("outboundTrafficPolicy").field("egressProxy")
    if policy.get("mode") != "ALLOW_ANY":
        ctx.add(at, "egressProxy takes the traffic to undeclared destinations that ALLOW_ANY would pass through: "
                    "write mode: ALLOW_ANY beside it (REGISTRY_ONLY refuses those destinations, so nothing would "
                    "reach the proxy)")
    if not any("port" in e for e in cleaned.get("egress") or ()):
        ctx.add(at, "egressProxy takes what an egress listener would pass through, and this Sidecar declares none "
                    "(upstreams always name their destination): add an egress[] entry with port (HTTP or TLS)")


__all__ = ["EGRESS_PROXY", "egress_proxy_rules"]
