"""Small helpers shared by the agent's tests."""

from __future__ import annotations

from datetime import timedelta

from meshcore.ca import key_to_pem, make_csr, new_private_key


def issue(ca, spiffe_id: str, ttl: timedelta | None = None) -> tuple[str, str]:
    """(chain PEM, key PEM) for ``spiffe_id``, the key made here as the agent does."""
    key = new_private_key()
    issued = ca.sign_csr(make_csr(key, spiffe_id), spiffe_id=spiffe_id, ttl=ttl)
    return issued.chain_pem, key_to_pem(key)
