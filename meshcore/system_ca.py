"""Where a host keeps its system CA bundle (the trust store of public TLS servers), found as Go's crypto/x509,
Envoy's docs and the distributions' own tools look for it: the first of :data:`SYSTEM_CA_BUNDLES` that is a file.

The agent looks on its VM and reports what it found in the node metadata (``system_ca_bundle``); the control plane
points the clusters that reach public TLS servers (a RequestAuthentication's remote JWKS) at it. Pure but for the
one ``exists`` look, which a test hands in.
"""

from __future__ import annotations

import os
from typing import Callable, Iterable

SYSTEM_CA_BUNDLES = (
    "/etc/ssl/certs/ca-certificates.crt",  # Debian, Ubuntu, Gentoo, Arch (update-ca-certificates)
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",  # RHEL, CentOS, Rocky, Alma, Fedora (update-ca-trust)
    "/etc/pki/tls/certs/ca-bundle.crt",  # older RHEL and Fedora (a link to the one above on newer ones)
    "/etc/ssl/ca-bundle.pem",  # openSUSE, SLES
    "/etc/pki/tls/cacert.pem",  # OpenELEC
    "/etc/ssl/cert.pem",  # Alpine
)
"""Known system bundles, in the order they are tried."""

DEFAULT_SYSTEM_CA_BUNDLE = SYSTEM_CA_BUNDLES[0]
"""What a proxy that reported no look of its own (a statically rendered config, an older agent) is assumed to have."""

METADATA_KEY = "system_ca_bundle"
"""The node metadata key the agent reports its find under (``""``: it looked and found none)."""


def find_system_ca_bundle(candidates: Iterable[str] = SYSTEM_CA_BUNDLES,
                          exists: Callable[[str], bool] = os.path.isfile) -> str:
    """The first of ``candidates`` that is a file on this host; ``""`` when none is."""
    return next((path for path in candidates if exists(path)), "")


__all__ = ["DEFAULT_SYSTEM_CA_BUNDLE", "METADATA_KEY", "SYSTEM_CA_BUNDLES", "find_system_ca_bundle"]
