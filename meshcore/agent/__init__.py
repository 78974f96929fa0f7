"""The VM agent (``meshcore-agent``): joins the mesh, keeps certificates current, supervises Envoy.

Modules: :mod:`.config` (flags/env/YAML), :mod:`.client` (control plane agent API),
:mod:`.identity` (node key and certificate, renewal timing), :mod:`.secrets` (file-based SDS),
:mod:`.bootstrap` (Envoy bootstrap), :mod:`.supervisor` (runs Envoy), :mod:`.notify` (systemd),
:mod:`.status` (``status.json``), :mod:`.reconcilers` (identity, Envoy, Consul registration, metrics,
access log: each owns its state), :mod:`.daemon` (wires them, runs the one loop, and ``main``).
"""

from meshcore.agent.bootstrap import render_bootstrap, write_bootstrap
from meshcore.agent.client import (
    AgentClient,
    AgentRequestError,
    IssuedIdentity,
    NodeService,
    NodeServices,
    TrustBundle,
)
from meshcore.agent.config import AgentConfig, load_config
from meshcore.agent.identity import CertSummary, Credential, NodeIdentityStore, next_wakeup, renewal_time
from meshcore.agent.notify import SystemdNotifier, notify, watchdog_interval
from meshcore.agent.secrets import SecretsDirectory, tls_certificate_secret, validation_context_secret
from meshcore.agent.status import read_status
from meshcore.agent.supervisor import EnvoyRecord, EnvoySupervisor, HotRestart, envoy_command, read_record, restart_delay

__all__ = [
    "AgentClient",
    "AgentConfig",
    "AgentRequestError",
    "CertSummary",
    "Credential",
    "EnvoyRecord",
    "EnvoySupervisor",
    "HotRestart",
    "IssuedIdentity",
    "NodeIdentityStore",
    "NodeService",
    "NodeServices",
    "SecretsDirectory",
    "SystemdNotifier",
    "TrustBundle",
    "envoy_command",
    "load_config",
    "next_wakeup",
    "notify",
    "read_record",
    "read_status",
    "render_bootstrap",
    "renewal_time",
    "restart_delay",
    "tls_certificate_secret",
    "validation_context_secret",
    "watchdog_interval",
    "write_bootstrap",
]
