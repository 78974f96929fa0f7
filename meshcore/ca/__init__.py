"""meshcore's SPIFFE certificate authority.

A root and an intermediate (ECDSA P-256, keys sealed with a KEK), X509-SVID leaves signed from
CSRs made on the VMs, one-time join tokens, and the rule deciding which identities a node may get.
"""

from .authority import CertificateAuthority
from .kek import generate_kek_file, load_kek
from .keys import cert_info, key_to_pem, make_csr, new_private_key
from .model import IssuedCertificate
from .policy import check_workload_request
from .tokens import JoinTokenStore

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "JoinTokenStore",
    "cert_info",
    "check_workload_request",
    "generate_kek_file",
    "key_to_pem",
    "load_kek",
    "make_csr",
    "new_private_key",
]
