"""Where the control plane keeps its state: the local state directory, or Consul KV shared by every replica.

:class:`StateBackend` (get/put with CAS, put_all, delete, list and watch a prefix) has two implementations:
:class:`DirBackend` (one file per key: the files a single control plane always wrote) and
:class:`ConsulStateBackend` (``<prefix><key>`` in Consul KV, for ``--store consul``). The CA, the join and
operator token stores, the operator certificate roles and the federated trust bundles are written against it.
The KV layout is in ``docs/ha-state.md``.
"""

from ._backend import Entry, Put, StateBackend, check_key
from ._watch import PrefixWatcher, update
from .consul_backend import DEFAULT_PREFIX, ConsulStateBackend, state_prefix_for
from .dir_backend import DirBackend

__all__ = [
    "DEFAULT_PREFIX",
    "ConsulStateBackend",
    "DirBackend",
    "Entry",
    "PrefixWatcher",
    "Put",
    "StateBackend",
    "check_key",
    "open_state_backend",
    "state_prefix_for",
    "update",
]


def open_state_backend(store_spec: str, state_dir, *, prefix: str | None = None, env=None) -> StateBackend:
    """The control plane's state backend for ``--store`` ``store_spec``: Consul KV under ``prefix`` (default
    ``$MESHCORE_STATE_PREFIX``, then ``meshcore/state/``, beside the resources' ``meshcore/resources/``) with
    ``--store consul``; the state directory ``state_dir`` otherwise (today's files)."""
    import os

    env = os.environ if env is None else env
    if (store_spec or "").split(":", 1)[0] == "consul":
        from ..catalog._consul_settings import ConsulSettings

        return ConsulStateBackend(ConsulSettings.from_env(env),
                                  prefix=prefix or env.get("MESHCORE_STATE_PREFIX") or DEFAULT_PREFIX)
    return DirBackend(state_dir)
