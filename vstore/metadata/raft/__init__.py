"""Raft for the metadata servers, in the etcd-io/raft shape.

Pure and deterministic: ``types`` (configuration, hard state, Ready), ``quorum``,
``progress`` (per-follower replication state), ``log`` (stable + unstable log), ``core``
(the state machine of one node). Around them: ``storage`` (LMDB) and ``node`` (the asyncio
shell). docs/raft.md describes the design and the ordering contract.
"""
