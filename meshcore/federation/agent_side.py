"""What a VM agent does with federated bundles: keep one PEM file per trust domain, and give Envoy
one validation secret that checks every peer against its own domain's roots.

Without federated domains the bundle secret is the plain ``trusted_ca`` one (one domain, nothing to
mix up). With them it carries Envoy's SPIFFE certificate validator
(``envoy.tls.cert_validator.spiffe``): one trust store per domain, chosen by the trust domain in the
peer's SPIFFE ID before the chain is verified, so a CA of ``other.example`` can never vouch for a
``cluster.local`` identity, nor the other way round. The roots travel inline in the secret, so one
atomic rename of that file (file-based SDS) swaps every domain's roots at once: importing a domain,
removing one, and a local root rotation (two roots in the local store) all reach Envoy without a
restart and without a moment where the listener names a file that is not there yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from .._files import ensure_private_dir, os_errors_as, read_text, write_if_changed
from ..errors import AgentError

SECRET_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
SPIFFE_VALIDATOR = "envoy.tls.cert_validator.spiffe"
SPIFFE_VALIDATOR_TYPE = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"


def trust_validation_secret(name: str, trust_domain: str, bundle_pem: str,
                            federated: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
    """The validation-context Secret ``name``: the local bundle alone, or (with ``federated``
    ``(trust_domain, PEM)`` pairs) the SPIFFE validator with one trust store per domain."""
    others = [(td, pem) for td, pem in sorted(federated) if td != trust_domain and pem.strip()]
    if not others:
        return {"@type": SECRET_TYPE, "name": name, "validation_context": {"trusted_ca": {"inline_string": bundle_pem}}}
    domains = [{"name": trust_domain, "trust_bundle": {"inline_string": bundle_pem}}]
    domains += [{"name": td, "trust_bundle": {"inline_string": pem}} for td, pem in others]
    return {
        "@type": SECRET_TYPE,
        "name": name,
        "validation_context": {"custom_validator_config": {
            "name": SPIFFE_VALIDATOR,
            "typed_config": {"@type": SPIFFE_VALIDATOR_TYPE, "trust_domains": domains},
        }},
    }


class FederatedBundleFiles:
    """``<agent state>/federated/<trust-domain>.pem``: the federated roots this node last received,
    so a restarted agent gives Envoy the same trust before it reaches the control plane again."""

    SUFFIX = ".pem"

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def load(self) -> tuple[tuple[str, str], ...]:
        if not self.directory.is_dir():
            return ()
        out = []
        for entry in sorted(self.directory.iterdir()):
            if entry.suffix == self.SUFFIX and entry.is_file():
                text = read_text(entry)
                if text and text.strip():
                    out.append((entry.name[: -len(self.SUFFIX)], text))
        return tuple(out)

    def save(self, bundles: Sequence[tuple[str, str]]) -> bool:
        """Make the directory hold exactly ``bundles``; True when anything changed."""
        changed = False
        with os_errors_as(AgentError, f"cannot write federated bundles under {self.directory}",
                          "check the agent's permissions"):
            ensure_private_dir(self.directory)
            wanted = {}
            for td, pem in bundles:
                if "/" in td or td.startswith("."):
                    raise AgentError(f"the control plane sent a federated bundle for an invalid trust domain {td!r}")
                wanted[td + self.SUFFIX] = pem
            for name, pem in wanted.items():
                changed |= write_if_changed(self.directory / name, pem, 0o644)
            for entry in self.directory.iterdir():
                if entry.suffix == self.SUFFIX and entry.name not in wanted:
                    entry.unlink(missing_ok=True)
                    changed = True
        return changed


__all__ = ["FederatedBundleFiles", "SPIFFE_VALIDATOR", "trust_validation_secret"]
