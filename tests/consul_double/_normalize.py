"""Key normalisation for request bodies, as Consul's decoder does it.

Consul decodes JSON bodies case-insensitively (Go's ``encoding/json``) and, for agent service
definitions, also accepts the snake_case spelling used in config files (``sidecar_service``,
``local_bind_port``). This module maps every known spelling onto the canonical CamelCase field
name, leaving user-owned maps (``Meta``, ``Config``, ...) untouched.
"""

from __future__ import annotations

from typing import Any

_CANONICAL = """
ID Name Service Tags Address Port Meta Kind Proxy Connect SidecarService Native Upstreams
DestinationType DestinationNamespace DestinationPartition DestinationPeer DestinationName Datacenter
LocalBindAddress LocalBindPort LocalBindSocketPath LocalBindSocketMode Config MeshGateway Mode Expose
Checks Check CheckID Notes Status TTL HTTP TCP UDP GRPC GRPCUseTLS H2PING Interval Timeout Method Header
Body TLSSkipVerify TLSServerName Args ScriptArgs AliasNode AliasService DeregisterCriticalServiceAfter
SuccessBeforePassing FailuresBeforeCritical FailuresBeforeWarning OutputMaxSize DestinationServiceName
DestinationServiceID LocalServiceAddress LocalServicePort LocalServiceSocketPath TransparentProxy Weights
Passing Warning EnableTagOverride TaggedAddresses SocketPath Token Namespace Partition Locality Region
Zone Node NodeMeta SkipNodeUpdate ServiceID ServiceName ServiceTags Definition Type Paths Path
LocalPathPort ListenerPort Protocol Output DockerContainerID Shell OSService Verb Key Value Flags Index
Session KV LockIndex CreateIndex ModifyIndex Checks Output Notes
""".split()

_BY_FOLDED = {name.lower(): name for name in _CANONICAL}

# Values of these keys are user-owned maps whose keys must be kept exactly as sent.
_OPAQUE = frozenset({"Meta", "NodeMeta", "Config", "Header", "TaggedAddresses", "Definition"})


def canonical_key(key: str) -> str:
    """``local_bind_port`` / ``localbindport`` / ``LocalBindPort`` -> ``LocalBindPort``; unknown keys unchanged."""
    return _BY_FOLDED.get(key.replace("_", "").replace("-", "").lower(), key)


def normalize(value: Any) -> Any:
    """Recursively canonicalise the keys of a decoded JSON body (see module docstring)."""
    if isinstance(value, list):
        return [normalize(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict[str, Any] = {}
    for key, item in value.items():
        name = canonical_key(key)
        out[name] = item if name in _OPAQUE else normalize(item)
    return out
