"""Trust-domain federation: other domains' SPIFFE bundles, imported and enforced per domain.

Public API::

    to_spiffe_bundle(roots_pem, sequence=, refresh_hint=) -> dict      # export (JWK Set)
    read_bundle_text(text, where) -> (roots, spiffe_sequence)          # import: SPIFFE JSON or PEM
    FederatedBundleStore(directory, local_trust_domain)                # control plane, persisted
    trust_validation_secret(name, trust_domain, bundle_pem, federated) # agent: Envoy's validation secret
    FederatedBundleFiles(directory)                                    # agent: one PEM per domain
"""

from .agent_side import SPIFFE_VALIDATOR, FederatedBundleFiles, trust_validation_secret
from .bundle import (
    BundleError,
    check_roots,
    describe_root,
    jwk_of,
    load_pem_roots,
    parse_spiffe_bundle,
    pem_of,
    read_bundle_text,
    to_spiffe_bundle,
)
from .store import FederatedBundleStore

__all__ = [
    "SPIFFE_VALIDATOR",
    "BundleError",
    "FederatedBundleFiles",
    "FederatedBundleStore",
    "check_roots",
    "describe_root",
    "jwk_of",
    "load_pem_roots",
    "parse_spiffe_bundle",
    "pem_of",
    "read_bundle_text",
    "to_spiffe_bundle",
    "trust_validation_secret",
]
