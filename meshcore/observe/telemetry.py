"""The control plane's telemetry settings: its flags and their environment variables.

What those settings put into every Envoy (access logs, tracing, the OTLP cluster) is a policy plugin,
:mod:`meshcore.policies.telemetry`; its format contract (:data:`JSON_KEYS`, read back by
``meshctl authz dry-run`` and the agent) and :func:`access_log_path` are re-exported here for the
observing side.
"""

from __future__ import annotations

from ..errors import ConfigError
from ..policies.telemetry import JSON_KEYS, TRACING_CLUSTER, access_log_path, validate_settings
from ..snapshot import TelemetrySettings

__all__ = ["add_telemetry_args", "telemetry_settings", "validate_settings", "access_log_path", "JSON_KEYS",
           "TRACING_CLUSTER"]


def add_telemetry_args(parser, env) -> None:
    """The control plane's telemetry flags (each with its ``MESHCORE_*`` environment variable)."""
    parser.add_argument("--access-log", default=env.get("MESHCORE_ACCESS_LOG", ""),
                        help="every Envoy's access log: 'stdout' (the agent's journal) or an absolute path on "
                             "the VM ({node} is replaced by the node name); default: off")
    parser.add_argument("--access-log-format", choices=("json", "text"),
                        default=env.get("MESHCORE_ACCESS_LOG_FORMAT", "json"),
                        help="access log lines: json (one object per line) or text (default %(default)s)")
    parser.add_argument("--access-log-sampling", default=env.get("MESHCORE_ACCESS_LOG_SAMPLING", "100"),
                        help="percent of requests with an access log line (0..100, default %(default)s); every "
                             "failed request (status >= 400 or a response flag) is logged whatever the sampling")
    parser.add_argument("--tracing-otlp", default=env.get("MESHCORE_TRACING_OTLP", ""),
                        help="host:port of an OpenTelemetry collector (OTLP/gRPC): Envoys and the control plane "
                             "export spans there; default: tracing off")
    parser.add_argument("--tracing-sampling", default=env.get("MESHCORE_TRACING_SAMPLING", "1"),
                        help="percent of requests traced (0..100, default %(default)s)")


def telemetry_settings(args) -> TelemetrySettings:
    """:class:`TelemetrySettings` from parsed flags; :class:`ConfigError` naming each bad one."""
    sampling = _percent("--tracing-sampling", args.tracing_sampling)
    log_sampling = _percent("--access-log-sampling", getattr(args, "access_log_sampling", "100"))
    t = TelemetrySettings(tracing_otlp=args.tracing_otlp, tracing_sampling=sampling,
                          access_log=args.access_log, access_log_format=args.access_log_format,
                          access_log_sampling=log_sampling)
    problems = validate_settings(t)
    if problems:
        raise ConfigError("; ".join(problems))
    return t


def _percent(flag: str, value) -> float:
    try:
        return float(value)
    except ValueError as exc:
        raise ConfigError(f"{flag} {value!r}: give a percentage between 0 and 100") from exc
