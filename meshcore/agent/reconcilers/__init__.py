"""The agent's reconcilers: each owns one part of the VM's state and is driven by the daemon's loop.

Each receives only what it uses (settings, files, a clock, small callables), never the daemon, so it
is tested alone. See :mod:`meshcore.agent.daemon` for how they are wired.
"""

from meshcore.agent.reconcilers.access_log import AccessLogReconciler
from meshcore.agent.reconcilers.consul import ConsulReconciler
from meshcore.agent.reconcilers.envoy import EnvoyReconciler
from meshcore.agent.reconcilers.identity import IdentityReconciler, OperatorActionRequired, RetryBackoff
from meshcore.agent.reconcilers.metrics import MetricsReconciler

__all__ = ["AccessLogReconciler", "ConsulReconciler", "EnvoyReconciler", "IdentityReconciler", "MetricsReconciler",
           "OperatorActionRequired", "RetryBackoff"]
