"""RBAC stages compiled once per (policies, what of the workload the compile read), shared between proxies.

A mesh-wide AuthorizationPolicy selects every inbound instance of every proxy, and :func:`~.rbac.rbac_stages`
of the same policies reads little of an instance (its port and protocol today), so 200 proxies compiled the same
stages about a thousand times per change. :func:`compiled_stages` compiles against a view of the instance that
records which attributes were read, and hands the same stages to every later instance whose values of those
attributes are equal. Whatever the compiler comes to read, the memo follows: the key is what it read, not a list
kept here. The stages' messages are shared: callers copy them into their own config (``CopyFrom``, a message
constructor) and never edit them.

The memo belongs to one tuple of the snapshot's AuthorizationPolicies (``snapshot.resources_of(KIND)``); a new
tuple starts a new memo. It is keyed by the identities of the selected policies and keeps them alive.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

from ...catalog.model import ServiceInstance
from ...resources.model import Resource
from .rbac import RbacStage

Compile = Callable[[Sequence[Resource], Any, str], list[RbacStage]]

_Reads = tuple[tuple[str, Any], ...]


class _Recording:
    """``instance`` as the compiler sees it, every attribute it reads recorded with its value."""

    __slots__ = ("_instance", "_read")

    def __init__(self, instance: ServiceInstance):
        object.__setattr__(self, "_instance", instance)
        object.__setattr__(self, "_read", {})

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._instance, name)
        self._read[name] = value
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"ServiceInstance is read-only ({name})")


class _Memo:
    def __init__(self, policies: tuple[Resource, ...]):
        self.policies = policies
        # (ids of the selected policies, trust domain) -> [(the selected policies, kept alive so that their ids
        # stay theirs, what the compile read, its stages)]
        self.entries: dict[tuple[tuple[int, ...], str], list[tuple[tuple[Resource, ...], _Reads, list[RbacStage]]]] = {}


_lock = threading.Lock()
_memo: _Memo | None = None


def compiled_stages(policies: tuple[Resource, ...], selected: Sequence[Resource], instance: ServiceInstance,
                    trust_domain: str, compile_stages: Compile) -> list[RbacStage]:
    """``compile_stages(selected, instance, trust_domain)``, once per ``selected`` (a subset of ``policies``,
    the snapshot's AuthorizationPolicies) and distinct values of what it read of ``instance``."""
    global _memo
    with _lock:
        memo = _memo
        if memo is None or memo.policies is not policies:
            memo = _memo = _Memo(policies)
        known = memo.entries.setdefault((tuple(id(p) for p in selected), trust_domain), [])
        candidates = list(known)
    chosen = tuple(selected)
    for same, reads, stages in candidates:
        if all(a is b for a, b in zip(same, chosen)) and all(getattr(instance, n) == v for n, v in reads):
            return stages
    view = _Recording(instance)
    stages = compile_stages(selected, view, trust_domain)  # type: ignore[arg-type]  # reads like an instance
    with _lock:
        known.append((chosen, tuple(view._read.items()), stages))
    return stages


__all__ = ["compiled_stages"]
