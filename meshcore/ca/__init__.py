"""meshcore's SPIFFE certificate authority.

A root and an intermediate (ECDSA P-256 by default, or P-384 / RSA; keys sealed with a KEK), or an
operator's own intermediate (external upstream CA); X509-SVID leaves signed from CSRs made on the
VMs; root rotation with an overlapping trust bundle; one-time join tokens; and the rule deciding
which identities a node may get.
"""

from .authority import CertificateAuthority
from .kek import generate_kek_file, load_kek
from .keys import KEY_TYPES, cert_info, check_key_type, key_to_pem, make_csr, new_private_key
from .model import IssuedCertificate
from .policy import check_workload_request
from .tokens import JoinTokens, JoinTokenStore, SharedJoinTokenStore, open_join_tokens
from .upstream import UpstreamCA, load_upstream_ca

__all__ = [
    "KEY_TYPES",
    "CertificateAuthority",
    "IssuedCertificate",
    "JoinTokenStore",
    "JoinTokens",
    "SharedJoinTokenStore",
    "UpstreamCA",
    "cert_info",
    "check_key_type",
    "check_workload_request",
    "generate_kek_file",
    "key_to_pem",
    "load_kek",
    "load_upstream_ca",
    "make_csr",
    "new_private_key",
    "open_join_tokens",
]
