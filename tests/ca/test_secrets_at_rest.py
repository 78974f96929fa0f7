"""Nothing secret is readable in the clear in what the CA and the token store write."""

from __future__ import annotations

import base64
import stat
from datetime import timedelta
from pathlib import Path

from meshcore._files import TEMP_PREFIX
from meshcore.ca import CertificateAuthority, JoinTokenStore, make_csr, new_private_key

from .conftest import Clock


def test_state_dir_holds_no_clear_secrets(state_dir: Path, kek: bytes, clock: Clock) -> None:
    ca = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    sid = "spiffe://cluster.local/ns/default/sa/web"
    ca.sign_csr(make_csr(new_private_key(), sid), spiffe_id=sid, node="vm1")
    tokens = JoinTokenStore(state_dir / "join-tokens", kek, clock=clock)
    issued = [tokens.create(f"vm{i}") for i in range(3)]
    tokens.consume(issued[0], "vm0")
    clock.advance(timedelta(hours=2))
    issued.append(tokens.create("vm9"))
    CertificateAuthority.open(state_dir, kek=kek, clock=clock)  # reopen, maybe rewrite

    files = [p for p in state_dir.rglob("*") if p.is_file()]
    assert len(files) >= 4
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    needles = [b"PRIVATE KEY", kek, base64.b64encode(kek)] + [t.encode() for t in issued]
    for path in files:
        data = path.read_bytes()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for needle in needles:
            assert needle not in data, f"{path} contains a secret"
    # No leftover temp files from atomic writes.
    assert not [p for p in files if p.name.startswith(TEMP_PREFIX)]
