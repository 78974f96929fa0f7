"""``meshctl install`` values: the schema, merging (profile < -f files < --set), and Ansible extra-vars.

Values are a small, typed, Helm-like tree (``mtls.mode``, ``security.defaultDeny``, ``ca.leafTTL``...).
Every known key is one :class:`Key` in :data:`SCHEMA`: its type, what it means, and the role variables
of ``ansible/roles`` it sets. Pure functions only; reading files and running ansible-playbook are the
CLI's (:mod:`meshcore.cli.install`).

Merge order, later wins: the profile's values (``ansible/profiles/<profile>.yaml``), each ``-f`` file in
order, each ``--set`` in order. A ``null`` unsets a key (and everything under a null mapping), so the
role default or the inventory applies again. Only keys that end up set become extra-vars: whatever
values do not mention stays as the inventory says (extra-vars beat inventory variables in Ansible).
Every problem (unknown key, wrong type) is reported with its source and key path, all at once.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from ..authz.patterns import PATH_NORMALIZATIONS
from ..ca.keys import KEY_TYPES
from ..errors import FieldError, ValidationError
from ._value_types import (
    Bool,
    Duration,
    Enum,
    Limit,
    ListOf,
    Number,
    Size,
    Str,
    ValueProblem,
    ValueType,
)

PROFILES = ("demo", "production")
DEFAULT_PROFILE = "production"
MANAGED_LABEL = "meshcore.io/managed-by"
"""Label the playbook puts on the mesh-wide resources it applies (and the only ones it removes)."""


@dataclass(frozen=True)
class Key:
    """One known value: dotted ``path``, its type, help text and the role variables it sets."""

    path: str
    type: ValueType
    help: str
    role_vars: tuple[str, ...]
    render: Callable[[Any], Any] = field(default=lambda v: v)

    def extra_vars(self, value: Any) -> dict[str, Any]:
        rendered = self.render(value)
        return {name: rendered for name in self.role_vars}


_HOST_PORT = r"[A-Za-z0-9.\-\[\]:]+:\d{1,5}"
_DNS = r"[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9\-]{0,61}[a-z0-9])?)*"
_LOG_LEVELS = ("debug", "info", "warning", "error")
_ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


def _cp(suffix: str) -> tuple[str, ...]:
    return (f"meshcore_control_plane_{suffix}",)


def _agent(suffix: str) -> tuple[str, ...]:
    return (f"meshcore_agent_{suffix}",)


def _limits(unit: str, prefix: Callable[[str], tuple[str, ...]]) -> list[Key]:
    return [
        Key(f"resources.{unit}.memoryHigh", Size(), f"MemoryHigh= of the {unit} unit (throttling starts here).",
            prefix("memory_high")),
        Key(f"resources.{unit}.memoryMax", Size(), f"MemoryMax= of the {unit} unit (hard limit).",
            prefix("memory_max")),
        Key(f"resources.{unit}.tasksMax", Limit(), f"TasksMax= of the {unit} unit.", prefix("tasks_max")),
        Key(f"resources.{unit}.limitNOFILE", Limit(), f"LimitNOFILE= of the {unit} unit (open files).",
            prefix("limit_nofile")),
    ]


SCHEMA: tuple[Key, ...] = (
    Key("profile", Enum(*PROFILES), "Base values: demo (a lab) or production; the default is production.",
        ("meshcore_install_profile",)),
    Key("trustDomain", Str(_DNS, "DNS name, e.g. cluster.local", allow_empty=False),
        "SPIFFE trust domain of the mesh; fixed once the CA exists. Unset (no profile sets it): the "
        "inventory's, per datacenter.", _cp("trust_domain")),
    Key("mtls.mode", Enum("STRICT", "PERMISSIVE"),
        "Mesh-wide PeerAuthentication meshcore-system/default the playbook applies.",
        ("meshcore_mesh_policy_mtls_mode",)),
    Key("security.defaultDeny", Bool(),
        "true: the playbook applies the mesh-wide deny-all AuthorizationPolicy (meshcore-system/deny-all, "
        "spec {}); false: removes it if the playbook made it.", ("meshcore_mesh_policy_default_deny",)),
    Key("security.pathNormalization", Enum(*PATH_NORMALIZATIONS),
        "How every Envoy normalizes request paths before authorization and routing (Istio's MeshConfig "
        "pathNormalization names; the daemon's default is MERGE_SLASHES).", _cp("path_normalization")),
    Key("security.allowPathParameters", Bool(),
        "true: paths may carry parameters (';', %3B); false (the default): inbound Envoys answer them 400.",
        _cp("allow_path_parameters")),
    Key("ca.leafTTL", Duration(), "Lifetime of workload certificates (rotated at half life).", _cp("leaf_ttl")),
    Key("ca.nodeCertTTL", Duration(), "Lifetime of node certificates (rotated at half life).", _cp("node_cert_ttl")),
    Key("ca.nodeRecoveryGrace", Duration(), "How long after expiry an agent may recover its node certificate "
        "with the same key, without a join token.", _cp("node_recovery_grace")),
    Key("ca.keyType", Enum(*KEY_TYPES), "Key type of CA keys made from now on and of the keys agents make.",
        _cp("key_type") + _agent("key_type")),
    Key("tracing.otlp", Str(_HOST_PORT, "host:port of an OTLP/gRPC collector, empty = off"),
        "Where Envoys send traces.", _cp("tracing_otlp")),
    Key("tracing.sampling", Number(0, 100), "Percent of requests traced.", _cp("tracing_sampling")),
    Key("accessLog.path", Str(r"stdout|/.+", "stdout, an absolute path on the VM, or empty = off"),
        "Envoy access logs: stdout is the agent's journal.", _cp("access_log")),
    Key("accessLog.format", Enum("json", "text"), "Access log line format.", _cp("access_log_format")),
    Key("alerts.webhooks", ListOf(Str(r"https?://\S+", "http(s) URL", allow_empty=False)),
        "URLs the control plane posts alerts to.", _cp("alert_webhooks")),
    Key("dashboard.collectInterval", Duration(), "How often the control plane collects the service graph.",
        _cp("collect_interval")),
    Key("controlPlane.catalog", Str(r"consul|files:/.+", "consul or files:/DIR"),
        "Where the catalog comes from: the Consul catalog, or Consul definition files on the control plane host.",
        _cp("catalog")),
    Key("controlPlane.store", Str(r"consul|dir:/.+", "consul or dir:/DIR"),
        "Where mesh resources live: Consul KV (replicated) or a directory on the control plane host.",
        _cp("store")),
    Key("controlPlane.logLevel", Enum(*_LOG_LEVELS), "Control plane log level.", _cp("log_level")),
    Key("controlPlane.replicas", ListOf(Str(r"https://" + _HOST_PORT, "https://HOST:PORT", allow_empty=False)),
        "Agent API URLs of the control plane replicas agents spread over and fail over between (default: every "
        "host of the inventory's meshcore_control_plane group, which is where replicas are added).",
        _agent("control_plane")),
    Key("controlPlane.maxStreamAge", Str(r"0|\d+(\.\d+)?(ms|s|m|h)", "a duration such as 30m, or 0 for never"),
        "ADS connections are closed after this age (+-10% jitter) so Envoys spread back over the replicas.",
        _cp("max_stream_age")),
    Key("agent.controlPlaneFromConsul", Str(r"[A-Za-z0-9][A-Za-z0-9_\-]*", "a Consul service name"),
        "Agents also find the control plane replicas in Consul: the passing instances of this service.",
        _agent("control_plane_from_consul")),
    Key("agent.metricsBind", Str(_HOST_PORT + "|off", "HOST:PORT, or off"),
        "Where agents serve their merged Prometheus endpoint (default: loopback port 15090, which only the VM "
        "itself reaches); 0.0.0.0:15090 lets the control plane and Prometheus scrape it.", _agent("metrics_bind")),
    Key("agent.logLevel", Enum(*_LOG_LEVELS), "Agent log level.", _agent("log_level")),
    Key("agent.envoyLogLevel", Enum(*_ENVOY_LOG_LEVELS), "Envoy log level.", _agent("envoy_log_level")),
    Key("agent.refreshInterval", Duration(), "How often agents poll the control plane.", _agent("refresh_interval")),
    Key("agent.joinTokenTTL", Duration(), "Lifetime of the one-time join tokens the playbook creates.",
        _agent("token_ttl")),
    *_limits("controlPlane", _cp),
    *_limits("agent", _agent),
)

KEYS: dict[str, Key] = {k.path: k for k in SCHEMA}
_PARENTS = {k.path.rsplit(".", i)[0] for k in SCHEMA for i in range(1, k.path.count(".") + 1)}


@dataclass(frozen=True)
class Layer:
    """Values from one source (``profile production``, a file name, ``--set``), as a nested mapping."""

    source: str
    values: Mapping[str, Any]


@dataclass(frozen=True)
class Values:
    """Merged, validated values: dotted key -> value (set keys only), and which source set each."""

    profile: str
    values: dict[str, Any]
    origins: dict[str, str]

    def nested(self) -> dict[str, Any]:
        """The values as the tree an operator writes in a values file."""
        out: dict[str, Any] = {}
        for path in sorted(self.values):
            node = out
            *parents, leaf = path.split(".")
            for part in parents:
                node = node.setdefault(part, {})
            node[leaf] = self.values[path]
        return out

    def extra_vars(self) -> dict[str, Any]:
        """The Ansible extra-vars: role variable -> value, for every set key."""
        out: dict[str, Any] = {}
        for path in sorted(self.values):
            out.update(KEYS[path].extra_vars(self.values[path]))
        return out


def known_keys() -> list[str]:
    return [k.path for k in SCHEMA]


def parse_set(text: str) -> dict[str, Any]:
    """``--set a.b=value`` -> ``{"a": {"b": value}}``; the value is read as YAML (``true``, ``3``, ``[x, y]``).

    ``--set a.b=`` sets the empty string. Raises ValidationError when there is no ``=`` or a key part is empty.
    """
    key, sep, raw = text.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(p.strip() for p in parts):
        raise ValidationError([FieldError("--set", None, key, f"expected KEY=VALUE with a dotted key "
                                          f"(e.g. --set mtls.mode=STRICT), got {text!r}")], "bad --set")
    if raw == "":
        value: Any = ""
    else:
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw  # not YAML (e.g. a stray colon): take the text as it is
    out: dict[str, Any] = {}
    node = out
    for part in parts[:-1]:
        node = node.setdefault(part.strip(), {})
    node[parts[-1].strip()] = value
    return out


def _unknown(path: str) -> str:
    hint = difflib.get_close_matches(path, known_keys(), n=1)
    msg = "unknown key"
    if hint:
        msg += f"; did you mean {hint[0]!r}?"
    return msg + "; known keys: " + ", ".join(known_keys())


def _flatten(layer: Layer, errors: list[FieldError]) -> list[tuple[str, Any]]:
    """(dotted path, value) pairs of a layer, in document order; ``None`` values mean unset."""
    out: list[tuple[str, Any]] = []

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, Mapping):
            errors.append(FieldError(layer.source, None, prefix or "(top)",
                                     "expected a mapping of keys (e.g. mtls: {mode: STRICT})"))
            return
        for raw_key, value in node.items():
            if not isinstance(raw_key, str):
                errors.append(FieldError(layer.source, None, f"{prefix}.{raw_key}" if prefix else str(raw_key),
                                         "keys must be strings"))
                continue
            path = f"{prefix}.{raw_key}" if prefix else raw_key
            if path in KEYS:
                out.append((path, value))
            elif path in _PARENTS:
                if value is None:
                    out.append((path, None))  # unset everything under it
                else:
                    walk(value, path)
            else:
                errors.append(FieldError(layer.source, None, path, _unknown(path)))

    walk(layer.values, "")
    return out


def merge(layers: Iterable[Layer]) -> tuple[dict[str, Any], dict[str, str], list[FieldError]]:
    """Merge layers in order (later wins) and check every value's type; returns values, origins, errors."""
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    errors: list[FieldError] = []
    for layer in layers:
        for path, value in _flatten(layer, errors):
            if value is None:
                for k in [k for k in values if k == path or k.startswith(path + ".")]:
                    values.pop(k)
                    origins.pop(k)
                continue
            try:
                values[path] = KEYS[path].type.check(value)
                origins[path] = layer.source
            except ValueProblem as exc:
                errors.append(FieldError(layer.source, None, path, str(exc)))
    return values, origins, errors


def chosen_profile(layers: Iterable[Layer]) -> str:
    """The ``profile`` the operator's layers ask for (the last one that says), else the default."""
    profile = DEFAULT_PROFILE
    for layer in layers:
        if isinstance(layer.values, Mapping) and "profile" in layer.values and layer.values["profile"] is not None:
            profile = layer.values["profile"]
    return profile


def resolve(layers: list[Layer], profiles: Mapping[str, Mapping[str, Any]]) -> Values:
    """Profile values under the operator's layers, merged and validated; ValidationError lists every problem."""
    profile = chosen_profile(layers)
    try:
        profile = Enum(*PROFILES).check(profile)
    except ValueProblem as exc:
        raise ValidationError([FieldError("values", None, "profile", str(exc))], "invalid values, nothing run") from None
    if profile not in profiles:
        raise ValidationError([FieldError("values", None, "profile", f"no values file for profile {profile!r}")],
                              "invalid values, nothing run")
    base = Layer(f"profile {profile}", profiles[profile])
    values, origins, errors = merge([base, *layers])
    if errors:
        raise ValidationError(errors, "invalid values, nothing run")
    values["profile"] = profile
    origins.setdefault("profile", base.source)
    return Values(profile=profile, values=values, origins=origins)


def reference_table() -> str:
    """The values reference as a Markdown table (docs/deploy.md holds a copy; a test keeps them equal)."""
    rows = ["| key | type | meaning | role variables |", "| --- | --- | --- | --- |"]
    for k in SCHEMA:
        rows.append(f"| `{k.path}` | {k.type.describe()} | {k.help} | {', '.join(f'`{v}`' for v in k.role_vars)} |")
    return "\n".join(rows)
