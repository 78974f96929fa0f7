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
    "state_prefix_for",
    "update",
]
