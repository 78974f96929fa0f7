"""PeerAuthentication: STRICT (mTLS only), PERMISSIVE (mTLS and plaintext on one port), DISABLE.

Inbound listeners are built STRICT; this plugin relaxes them where a policy says so. PERMISSIVE
keeps the mTLS chain (matched when the client speaks TLS, found by the TLS inspector) and adds a
plaintext chain with the same filters, so a VM can move into the mesh without breaking old clients.
"""

from __future__ import annotations

from envoy.config.listener.v3 import listener_components_pb2

from ... import naming
from ...snapshot import MeshSnapshot, ProxyInfo
from ...xds.generate import vocab as c
from ...xds.generate.listeners import PLAINTEXT_CHAIN, inbound_filters
from ...xds.generate.vocab import LISTENER
from .schema import KIND_NAME, effective_mtls

KIND = KIND_NAME


def apply(snapshot: MeshSnapshot, proxy: ProxyInfo, resources: dict) -> None:
    policies = snapshot.resources_of(KIND)
    by_name = {l.name: l for l in resources[LISTENER]}
    for inst in c.sidecar_instances(snapshot, proxy):
        listener = by_name.get(naming.inbound_listener(inst.id))
        if listener is None:
            continue
        mode = effective_mtls(policies, inst.labels, inst.namespace, inst.port)
        if mode == "STRICT":
            continue
        plaintext = c.ChainDraft(listener_components_pb2.FilterChain(name=PLAINTEXT_CHAIN),
                                 inbound_filters(inst, snapshot.settings.path_normalization))
        if mode == "PERMISSIVE":
            plaintext.message.filter_chain_match.transport_protocol = "raw_buffer"
            listener.filter_chains.append(plaintext)
        elif mode == "DISABLE":
            del listener.filter_chains[:]
            listener.filter_chains.append(plaintext)


__all__ = ["apply"]
