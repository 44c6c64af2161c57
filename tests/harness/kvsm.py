"""A replicated key -> list-of-values store on LmdbStateMachine, for the Raft tests.

Commands (msgpack): ("append", key, value) -> "ok"; ("put", key, value) -> "ok".
Reads go through ``RaftNode.read_barrier()`` and then ``get()`` locally.
"""

from __future__ import annotations

from typing import Any

import msgspec

from vstore.metadata.raft.statemachine import EffectTxn, LmdbStateMachine


class KvStateMachine(LmdbStateMachine):
    TABLES = (b"kv",)

    def apply_command(self, txn: EffectTxn, body: bytes, index: int, term: int) -> Any:
        op, key, value = msgspec.msgpack.decode(body)
        db = self.tables[b"kv"]
        if op == "append":
            raw = txn.get(key.encode(), db=db)
            values = msgspec.msgpack.decode(raw) if raw else []
            values.append(value)
            txn.put(key.encode(), msgspec.msgpack.encode(values), db=db)
            return "ok"
        if op == "put":
            txn.put(key.encode(), msgspec.msgpack.encode([value]), db=db)
            return "ok"
        return f"unknown op {op!r}"

    def get(self, key: str) -> tuple[Any, ...]:
        with self.env.begin() as txn:
            raw = txn.get(key.encode(), db=self.tables[b"kv"])
        return tuple(msgspec.msgpack.decode(raw)) if raw else ()


def command(op: str, key: str, value: Any) -> bytes:
    return msgspec.msgpack.encode((op, key, value))
