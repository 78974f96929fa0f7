"""KV and ``/v1/txn`` for the double's state store (mixed into :class:`ConsulState`).

Same conventions as the rest of the state: every method holds ``self.cond``; a write takes
``self._begin()``'s index and publishes it with ``self._commit()``. Transactions run on a copy of
the KV map and are committed only if every operation succeeded, as Consul's ``TxnRW`` does,
collecting an error per failed operation.
"""

from __future__ import annotations

import base64
from typing import Any

from ._errors import DoubleError
from ._normalize import normalize

MAX_TXN_OPS = 128
MAX_KV_VALUE = 512 * 1024


def _b64(value: bytes | None) -> str | None:
    return None if value is None else base64.b64encode(value).decode("ascii")


class KVMixin:
    """KV endpoints' data operations. Needs ``cond``, ``kv``, ``tombstones``, ``tables``, ``_begin``, ``_commit``."""

    @staticmethod
    def kv_json(entry: dict, with_value: bool = True) -> dict:
        out = {"LockIndex": entry["LockIndex"], "Key": entry["Key"], "Flags": entry["Flags"],
               "Value": _b64(entry["Value"]) if with_value else None,
               "CreateIndex": entry["CreateIndex"], "ModifyIndex": entry["ModifyIndex"]}
        if entry.get("Session"):  # held by a session (see _sessions)
            out["Session"] = entry["Session"]
        return out

    def kv_list(self, prefix: str) -> list[dict]:
        return [self.kv[k] for k in sorted(self.kv) if k.startswith(prefix)]

    def kv_put(self, key: str, value: bytes, flags: int, cas: int | None) -> bool:
        if not key:
            raise DoubleError(400, "Missing key name")
        if len(value) > MAX_KV_VALUE:
            raise DoubleError(413, f"Request body({len(value)} bytes) too large, max size: {MAX_KV_VALUE} bytes. See https://developer.hashicorp.com/consul/docs/agent/config/config-files#kv_max_value_size.")
        with self.cond:
            old = self.kv.get(key)
            if cas is not None and ((cas == 0 and old is not None) or (cas != 0 and (old is None or old["ModifyIndex"] != cas))):
                return False
            idx = self._begin()
            self._kv_set(self.kv, self.tombstones, key, value, flags, idx)
            self.tables["kvs"] = self._last_write = idx
            self._commit(idx)
            return True

    @staticmethod
    def _kv_set(kv: dict, tombstones: dict, key: str, value: bytes | None, flags: int, idx: int) -> dict:
        old = kv.get(key)
        entry = {"Key": key, "Value": value, "Flags": int(flags or 0), "LockIndex": old["LockIndex"] if old else 0,
                 "CreateIndex": old["CreateIndex"] if old else idx, "ModifyIndex": idx}
        if old and old.get("Session"):  # a plain write leaves a held lock held, as in Consul
            entry["Session"] = old["Session"]
        kv[key] = entry
        tombstones.pop(key, None)
        return entry

    def kv_delete(self, key: str, recurse: bool, cas: int | None) -> bool:
        with self.cond:
            if recurse:
                doomed = [k for k in self.kv if k.startswith(key)]
            else:
                old = self.kv.get(key)
                if cas is not None and (old is None or old["ModifyIndex"] != cas):
                    return False
                doomed = [key] if old is not None else []
            if not doomed:
                return True
            idx = self._begin()
            for k in doomed:
                del self.kv[k]
                self.tombstones[k] = idx
            self.tables["kvs"] = self._last_write = idx
            self._commit(idx)
            return True

    def txn(self, ops: Any) -> tuple[int, dict]:
        """Apply KV operations all-or-nothing; returns (HTTP status, Consul's response body)."""
        if not isinstance(ops, list):
            raise DoubleError(400, "Failed to parse body: expected a JSON array of operations")
        if len(ops) > MAX_TXN_OPS:
            raise DoubleError(413, f"Transaction contains too many operations ({len(ops)} > {MAX_TXN_OPS})")
        parsed = []
        for i, op in enumerate(ops):
            op = normalize(op) if isinstance(op, dict) else {}
            if "KV" not in op:
                parsed.append((i, None))
                continue
            kv = op["KV"]
            value = None
            if kv.get("Value") is not None:
                try:
                    value = base64.b64decode(kv["Value"], validate=True)
                except ValueError as exc:
                    raise DoubleError(400, f"Failed to parse body: illegal base64 data in operation {i}") from exc
                if len(value) > MAX_KV_VALUE:
                    raise DoubleError(413, f"Value for key {kv.get('Key')!r} is too large ({len(value)} > {MAX_KV_VALUE} bytes)")
            parsed.append((i, dict(kv, Value=value)))
        with self.cond:
            work, tomb = dict(self.kv), dict(self.tombstones)
            idx = self._begin()
            results: list[dict] = []
            errors: list[dict] = []
            wrote = False
            for i, kv in parsed:
                if kv is None:
                    errors.append({"OpIndex": i, "What": "the consul test double only supports KV operations in transactions"})
                    continue
                try:
                    found, did_write = self._txn_kv(work, tomb, kv, idx)
                except DoubleError as exc:
                    errors.append({"OpIndex": i, "What": exc.text})
                    continue
                wrote = wrote or did_write
                results.extend({"KV": r} for r in found)
            if errors:
                return 409, {"Results": None, "Errors": errors}
            if wrote:
                self.kv, self.tombstones = work, tomb
                self.tables["kvs"] = self._last_write = idx
                self._commit(idx)
            return 200, {"Results": results or None, "Errors": None}

    def _txn_kv(self, work: dict, tomb: dict, op: dict, idx: int) -> tuple[list[dict], bool]:
        """One KV verb against the transaction's working copy: (results, wrote anything)."""
        result, wrote = self._txn_kv_one(work, tomb, op, idx)
        if isinstance(result, list):
            return result, wrote
        return ([result] if result is not None else []), wrote

    def _txn_kv_one(self, work: dict, tomb: dict, op: dict, idx: int) -> tuple[dict | list | None, bool]:
        verb = op.get("Verb") or ""
        key = op.get("Key") or ""
        index = int(op.get("Index") or 0)
        flags = int(op.get("Flags") or 0)
        old = work.get(key)
        if verb in ("set", "cas"):
            if not key:
                raise DoubleError(400, "Missing key name")
            if verb == "cas" and ((index == 0 and old is not None) or (index != 0 and (old is None or old["ModifyIndex"] != index))):
                raise DoubleError(409, f'failed to set key "{key}", index is stale')
            entry = self._kv_set(work, tomb, key, op.get("Value"), flags, idx)
            return self.kv_json(entry, with_value=False), True
        if verb in ("get", "get-or-empty"):
            if old is None:
                if verb == "get":
                    raise DoubleError(404, f'key "{key}" doesn\'t exist')
                return {"LockIndex": 0, "Key": key, "Flags": flags, "Value": None, "CreateIndex": 0, "ModifyIndex": index}, False
            return self.kv_json(old), False
        if verb == "get-tree":
            return [self.kv_json(work[k]) for k in sorted(work) if k.startswith(key)], False
        if verb == "check-index":
            if old is None:
                raise DoubleError(404, f'key "{key}" doesn\'t exist')
            if old["ModifyIndex"] != index:
                raise DoubleError(409, f"current modify index {old['ModifyIndex']} != {index}")
            return self.kv_json(old, with_value=False), False
        if verb == "check-not-exists":
            if old is not None:
                raise DoubleError(409, f'key "{key}" exists')
            return None, False
        if verb in ("delete", "delete-cas"):
            if verb == "delete-cas" and (old is None or old["ModifyIndex"] != index):
                raise DoubleError(409, f'failed to delete key "{key}", index is stale')
            if old is not None:
                del work[key]
                tomb[key] = idx
                return None, True
            return None, False
        if verb == "delete-tree":
            doomed = [k for k in work if k.startswith(key)]
            for k in doomed:
                del work[k]
                tomb[k] = idx
            return None, bool(doomed)
        if verb in ("lock", "unlock", "check-session"):
            return self._txn_session_verb(work, tomb, op, idx)  # type: ignore[attr-defined]  # _sessions
        raise DoubleError(400, f'unknown KV verb "{verb}"')

