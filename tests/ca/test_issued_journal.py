"""The issued-certificate journal: one appended line per signature, compaction, crash safety,
several processes, and the migration of an older ``issued.json``."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

from meshcore import naming
from meshcore.ca import CertificateAuthority, make_csr, new_private_key
from meshcore.ca import _issued

from .conftest import Clock

TD = naming.DEFAULT_TRUST_DOMAIN
WEB = naming.workload_spiffe_id(TD, "default", "web")


def _sid(i: int) -> str:
    return naming.workload_spiffe_id(TD, "default", f"svc{i}")


def _sign(ca: CertificateAuthority, sid: str = WEB, node: str = "vm1", ttl: timedelta | None = None):
    return ca.sign_csr(make_csr(new_private_key(), sid), spiffe_id=sid, node=node, ttl=ttl)


def _lines(state_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (state_dir / "issued.jsonl").read_bytes().splitlines()]


def test_each_signature_appends_one_line_and_rewrites_nothing(ca, state_dir):
    first = _sign(ca)
    ino = os.stat(state_dir / "issued.jsonl").st_ino
    second = _sign(ca)
    assert os.stat(state_dir / "issued.jsonl").st_ino == ino  # appended in place, not replaced
    assert [d["serial"] for d in _lines(state_dir)] == [first.serial, second.serial]
    assert [c.serial for c in ca.issued()] == [second.serial]  # newest per identity and node
    assert not (state_dir / "issued.json").exists()


def test_compaction_keeps_the_newest_live_certificate_per_identity_and_node(ca, state_dir, kek, clock, monkeypatch):
    monkeypatch.setattr(_issued, "COMPACT_MIN_LINES", 8)
    keep = _sign(ca, _sid(0), ttl=timedelta(days=2))
    for _ in range(3):
        short = _sign(ca, _sid(1), ttl=timedelta(hours=1))
    clock.advance(timedelta(hours=26))  # svc1's certificates expired more than EXPIRED_LEAF_KEPT (24 h) ago
    for _ in range(4):
        newest = _sign(ca, _sid(2))  # four lines, one live
    lines = _lines(state_dir)  # the 8th line made 8 lines for 2 live certificates: compacted
    assert [d["serial"] for d in lines] == [keep.serial, newest.serial]
    assert short.serial not in {c.serial for c in ca.issued()}
    assert [c.serial for c in ca.issued()] == [keep.serial, newest.serial]
    after = _sign(ca, _sid(3))  # appends after a compaction go to the new file
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert [c.serial for c in reopened.issued()] == [keep.serial, newest.serial, after.serial]


def test_a_torn_last_line_is_ignored_with_a_warning_and_cut_before_the_next_append(
        ca, state_dir, kek, clock, caplog):
    good = _sign(ca)
    other = CertificateAuthority.open(state_dir, kek=kek, clock=clock)  # opened before the crash
    with open(state_dir / "issued.jsonl", "ab") as fh:
        fh.write(b'{"spiffe_id": "spiffe://cluster.local/ns/default/sa/x", "ser')  # a writer died here
    assert [c.serial for c in ca.issued()] == [good.serial]  # a reader without the lock skips the tail
    with caplog.at_level(logging.WARNING, logger="meshcore.ca._issued"):
        reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert [r.getMessage() for r in caplog.records if "torn line" in r.getMessage()]
    assert (state_dir / "issued.jsonl").read_bytes().endswith(b"\n")
    assert [c.serial for c in reopened.issued()] == [good.serial]
    later = _sign(reopened, _sid(1))
    assert {c.serial for c in other.issued()} == {good.serial, later.serial}
    assert [d["serial"] for d in _lines(state_dir)] == [good.serial, later.serial]
    again = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert {c.serial for c in again.issued()} == {good.serial, later.serial}


def test_a_damaged_line_in_the_middle_is_skipped_with_a_warning(ca, state_dir, kek, clock, caplog):
    first = _sign(ca, _sid(0))
    with open(state_dir / "issued.jsonl", "ab") as fh:
        fh.write(b"this is not json\n")
    last = _sign(ca, _sid(1))
    with caplog.at_level(logging.WARNING, logger="meshcore.ca._issued"):
        reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
        serials = [c.serial for c in reopened.issued()]
    assert serials == [first.serial, last.serial]
    assert any("line 2 is damaged" in r.getMessage() for r in caplog.records)


def test_another_process_sees_new_certificates_and_compactions(ca, state_dir, kek, clock, monkeypatch):
    other = CertificateAuthority.open(state_dir, kek=kek, clock=clock)  # e.g. meshctl beside the control plane
    a = _sign(ca, _sid(0))
    assert [c.serial for c in other.issued()] == [a.serial]
    b = _sign(other, _sid(1))
    assert [c.serial for c in ca.issued()] == [a.serial, b.serial]
    monkeypatch.setattr(_issued, "COMPACT_MIN_LINES", 4)
    for _ in range(3):
        c = _sign(other, _sid(1))  # other compacts: the file is replaced under ca
    assert len(_lines(state_dir)) == 2
    d = _sign(ca, _sid(2))
    assert [x.serial for x in other.issued()] == [a.serial, c.serial, d.serial]
    assert [x.serial for x in ca.issued()] == [a.serial, c.serial, d.serial]


def test_an_older_issued_json_is_moved_into_the_journal(state_dir, kek, clock):
    ca = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    issued = _sign(ca)
    ca.close()
    (state_dir / "issued.jsonl").unlink()
    (state_dir / "issued.json").write_text(json.dumps({"version": 1, "certificates": [issued.to_dict()]}))
    reopened = CertificateAuthority.open(state_dir, kek=kek, clock=clock)
    assert reopened.issued() == [issued]
    assert not (state_dir / "issued.json").exists()
    assert [d["serial"] for d in _lines(state_dir)] == [issued.serial]


_SIGNER = """
import sys
from datetime import timedelta
from pathlib import Path
from meshcore import naming
from meshcore.ca import CertificateAuthority, make_csr, new_private_key
ca = CertificateAuthority.open(Path(sys.argv[1]), kek=bytes.fromhex(sys.argv[2]))
csrs = [make_csr(new_private_key(), naming.workload_spiffe_id("cluster.local", "default", f"s{i}")) for i in range(20)]
print("ready", flush=True)
i = 0
while True:
    ca.sign_csr(csrs[i % 20], spiffe_id=naming.workload_spiffe_id("cluster.local", "default", f"s{i % 20}"),
                node=f"vm{i}")
    i += 1
"""


def test_kill_9_while_signing_never_corrupts_the_record(state_dir, kek):
    CertificateAuthority.open(state_dir, kek=kek)
    proc = subprocess.Popen([sys.executable, "-c", _SIGNER, str(state_dir), kek.hex()], stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
        deadline = time.monotonic() + 60
        while (not (state_dir / "issued.jsonl").exists() or (state_dir / "issued.jsonl").stat().st_size < 20_000) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)  # somewhere in the middle of a signature
    finally:
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    ca = CertificateAuthority.open(state_dir, kek=kek)
    before = ca.issued()
    assert before, "the signer recorded certificates before it was killed"
    raw = (state_dir / "issued.jsonl").read_bytes()
    assert raw.endswith(b"\n")  # opening cut a torn tail, if the kill left one
    assert len(raw.splitlines()) == len(before)  # every line whole and one per (identity, node)
    extra = _sign(ca, node="after-kill")
    assert {c.serial for c in CertificateAuthority.open(state_dir, kek=kek).issued()} == \
        {c.serial for c in before} | {extra.serial}


def test_issued_survives_reopen_after_expiry_of_everything(ca, state_dir, kek, clock: Clock):
    for i in range(3):
        _sign(ca, _sid(i), ttl=timedelta(hours=1))
    clock.advance(timedelta(hours=2))
    assert ca.issued() == []
    assert CertificateAuthority.open(state_dir, kek=kek, clock=clock).issued() == []


def test_a_disk_that_fills_mid_line_leaves_no_torn_line_and_refuses_the_signature(ca, state_dir, monkeypatch):
    """The disk fills while a line is appended: the journal is cut back to where the line began and signing
    fails (a leaf the journal does not hold is never handed out); the next signature, with space, is whole."""
    import errno

    import pytest

    first = _sign(ca)
    real_write = os.write
    calls = {"n": 0}

    def full_after_part(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[:40]))  # a short write: part of the line reached the file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_issued.os, "write", full_after_part)
    from meshcore.errors import CAError

    with pytest.raises(CAError, match=r"issued\.jsonl: .*No space left on device"):
        _sign(ca, _sid(1))
    monkeypatch.setattr(_issued.os, "write", real_write)
    assert [d["serial"] for d in _lines(state_dir)] == [first.serial]  # no torn line left behind
    third = _sign(ca, _sid(2))
    assert [d["serial"] for d in _lines(state_dir)] == [first.serial, third.serial]
