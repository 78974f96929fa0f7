"""What the CA hands out: :class:`IssuedCertificate` (metadata plus the public PEMs, never a key)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any


def rfc3339(value: datetime) -> str:
    """UTC RFC 3339 with a ``Z`` suffix, second precision (what ``meshctl -o json`` prints)."""
    return value.astimezone(timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def parse_rfc3339(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(timezone.utc)


@dataclass(frozen=True)
class IssuedCertificate:
    """One X509-SVID the CA signed.

    ``cert_pem`` is the leaf alone; ``chain_pem`` is leaf + intermediate (what Envoy presents).
    ``serial`` is lowercase hex; times are timezone-aware UTC.
    """

    spiffe_id: str
    serial: str
    not_before: datetime
    not_after: datetime
    cert_pem: str
    chain_pem: str
    node: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as RFC 3339)."""
        return {
            "spiffe_id": self.spiffe_id,
            "serial": self.serial,
            "not_before": rfc3339(self.not_before),
            "not_after": rfc3339(self.not_after),
            "cert_pem": self.cert_pem,
            "chain_pem": self.chain_pem,
            "node": self.node,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "IssuedCertificate":
        return cls(
            spiffe_id=data["spiffe_id"],
            serial=data["serial"],
            not_before=parse_rfc3339(data["not_before"]),
            not_after=parse_rfc3339(data["not_after"]),
            cert_pem=data["cert_pem"],
            chain_pem=data["chain_pem"],
            node=data.get("node"),
        )
