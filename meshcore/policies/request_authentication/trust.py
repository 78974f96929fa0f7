"""How ``https://`` JWKS servers are trusted, and what OpenID Connect discovery found: the ``jwks`` part of the mesh
config (``meshcore-control-plane --mesh-config FILE``), beside ``extensionProviders``:

```yaml
jwks:
  caCertificates: /etc/meshcore/jwks-ca.pem      # a PEM file on every proxy host; default: the host's system bundle
  servers:                                       # per JWKS server (one Envoy cluster per server: the trust belongs there)
  - host: keys.corp.example                      # the jwksUri's host
    port: 8443                                   # optional: every port of the host
    caCertificates: /etc/pki/corp-root.pem
  discovery:                                     # OIDC discovery by the control plane (issuers without jwksUri/jwks)
    caCertificates: /etc/meshcore/oidc-ca.pem    # a PEM file on the control plane host; default: its system store
    refresh: 20m                                 # how often each issuer's openid-configuration is read again
```

Without ``caCertificates`` a proxy verifies a JWKS server against its host's system bundle, the one its agent found
(:mod:`meshcore.system_ca`: Debian, RHEL, SUSE, Alpine paths) and reported in the node metadata; a proxy whose agent
found none gets no config with an https JWKS (a clear error naming the paths and this setting), a proxy that
reported nothing (a statically rendered config) the Debian path.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field

from ...errors import NoTrustStore
from ...resources.kinds._fields import Dur, seconds
from ...resources.schema import Context, Custom, ListOf, Obj, Path, Port, Required, Str
from ...system_ca import DEFAULT_SYSTEM_CA_BUNDLE, SYSTEM_CA_BUNDLES

DEFAULT_DISCOVERY_REFRESH_S = 20 * 60.0
"""Istio's default refresh of an issuer's discovered keys (``PILOT_JWT_PUB_KEY_REFRESH_INTERVAL``)."""


@dataclass(frozen=True)
class JwksServerTrust:
    host: str
    port: int | None  # None: every port of the host
    ca_file: str


@dataclass(frozen=True)
class Discovered:
    """One issuer's OpenID Connect discovery: its ``jwks_uri``, or why there is none (``error``)."""

    issuer: str
    jwks_uri: str = ""
    error: str = ""


@dataclass(frozen=True)
class JwksSettings:
    ca_file: str = ""  # "": each proxy host's system bundle
    servers: tuple[JwksServerTrust, ...] = ()
    discovery_ca_file: str = ""  # "": the control plane host's system store
    discovery_refresh_s: float = DEFAULT_DISCOVERY_REFRESH_S
    discovered: tuple[Discovered, ...] = field(default=(), compare=True)  # by issuer, from the control plane's fetches

    def explicit_ca(self, host: str, port: int) -> str:
        """The CA file the settings name for a JWKS server (a server entry with its port, then one for every port of
        the host, then the mesh-wide one); ``""``: none, the proxy host's system bundle."""
        for wanted in (port, None):
            for s in self.servers:
                if s.host == host.lower() and s.port == wanted:
                    return s.ca_file
        return self.ca_file

    def discovered_for(self, issuer: str) -> Discovered | None:
        return next((d for d in self.discovered if d.issuer == issuer), None)


NO_SETTINGS = JwksSettings()


def trusted_ca(settings: JwksSettings | None, system_bundle: str | None, uri: str, node: str = "") -> str:
    """The CA file a proxy verifies the JWKS server of ``uri`` against. ``system_bundle``: what the proxy's agent
    found (``""``: none; None: not reported, the Debian path). :class:`NoTrustStore` when nothing is left."""
    parsed = urllib.parse.urlsplit(uri)
    host, port = parsed.hostname or "", parsed.port or 443
    explicit = (settings or NO_SETTINGS).explicit_ca(host, port)
    if explicit:
        return explicit
    if system_bundle is None:
        return DEFAULT_SYSTEM_CA_BUNDLE
    if system_bundle:
        return system_bundle
    raise NoTrustStore(
        f"the JWKS server {host}:{port} ({uri}) is verified against the proxy host's system CA bundle, and the agent "
        f"of {node or 'this proxy'} found none ({', '.join(SYSTEM_CA_BUNDLES)}): install the distribution's "
        "ca-certificates package there, or name a bundle in the mesh config (jwks.caCertificates, or "
        "jwks.servers[].caCertificates for this server)")


# --- the mesh config's jwks section ------------------------------------------------------------------------


def _unique_servers(cleaned: dict, path: Path, ctx: Context) -> None:
    seen: dict[tuple, int] = {}
    for i, s in enumerate(cleaned.get("servers") or ()):
        key = (s["host"].lower(), s.get("port"))
        if key in seen:
            ctx.add(path.field("servers").index(i), f"server {s['host']}{':' + str(s['port']) if s.get('port') else ''}"
                                                    f" is already given at servers[{seen[key]}]")
        seen.setdefault(key, i)


def _absolute(value: str) -> str | None:
    return None if value.startswith("/") else f"must be an absolute path to a PEM file, got {value!r}"


_PEM_FILE = Custom(Str(min_len=1), _absolute)

JWKS_CONFIG = Obj(
    {
        "caCertificates": _PEM_FILE,
        "servers": ListOf(Obj({"host": Required(Str(min_len=1)), "port": Port(), "caCertificates": Required(_PEM_FILE)})),
        "discovery": Obj({"caCertificates": _PEM_FILE, "refresh": Dur(min_s=1.0)}),
    },
    rules=[_unique_servers],
)
"""The ``jwks`` section's schema (:func:`meshcore.authz.providers.parse_mesh_settings` checks it)."""


def jwks_settings(cleaned: dict | None) -> JwksSettings:
    """The settings of a ``jwks`` section :data:`JWKS_CONFIG` accepted (None: the defaults)."""
    if not cleaned:
        return NO_SETTINGS
    discovery = cleaned.get("discovery") or {}
    return JwksSettings(
        ca_file=cleaned.get("caCertificates") or "",
        servers=tuple(JwksServerTrust(s["host"].lower(), int(s["port"]) if s.get("port") else None, s["caCertificates"])
                      for s in cleaned.get("servers") or ()),
        discovery_ca_file=discovery.get("caCertificates") or "",
        discovery_refresh_s=seconds(discovery["refresh"]) if discovery.get("refresh") else DEFAULT_DISCOVERY_REFRESH_S,
    )


__all__ = ["DEFAULT_DISCOVERY_REFRESH_S", "Discovered", "JWKS_CONFIG", "JwksServerTrust", "JwksSettings",
           "NO_SETTINGS", "NoTrustStore", "jwks_settings", "trusted_ca"]
