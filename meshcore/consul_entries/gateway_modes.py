"""Mesh gateway modes from ``service-defaults`` and ``proxy-defaults`` config entries (pure).

How a sidecar reaches an upstream's instances in another datacenter (``Upstream.mesh_gateway``: ``none``,
``local``, ``remote``; see :mod:`meshcore.xds.generate.mesh_gateway`) is decided, per upstream, by the first
of these that sets a mode (Consul's order: "Upstream definition, service instance definition, centralized
service-defaults, centralized proxy-defaults", with ``UpstreamConfig`` placed as Consul's resolver places it):

1. the upstream's own ``MeshGateway`` in the sidecar's registration;
2. the calling service's ``service-defaults`` ``UpstreamConfig.Overrides[]`` naming that upstream;
3. the sidecar's ``Proxy.MeshGateway`` (the default of all its upstreams);
4. the calling service's ``service-defaults`` ``UpstreamConfig.Defaults.MeshGateway``;
5. the calling service's ``service-defaults`` ``MeshGateway``;
6. ``proxy-defaults`` ``global`` ``MeshGateway`` (mesh-wide);
7. the destination service's ``service-defaults`` ``MeshGateway`` (Consul's discovery chain takes the target's
   own setting when nothing on the caller's side set one);
8. none: instances are reached directly.

The registrations (1, 3) are in the catalog already (``Upstream.mesh_gateway_scope`` says which one set the
mode); :func:`with_gateway_modes` fills in the rest (scope ``entries``: applied again, they are decided anew),
so generation reads one answer per upstream. A mode of ``default`` (or empty) sets nothing; values other than
none/local/remote are left out here and reported (:func:`check_gateway_mode`), and so is an entry's mode that a
registration beats (:func:`report_registrations_that_win`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any, Iterable, Mapping

from ..catalog.model import Catalog, Upstream
from ._common import Report, report_unknown
from .model import CatalogFacts, ConfigEntry

MODES = ("none", "local", "remote")


def entry_mode(raw: Any) -> str:
    """``MeshGateway.Mode`` of an entry's field, lower-cased ("" for unset, ``default`` or not a mapping)."""
    if not isinstance(raw, Mapping):
        return ""
    mode = str(raw.get("Mode") or "").strip().lower()
    return "" if mode == "default" else mode


def check_gateway_mode(entry: ConfigEntry, path: str, raw: Any, report: Report) -> None:
    """Report a ``MeshGateway`` field meshcore cannot follow (an unknown mode, or keys other than ``Mode``)."""
    if raw in (None, {}, ""):
        return
    if not isinstance(raw, Mapping):
        report.add(entry, path, "invalid", "MeshGateway is an object with a Mode; ignored")
        return
    mode = entry_mode(raw)
    if mode and mode not in MODES:
        report.add(entry, f"{path}.Mode", "invalid", f"mesh gateway mode {raw.get('Mode')!r} is not one of "
                                                     f"{', '.join(MODES)} (or default); ignored")
    report_unknown(entry, dict(raw), ("Mode",), report, f"{path}.")


def report_registrations_that_win(entries: Iterable[ConfigEntry], facts: CatalogFacts, report: Report) -> None:
    """An entry's mode that a sidecar's own registration overrides is reported ``overridden`` (the registration
    wins: its upstream's ``MeshGateway`` over everything, its proxy's over all but an ``Overrides`` entry)."""
    scopes = {s: dict(v) for s, v in facts.gateway_scopes.items()}  # service -> upstream -> scope
    for e in entries:
        if e.kind == "proxy-defaults" and e.name == "global" and entry_mode(e.get("MeshGateway")) in MODES:
            winners = sorted(s for s, ups in scopes.items() if ups)
            if winners:
                report.add(e, "MeshGateway", "overridden", f"the registrations of {', '.join(winners)} set the mesh "
                                                           "gateway mode of some of their upstreams; theirs wins there")
        if e.kind != "service-defaults":
            continue
        mine = scopes.get(e.name, {})
        raw_cfg = e.get("UpstreamConfig")
        cfg: Mapping[str, Any] = raw_cfg if isinstance(raw_cfg, Mapping) else {}
        raw_defaults = cfg.get("Defaults")
        defaults: Mapping[str, Any] = raw_defaults if isinstance(raw_defaults, Mapping) else {}
        for path, raw in (("MeshGateway", e.get("MeshGateway")), ("UpstreamConfig.Defaults.MeshGateway",
                                                                  defaults.get("MeshGateway"))):
            if entry_mode(raw) in MODES and mine:
                report.add(e, path, "overridden", f"{e.name}'s registration sets the mesh gateway mode of its "
                                                  f"upstreams {', '.join(sorted(mine))} (proxy or upstream "
                                                  "mesh_gateway); it wins over this entry for them")
        for i, override in enumerate(cfg.get("Overrides") or ()):
            if not isinstance(override, Mapping) or entry_mode(override.get("MeshGateway")) not in MODES:
                continue
            if mine.get(str(override.get("Name") or "")) == "upstream":
                report.add(e, f"UpstreamConfig.Overrides[{i}].MeshGateway", "overridden",
                           f"{e.name}'s upstream {override['Name']} sets its own mesh gateway mode; it wins")


@dataclass(frozen=True)
class EntryGatewayModes:
    """The modes the entries set, by rung (see the module docstring); each a sorted tuple of pairs."""

    services: tuple[tuple[str, str], ...] = ()  # service -> its service-defaults MeshGateway.Mode
    upstream_defaults: tuple[tuple[str, str], ...] = ()  # caller -> UpstreamConfig.Defaults.MeshGateway.Mode
    overrides: tuple[tuple[tuple[str, str], str], ...] = ()  # (caller, upstream) -> Overrides[].MeshGateway.Mode
    default: str = ""  # proxy-defaults global MeshGateway.Mode

    def __bool__(self) -> bool:
        return bool(self.services or self.upstream_defaults or self.overrides or self.default)

    @cached_property
    def _maps(self) -> tuple[dict[str, str], dict[str, str], dict[tuple[str, str], str]]:
        return dict(self.services), dict(self.upstream_defaults), dict(self.overrides)

    def mode(self, caller: str, upstream: Upstream) -> tuple[str, str]:
        """``(mode, where it came from)`` for ``caller``'s ``upstream`` ("" and "" when nothing sets one)."""
        name = upstream.destination_name
        scope = upstream.mesh_gateway_scope
        if scope == "upstream" or (not scope and upstream.mesh_gateway):
            return upstream.mesh_gateway, "upstream"
        services, upstream_defaults, overrides = self._maps
        override = overrides.get((caller, name), "")
        if override:
            return override, "service-defaults UpstreamConfig.Overrides"
        if scope == "proxy":
            return upstream.mesh_gateway, "proxy"
        for mode, where in ((upstream_defaults.get(caller, ""), "service-defaults UpstreamConfig.Defaults"),
                            (services.get(caller, ""), "service-defaults"),
                            (self.default, "proxy-defaults"),
                            (services.get(name, ""), "destination service-defaults")):
            if mode:
                return mode, where
        return "", ""

    def caller_defaults(self, caller: str, proxy_mode: str) -> tuple[tuple[str, str], ...]:
        """What ``caller`` uses for a host that is none of its upstreams (a VirtualService route's other host), as
        :attr:`ServiceInstance.mesh_gateway_defaults` holds it: the rungs above without the upstream's own (1):
        an ``Overrides`` entry naming the host (2), else the caller's default (its proxy's mode ``proxy_mode`` (3),
        its ``UpstreamConfig.Defaults`` (4), its ``service-defaults`` (5), ``proxy-defaults`` (6)), else the host's
        own ``service-defaults`` (7)."""
        services, upstream_defaults, overrides = self._maps
        default = proxy_mode or upstream_defaults.get(caller, "") or services.get(caller, "") or self.default
        hosts = {} if default else dict(services)
        hosts.update((host, mode) for (c, host), mode in self.overrides if c == caller)
        return ((("", default),) if default else ()) + tuple(sorted(hosts.items()))


def entry_gateway_modes(entries: Iterable[ConfigEntry]) -> EntryGatewayModes:
    """What ``service-defaults`` and ``proxy-defaults`` (``global``) say of mesh gateway modes."""
    services: dict[str, str] = {}
    upstream_defaults: dict[str, str] = {}
    overrides: dict[tuple[str, str], str] = {}
    default = ""
    for e in entries:
        if e.kind == "proxy-defaults" and e.name == "global":
            mode = entry_mode(e.get("MeshGateway"))
            default = mode if mode in MODES else default
        elif e.kind == "service-defaults":
            mode = entry_mode(e.get("MeshGateway"))
            if mode in MODES:
                services[e.name] = mode
            cfg = e.get("UpstreamConfig") or {}
            if not isinstance(cfg, Mapping):
                continue
            mode = entry_mode((cfg.get("Defaults") or {}).get("MeshGateway")
                              if isinstance(cfg.get("Defaults"), Mapping) else None)
            if mode in MODES:
                upstream_defaults[e.name] = mode
            for override in cfg.get("Overrides") or ():
                if not isinstance(override, Mapping) or not override.get("Name"):
                    continue
                mode = entry_mode(override.get("MeshGateway"))
                if mode in MODES:
                    overrides[(e.name, str(override["Name"]))] = mode
    return EntryGatewayModes(services=tuple(sorted(services.items())),
                             upstream_defaults=tuple(sorted(upstream_defaults.items())),
                             overrides=tuple(sorted(overrides.items())), default=default)


def _resolved(upstream: Upstream, mode: str, where: str) -> Upstream:
    scope = "entries" if mode else ""
    if where in ("upstream", "proxy") or (upstream.mesh_gateway, upstream.mesh_gateway_scope) == (mode, scope):
        return upstream  # the same object: an unchanged instance stays the one the source handed out
    return Upstream(upstream.destination_name, upstream.local_bind_port, upstream.local_bind_address,
                    upstream.datacenter, mode, scope)  # dataclasses.replace costs 3x as much, per upstream


def with_gateway_modes(catalog: Catalog, modes: EntryGatewayModes) -> Catalog:
    """``catalog`` with each upstream's ``mesh_gateway`` as the rungs above decide (``catalog`` itself when
    nothing changes; the upstreams' scope stays as registered)."""
    if not modes:
        return catalog
    changed = False
    out = []
    defaults: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}  # (caller, proxy mode) -> shared tuple
    for inst in catalog.instances:
        if inst.upstreams:
            ups = tuple(_resolved(u, *modes.mode(inst.service, u)) for u in inst.upstreams)
            proxy_mode = next((u.mesh_gateway for u in inst.upstreams if u.mesh_gateway_scope == "proxy"), "")
            key = (inst.service, proxy_mode)
            if key not in defaults:
                defaults[key] = modes.caller_defaults(*key)
            if any(a is not b for a, b in zip(ups, inst.upstreams)) or inst.mesh_gateway_defaults != defaults[key]:
                inst = inst.with_upstreams(ups, defaults[key])
                changed = True
        out.append(inst)
    # Still sorted: an instance's place is decided by its registration's fields before its upstreams (service,
    # id, node, ...), which never tie, so no re-sort (Catalog.of would compare every instance again).
    return Catalog(nodes=catalog.nodes, instances=tuple(out)) if changed else catalog


__all__ = ["MODES", "EntryGatewayModes", "check_gateway_mode", "entry_gateway_modes", "entry_mode", "report_registrations_that_win",
           "with_gateway_modes"]
