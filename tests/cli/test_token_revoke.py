"""``meshctl token revoke`` and ``token list --kind operator`` against a control plane (issue 16: CLI basics).

Join tokens and operator tokens by id or prefix; an ambiguous prefix revokes nothing; the last admin token is
kept unless --force; ``-o json``; a bad id is refused before anything is sent."""

from __future__ import annotations

import pytest

from meshcore.ca.tokens import JoinTokenStore
from meshcore.ca import generate_kek_file
from meshcore.cli.main import main
from meshcore.controlplane.operators import OperatorTokenStore
from meshcore.errors import JoinTokenError

from ._helpers import run_json as _json  # (fixtures plane, server: conftest.py)


def test_a_join_token_revoked_by_prefix_cannot_join(plane, server, capsys):
    token = _json(capsys, "token", "create", "--node", "vm1", "--server", server, "-o", "json")["token"]
    (listed,) = [t for t in _json(capsys, "token", "list", "--server", server, "-o", "json") if t["node"] == "vm1"]
    out = _json(capsys, "token", "revoke", listed["id"][:6].upper(), "--server", server, "-o", "json")
    assert out == {"revoked": [{"kind": "join", "id": listed["id"], "owner": "vm1"}]}
    (after,) = [t for t in _json(capsys, "token", "list", "--server", server, "-o", "json") if t["id"] == listed["id"]]
    assert after["state"] == "revoked"
    with pytest.raises(JoinTokenError, match="revoked"):
        plane.tokens.consume(token, "vm1")
    assert main(["token", "revoke", listed["id"], "--server", server]) == 1  # already revoked: 404
    assert "already revoked" in capsys.readouterr().err


def test_an_operator_token_is_refused_at_once_and_the_last_admin_is_kept(plane, server, capsys):
    ci = plane.operators.create("ci", "read-only")
    ops = {t["name"]: t for t in _json(capsys, "token", "list", "--kind", "operator", "--server", server, "-o", "json")}
    assert set(ops) >= {"bootstrap", "ci"} and ops["ci"]["role"] == "read-only"
    assert main(["token", "revoke", ops["ci"]["id"], "--kind", "operator", "--server", server]) == 0
    assert capsys.readouterr().out.strip() == f"revoked operator token {ops['ci']['id']} (operator ci)"
    assert main(["status", "--server", server, "--token", ci]) != 0, "refused once revoked"
    capsys.readouterr()
    # The bootstrap admin token is the only admin: kept unless --force.
    assert main(["token", "revoke", ops["bootstrap"]["id"], "--server", server]) == 1
    assert "last valid admin token" in capsys.readouterr().err
    assert main(["status", "--server", server]) == 0


class _Stores:
    """Join and operator token stores with chosen hashes (what ambiguity is about), the stores' interface."""

    def __init__(self, join: dict[str, str], operators: dict[str, tuple[str, str]]):
        self.join = {h: {"hash": h, "node": n} for h, n in join.items()}
        self.ops = {h: {"hash": h, "name": n, "role": r, "expires": None} for h, (n, r) in operators.items()}

    def entries(self):  # the join token store's
        return list(self.join.values())

    def revoke(self, h):
        return self.join.pop(h, None) is not None

    def revoke_hash(self, h):
        return self.ops.pop(h, None) is not None


def test_an_ambiguous_prefix_revokes_nothing_and_a_bad_id_is_refused_locally(capsys):
    from meshcore.api.operator import TokenRevokeRequest
    from meshcore.controlplane.token_routes import revoke_token
    from meshcore.errors import Conflict, NotFound

    stores = _Stores({"abcd1111" + "0" * 56: "vm1", "abcd2222" + "0" * 56: "vm2"},
                     {"abcd3333" + "0" * 56: ("alice", "admin"), "ffff0000" + "0" * 56: ("ci", "read-only")})
    ops = type("Ops", (), {"entries": lambda self: list(stores.ops.values()), "revoke_hash": stores.revoke_hash})()
    with pytest.raises(Conflict, match=r"'abcd' matches 3 tokens: join abcd11110000 \(vm1\), .*nothing was revoked"):
        revoke_token(TokenRevokeRequest(id="abcd"), stores, ops)
    with pytest.raises(Conflict, match="matches 2 tokens"):
        revoke_token(TokenRevokeRequest(id="abcd", kind="join"), stores, ops)
    assert len(stores.join) == 2 and len(stores.ops) == 2, "nothing revoked"
    with pytest.raises(Conflict, match="last valid admin token"):
        revoke_token(TokenRevokeRequest(id="abcd3", kind="operator"), stores, ops)
    assert revoke_token(TokenRevokeRequest(id="abcd3", force=True), stores, ops).revoked[0].owner == "alice"
    assert revoke_token(TokenRevokeRequest(id="ABCD1"), stores, ops).to_json() == {
        "revoked": [{"kind": "join", "id": "abcd11110000", "owner": "vm1"}]}
    with pytest.raises(NotFound, match="no operator token"):
        revoke_token(TokenRevokeRequest(id="abcd2", kind="operator"), stores, ops)
    for bad in ("abc", "xyz12", "-1"):
        assert main(["token", "revoke", bad, "--server", "http://127.0.0.1:9"]) != 0  # refused before sending
        assert "hex digits" in capsys.readouterr().err


def test_revocation_survives_a_restart_of_the_file_store(tmp_path):
    kek = generate_kek_file(tmp_path / "kek")
    store = JoinTokenStore(tmp_path / "join-tokens.sealed", kek)
    token = store.create("vm1")
    (entry,) = store.entries()
    assert store.revoke(entry["hash"]) and not store.revoke(entry["hash"])
    reopened = JoinTokenStore(tmp_path / "join-tokens.sealed", kek)
    assert [t["state"] for t in reopened.list()] == ["revoked"]
    with pytest.raises(JoinTokenError, match="revoked"):
        reopened.consume(token, "vm1")
    ops = OperatorTokenStore(tmp_path / "operators.sealed", kek)
    ops.create("alice", "admin")
    (alice,) = ops.entries()
    assert ops.revoke_hash(alice["hash"]) and ops.entries() == []
