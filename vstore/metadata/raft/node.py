"""The asyncio shell around the Raft core: storage, transport, timers, proposals and reads.

One task (``_run``) owns the core; nothing else calls it. It wakes when input arrives
(peer messages, proposals, read requests, ticks, transport reports), feeds all of it to
the core, then handles every Ready in the contract's order:

    1. install an incoming snapshot, then persist entries + hard state in ONE LMDB
       transaction (writer thread; the event loop keeps running during the fsync);
    2. send the messages;
    3. apply committed entries in one state-machine transaction (writer thread);
    4. resolve proposals and reads, then ``advance``.

While step 1 or 3 waits for the disk, new input queues up and is handled together in the
next round, so one fsync covers everything that arrived meanwhile (group commit). A disk
error is fatal: the node stops and ``run()`` raises ``FatalStorageError``.

Failpoints (vstore/failpoints.py, tests only): ``raft.before_persist`` in the writer
thread's persist job, ``raft.after_persist_before_send`` once the persist is done,
``raft.before_apply`` before the apply job (and ``apply.before_txn_commit`` inside it, in
the state machine).

Transport: each peer gets an ``RpcClient`` and a bounded send queue drained by its own
task; a queue that overflows drops messages (Raft retransmits) and the core is told the
peer is unreachable. Raft messages are one-way frames; a snapshot streams as
``RaftSnapshotChunkRequest`` calls (flow-controlled, checksummed) followed by the SNAP
message itself. Incoming Raft frames are queued synchronously by their handler, so they
reach the core in the order they arrived.

Concurrency notes (docs/concurrency-raft.md): the core and the pending-proposal tables are
touched only by ``_run``; ``await``s inside ``_handle_ready`` are the points where other
tasks (handlers, peer senders) run, and those only append to the input deque.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import random
import secrets
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xxhash

from vstore.config import Address
from vstore.errors import Busy, ConnectionLost, NotLeader, Unavailable, VStoreError
from vstore.failpoints import afailpoint, failpoint
from vstore.metadata.raft.codec import decode_conf_change
from vstore.metadata.raft.core import RaftCore
from vstore.metadata.raft.statemachine import LmdbStateMachine, StaleProposal, encode_state_check
from vstore.metadata.raft.storage import FatalStorageError, RaftLogStore
from vstore.metadata.raft.types import (LogCompacted, LogUnavailable, NotLeaderError, ProposalDropped, RaftConfig,
                                        Ready, Role)
from vstore.net import Auth, Limits, Reply, RequestContext, Router, RpcClient
from vstore.wire import Message
from vstore.wire.raft import (EntryType, RaftMessage, RaftMsgType, RaftSnapshotChunkReply, RaftSnapshotChunkRequest,
                              RaftSnapshotFetchReply, RaftSnapshotFetchRequest, SnapshotMeta)

log = logging.getLogger(__name__)

_LEADER_MESSAGES = frozenset({RaftMsgType.APP, RaftMsgType.HEARTBEAT, RaftMsgType.TIMEOUT_NOW,
                              RaftMsgType.READ_INDEX_RESP})


@dataclass(frozen=True)
class RaftNodeConfig:
    node_id: str
    data_dir: Path
    tick_ms: int = 100
    raft: RaftConfig = field(default_factory=RaftConfig)
    #: Keep this many applied entries in the log after compaction, so a follower that was
    #: briefly away catches up from the log rather than by snapshot.
    compact_trailing_entries: int = 10_000
    snapshot_chunk_bytes: int = 1 << 20
    peer_queue_messages: int = 4096
    #: Deadline for one one-way send or snapshot chunk to a peer.
    peer_send_timeout_s: float = 5.0
    peer_limits: Limits = Limits()
    #: Peer messages waiting for the Raft task beyond this are dropped (Raft retransmits).
    max_pending_inputs: int = 65_536
    #: Addresses of members known before this node has applied a configuration that names
    #: them (a node joining gets the current membership from the leader when it is added,
    #: as etcd's member add does). The applied configuration takes precedence.
    initial_peers: dict[str, str] = field(default_factory=dict)
    #: The leader proposes a state-hash checkpoint after this many applied entries; every
    #: replica compares it with its own hash at that index (0: never).
    state_check_every_entries: int = 1000


class StartupError(Exception):
    """The node's data directory cannot be served from as it is; the message says why and what to do."""


#: Written into the data dir once the node has applied a configuration naming it: from then
#: on an empty Raft log there means the log was lost, not that the node is new.
MEMBER_MARKER = "raft-member"
#: A read index not answered within this long fails (Unavailable, retryable): kept under a
#: client's 10 s attempt deadline, above a few election timeouts.
READ_BARRIER_TIMEOUT_S = 5.0


class RaftNode:
    def __init__(self, config: RaftNodeConfig, log_store: RaftLogStore, state_machine: LmdbStateMachine,
                 auth: Auth, *, rng: random.Random | None = None, on_fatal: Callable[[BaseException], None] | None = None) -> None:
        self.config = config
        self.id = config.node_id
        self.log_store = log_store
        self.sm = state_machine
        self.auth = auth
        self._rng = rng or random.Random()
        self._on_fatal = on_fatal
        self._check_data_dir()
        self._recover_log_from_state_machine()
        index, _ = self.sm.applied()
        raft_config = _with_applied(config.raft, index)
        if log_store.voting_disabled:
            raft_config = dataclasses.replace(raft_config, voting_disabled=True)
        self.core = RaftCore(self.id, raft_config, log_store, random.Random(self._rng.random()))
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft-writer-{self.id}")
        self._snapshotter = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"raft-snap-{self.id}")
        self._inputs: deque[tuple[Any, ...]] = deque()
        self._wake = asyncio.Event()
        self._pending_ticks = 0
        self._proposals: dict[int, tuple[int, asyncio.Future[Any]]] = {}
        self._reads: dict[bytes, asyncio.Future[int]] = {}
        self._read_waiters: list[tuple[int, asyncio.Future[int]]] = []
        self._applied_event = asyncio.Event()
        self._peers: dict[str, _PeerLink] = {}
        self._snapshot_streams: dict[str, asyncio.Task[None]] = {}
        self._incoming: dict[tuple[str, int, int], _IncomingSnapshot] = {}
        self._ready_snapshots: dict[int, Path] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = False
        self.fatal: BaseException | None = None
        self.leader_id: str | None = None
        self.role: Role = Role.FOLLOWER
        self.stats = {"readies": 0, "fsyncs": 0, "entries_persisted": 0, "entries_applied": 0, "messages_sent": 0,
                      "messages_dropped": 0, "snapshots_sent": 0, "snapshots_installed": 0, "leader_changes": 0,
                      "state_checks": 0}
        self._entries_since_check = 0
        self._resync_task: asyncio.Task[None] | None = None
        #: peer -> (exported file, what it holds) for a re-syncing peer's fetches
        self._exports: dict[str, tuple[Path, SnapshotMeta]] = {}
        self.resyncs = 0
        (config.data_dir / "snapshots").mkdir(parents=True, exist_ok=True)
        self._note_membership()

    # ---- lifecycle ------------------------------------------------------------------------------

    def register(self, router: Router) -> None:
        """Serve Raft traffic on the node's RPC server (peers authenticate as role mds)."""
        mds_only = frozenset({"mds"})
        router.add(RaftMessage, self._on_raft_message, roles=mds_only)
        router.add(RaftSnapshotChunkRequest, self._on_snapshot_chunk, roles=mds_only)
        router.add(RaftSnapshotFetchRequest, self._on_snapshot_fetch, roles=mds_only)

    async def start(self) -> None:
        self._start_tasks()

    def _start_tasks(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"raft-{self.id}"),
                       asyncio.create_task(self._ticker(), name=f"raft-tick-{self.id}")]
        self._wake.set()

    async def stop(self) -> None:
        """Stop the tasks, the peer links and the threads (reverse order of start)."""
        self._stopped = True
        resync = [self._resync_task] if self._resync_task is not None else []
        for task in list(self._snapshot_streams.values()) + self._tasks + resync:
            task.cancel()
        await asyncio.gather(*self._snapshot_streams.values(), *self._tasks, *resync, return_exceptions=True)
        for file, _ in self._exports.values():
            shutil.rmtree(file.parent, ignore_errors=True)
        for link in self._peers.values():
            await link.close()
        self._fail_all(ConnectionLost(f"raft node {self.id} stopped; outcome unknown"))
        self._writer.shutdown(wait=True)
        self._snapshotter.shutdown(wait=True)

    async def wait_fatal(self) -> BaseException:
        """Resolves if the node stops on a fatal error (the service then exits). A re-sync
        restarts the node's tasks; that is not a stop."""
        while True:
            tasks = list(self._tasks)
            await asyncio.gather(*tasks, return_exceptions=True)
            if self.fatal is not None or self._stopped:
                return self.fatal or asyncio.CancelledError()
            if self._resync_task is not None and not self._resync_task.done():
                await asyncio.gather(self._resync_task, return_exceptions=True)
                continue
            if self._tasks and self._tasks != tasks:
                continue
            return self.fatal or asyncio.CancelledError()

    # ---- the API for the service ------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    @property
    def term(self) -> int:
        return self.core.term

    def not_leader_error(self) -> NotLeader:
        """The NotLeader a request on this (non-leader) node should fail with: it names the
        leader and its address when this node knows them, so the client goes straight there."""
        return self._not_leader(self.leader_id)

    def leader_address(self) -> str | None:
        if self.leader_id is None:
            return None
        return self.core.addresses.get(self.leader_id)

    def members(self) -> dict[str, str]:
        """The applied configuration: every voter and learner -> its address."""
        core = self.core
        return {node: core.addresses.get(node, "") for node in core.voters + core.learners}

    async def propose(self, data: bytes) -> Any:
        """Replicate one command and return its result once applied here.

        Raises NotLeader (with the leader's address when known), Busy (proposal refused:
        transfer in progress, too much uncommitted), ConnectionLost (leadership lost with
        the command in flight: it may or may not be applied; retry with the same session
        sequence number, which makes the retry safe)."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(("propose", data, future))
        return await future

    async def read_barrier(self, *, timeout_s: float = READ_BARRIER_TIMEOUT_S) -> int:
        """Wait until this node's state machine reflects every write committed before the
        call started (read-index, thesis §6.4). Returns the read index.

        Unavailable (retryable) after ``timeout_s`` without an answer: the core answers a
        read index in a later Ready, or never (its heartbeat round, or the leader a follower
        forwarded it to, may be gone), and a read that waited forever held every later
        barrier behind it: the thrash saw a leader that never served its term."""
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        context = secrets.token_bytes(12)
        self._put(("read", context, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            self._reads.pop(context, None)
            if not future.done():
                future.cancel()
            log.warning("raft.read_index_timeout", extra={"node": self.id, "role": self.role.value,
                                                          "leader": self.leader_id, "timeout_s": timeout_s})
            raise Unavailable(f"{self.id}: no read index within {timeout_s:g} s; retry") from None

    async def propose_conf_change(self, change: Any) -> None:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(("conf_change", change, future))
        await future

    def transfer_leadership(self, to: str) -> None:
        self._put(("transfer", to))

    def campaign(self) -> None:
        self._put(("campaign",))

    def status(self) -> dict[str, Any]:
        st = self.core.status()
        return {"id": self.id, "role": st.role.value, "term": st.term,
                "voting_disabled": int(self.core.config.voting_disabled), "leader": st.leader, "commit": st.commit,
                "applied": self.sm.applied()[0], "last_index": st.last_index, "first_index": self.log_store.first_index(),
                "voters": list(st.voters), "learners": list(st.learners), "progress": st.progress, **self.stats}

    # ---- inputs --------------------------------------------------------------------------------

    def _put(self, item: tuple[Any, ...]) -> None:
        if self._stopped or self.fatal is not None:
            future = item[-1] if item and isinstance(item[-1], asyncio.Future) else None
            if future is not None and not future.done():
                future.set_exception(Unavailable(f"raft node {self.id} is not running"))
            return
        self._inputs.append(item)
        self._wake.set()

    async def _on_raft_message(self, ctx: RequestContext, msg: Message, payload: bytes) -> None:
        # Queue before any await: frames then reach the core in arrival order.
        assert isinstance(msg, RaftMessage)
        if msg.frm != ctx.peer.node_id and msg.type not in (RaftMsgType.READ_INDEX, RaftMsgType.TRANSFER_LEADER):
            log.warning("raft.spoofed_sender", extra={"peer_node": ctx.peer.node_id, "claimed": msg.frm})
            return None
        if len(self._inputs) >= self.config.max_pending_inputs:
            self.stats["messages_dropped"] += 1
            return None
        self._inputs.append(("step", msg))
        self._wake.set()
        return None

    async def _ticker(self) -> None:
        interval_s = self.config.tick_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval_s
        while True:
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval_s
            if next_at < loop.time():  # the loop was blocked: do not fire a burst of ticks
                next_at = loop.time() + interval_s
            self._pending_ticks += 1
            self._wake.set()

    # ---- the Raft task ---------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                self._drain_inputs()
                while self.core.has_ready():
                    await self._handle_ready(self.core.ready())
                    self._drain_inputs()
                await self._maybe_compact()
        except asyncio.CancelledError:
            raise
        except BaseException as exc:
            self.fatal = exc
            log.critical("raft.fatal", extra={"node": self.id, "error": f"{type(exc).__name__}: {exc}"},
                         exc_info=not isinstance(exc, FatalStorageError))
            self._fail_all(Unavailable(f"raft node {self.id} stopped: {exc}"))
            # the ticker too: the node is dead, and wait_fatal (the process's cue to exit)
            # waits for every task; a ticker left running kept a failed-fsync MDS alive
            for task in self._tasks:
                if task is not asyncio.current_task():
                    task.cancel()
            if self._on_fatal is not None:
                self._on_fatal(exc)
            raise

    def _drain_inputs(self) -> None:
        ticks, self._pending_ticks = min(self._pending_ticks, 5), 0
        for _ in range(ticks):
            self.core.tick()
        core = self.core
        while self._inputs:
            item = self._inputs.popleft()
            kind = item[0]
            if kind == "step":
                core.step(item[1])
            elif kind == "propose":
                self._submit(item[2], core.propose, item[1], "proposal refused")
            elif kind == "read":
                _, context, future = item
                try:
                    core.read_index(context)
                except NotLeaderError as exc:
                    future.set_exception(self._not_leader(exc.leader))
                else:
                    self._reads[context] = future
            elif kind == "conf_change":
                self._submit(item[2], core.propose_conf_change, item[1], "configuration change refused")
            elif kind == "transfer":
                try:
                    core.transfer_leader(item[1])
                except NotLeaderError:
                    pass
            elif kind == "campaign":
                core.campaign()
            elif kind == "unreachable":
                core.report_unreachable(item[1])
            elif kind == "snapshot_done":
                core.report_snapshot(item[1], item[2])

    def _submit(self, future: asyncio.Future[Any], propose: Callable[[Any], int], what: Any, refused: str) -> None:
        """Append a proposal to the core and remember whose future its (index, term) answers."""
        if future.cancelled():
            return
        try:
            index = propose(what)
        except NotLeaderError as exc:
            future.set_exception(self._not_leader(exc.leader))
        except ProposalDropped as exc:
            future.set_exception(Busy(f"{refused}: {exc}"))
        else:
            self._proposals[index] = (self.core.term, future)

    def _not_leader(self, leader: str | None) -> NotLeader:
        address = self.core.addresses.get(leader) if leader else None
        return NotLeader(f"{self.id} is not the leader" + (f"; try {leader} at {address}" if address else ""),
                         details={"leader": address or "", "leader_id": leader or ""})

    async def _handle_ready(self, rd: Ready) -> None:
        loop = asyncio.get_running_loop()
        self.stats["readies"] += 1
        if rd.snapshot is not None:
            file = self._ready_snapshots.pop(rd.snapshot.index, None)
            if file is None:
                raise FatalStorageError(f"snapshot {rd.snapshot.index} to install but its data never arrived")
            staged = await loop.run_in_executor(self._writer, self.sm.stage_snapshot, file, rd.snapshot)
            self.sm.swap_in_snapshot(staged)  # on the loop: no read of the state runs meanwhile
            self.stats["snapshots_installed"] += 1
            log.info("raft.snapshot_installed", extra={"node": self.id, "index": rd.snapshot.index})
        early = self._may_send_before_persist(rd)
        if early:
            for m in rd.messages:
                self._send(m)
        if self._must_persist(rd):
            # <- await: the loop runs handlers and peer senders while the fsync happens
            await loop.run_in_executor(self._writer, self._persist, rd)
            self.stats["fsyncs"] += 1
            self.stats["entries_persisted"] += len(rd.entries)
            await _storage_failpoint("raft.after_persist_before_send")
        if not early:
            for m in rd.messages:
                self._send(m)
        if rd.committed_entries:
            entries = list(rd.committed_entries)
            conf_states = {}
            for entry in entries:
                if entry.type == EntryType.CONF_CHANGE:
                    conf_states[entry.index] = self.core.apply_conf_change(decode_conf_change(entry.data))
            await _storage_failpoint("raft.before_apply")
            # <- await: one state-machine transaction for the whole batch
            results = await loop.run_in_executor(self._writer, self.sm.apply, entries, conf_states)
            self.stats["entries_applied"] += len(entries)
            for entry, result in zip(entries, results):
                pending = self._proposals.pop(entry.index, None)
                if pending is None:
                    continue
                term, future = pending
                if future.done():
                    continue
                if term != entry.term:
                    future.set_exception(ConnectionLost(f"proposal at index {entry.index} was replaced by another "
                                                        f"leader's entry; retry it"))
                elif isinstance(result, StaleProposal):
                    future.set_exception(Busy(str(result)))
                else:
                    future.set_result(result)
            if conf_states:
                self._update_peers()
                self._note_membership()
            self._after_apply(len(entries))
        if rd.soft_state is not None:
            self._on_soft_state(rd.soft_state.role, rd.soft_state.leader)
        for rs in rd.read_states:
            future = self._reads.pop(rs.context, None)
            if future is not None and not future.done():
                self._read_waiters.append((rs.index, future))
        self.core.advance(rd)
        self._release_reads()

    def _persist(self, rd: Ready) -> None:
        """Step 1's write, on the writer thread, behind the ``raft.before_persist`` failpoint
        (there, a sleep holds the writer exactly as a slow fsync would)."""
        try:
            failpoint("raft.before_persist")
        except OSError as exc:  # an injected disk error ends the node as a real one does
            raise FatalStorageError(f"cannot persist the Raft log in {self.log_store.path}: {exc}") from exc
        self.log_store.persist(rd)

    def _after_apply(self, applied_count: int) -> None:
        """Compare state hashes: report a divergence once, and as leader propose checkpoints."""
        divergence = self.sm.divergence
        if divergence is not None and not self.core.config.voting_disabled:
            index, mine, theirs = divergence
            log.critical("raft.state_diverged", extra={"node": self.id, "index": index, "state_hash": f"{mine:016x}",
                                                       "leader_hash": f"{theirs:016x}",
                                                       "action": "voting disabled; remove and re-add this node"})
            self.log_store.disable_voting(f"state hash diverged at index {index}")
            self.core.disable_voting()
            if self._resync_task is None:
                self._resync_task = asyncio.create_task(self._resync(), name=f"raft-resync-{self.id}")
        every = self.config.state_check_every_entries
        if every and self.role is Role.LEADER:
            self._entries_since_check += applied_count
            if self._entries_since_check >= every:
                self._entries_since_check = 0
                index, state_hash = self.sm.state_hash()
                try:
                    self.core.propose_state_check(encode_state_check(index, state_hash))
                    self.stats["state_checks"] += 1
                except (NotLeaderError, ProposalDropped):
                    pass

    def _must_persist(self, rd: Ready) -> bool:
        """Entries, a snapshot, or a new term or vote must be durable before anything that
        depends on them is sent; a hard state whose only change is the commit index need
        not be (etcd's MustSync): the commit index can always be learned again from the
        leader, and on restart the applied index stands in for it (RaftLog). That saves one
        fsync per commit on followers and on a leader at low load."""
        if rd.entries or rd.snapshot is not None:
            return True
        hs = rd.hard_state
        if hs is None:
            return False
        durable = self.log_store.hard_state
        return (hs.term, hs.vote) != (durable.term, durable.vote)

    def _may_send_before_persist(self, rd: Ready) -> bool:
        """A leader may send its appends while it writes the same entries locally (thesis
        §10.2.1): it counts its own copy only after the fsync (RaftCore.advance), and its
        term and vote are already durable. Anything else (votes, a follower's acks) waits
        for the disk."""
        if not rd.messages or rd.snapshot is not None:
            return False
        if rd.hard_state is not None:
            durable = self.log_store.hard_state
            if (rd.hard_state.term, rd.hard_state.vote) != (durable.term, durable.vote):
                return False
        return all(m.type in _LEADER_MESSAGES for m in rd.messages)

    def _release_reads(self) -> None:
        applied = self.sm.applied()[0]
        waiting = []
        for index, future in self._read_waiters:
            if future.done():
                continue
            if applied >= index:
                future.set_result(index)
            else:
                waiting.append((index, future))
        self._read_waiters = waiting

    def _on_soft_state(self, role: Role, leader: str | None) -> None:
        was_leader = self.role is Role.LEADER
        if leader != self.leader_id:
            self.stats["leader_changes"] += 1
            log.info("raft.leader_changed", extra={"node": self.id, "leader": leader, "term": self.core.term,
                                                   "role": role.value})
        changed = leader != self.leader_id
        self.role, self.leader_id = role, leader
        if changed and not was_leader and role is not Role.LEADER and self._reads:
            # read indexes forwarded to the old leader: the new one will never answer them
            reads, self._reads = self._reads, {}
            for future in reads.values():
                if not future.done():
                    future.set_exception(ConnectionLost(f"{self.id}: the leader changed before it answered a "
                                                        "read index; retry"))
        if was_leader and role is not Role.LEADER:
            # Our proposals may still commit under the next leader, or not: the outcome is
            # unknown, and the client's session makes its retry safe.
            self._fail_all(ConnectionLost(f"{self.id} lost the leadership; outcome unknown, retry"))
        self._update_peers()

    def _fail_all(self, exc: VStoreError) -> None:
        proposals, self._proposals = self._proposals, {}
        reads, self._reads = self._reads, {}
        waiters, self._read_waiters = self._read_waiters, []
        for future in [f for _, f in proposals.values()] + list(reads.values()) + [f for _, f in waiters]:
            if not future.done():
                future.set_exception(exc)

    async def _maybe_compact(self) -> None:
        applied = self.sm.applied()[0]
        trailing = self.config.compact_trailing_entries
        if applied - self.log_store.first_index() > 2 * trailing:
            loop = asyncio.get_running_loop()
            # the state machine commits without a meta-page flush: make it durable before
            # the log forgets the entries that could rebuild it
            await loop.run_in_executor(self._writer, self.sm.sync)
            await loop.run_in_executor(self._writer, self.log_store.compact, applied - trailing)

    def _check_data_dir(self) -> None:
        identity = self.log_store.identity()
        if identity is None:
            raise StartupError(f"{self.config.data_dir}: no Raft log identity: this data dir was never initialised "
                               f"for a node (create it with 'vstore mkfs' or 'vstore add-node')")
        if identity.get("node_id") != self.id:
            raise StartupError(f"{self.config.data_dir} belongs to node {identity.get('node_id')!r}, not {self.id!r}")
        marker = self.config.data_dir / MEMBER_MARKER
        if self.log_store.is_empty() and marker.exists() and not self.log_store.voting_disabled:
            log.error("raft.log_lost", extra={"node": self.id, "data_dir": str(self.config.data_dir),
                                              "action": "voting disabled; remove and re-add this node"})
            self.log_store.disable_voting("the Raft log was empty although this node had been a member")
        applied, _ = self.sm.applied()
        if applied < self.log_store.first_index() - 1:
            raise StartupError(f"{self.config.data_dir}: the state machine (applied {applied}) is older than the "
                               f"compacted log (first index {self.log_store.first_index()}): its state was lost; "
                               f"remove this node and add it again with an empty data dir")

    def _note_membership(self) -> None:
        marker = self.config.data_dir / MEMBER_MARKER
        if not marker.exists() and self.id in self.core.voters + self.core.learners:
            tmp = marker.with_suffix(".tmp")
            tmp.write_text(f"{self.id}\n")
            os.replace(tmp, marker)

    def _recover_log_from_state_machine(self) -> None:
        """After a crash between installing a snapshot into the state machine and marking it
        in the log, the log may end before the applied index: mark the snapshot now."""
        index, term = self.sm.applied()
        if index == 0:
            return
        try:
            matches = self.log_store.term(index) == term
        except (LogCompacted, LogUnavailable):
            matches = False  # a CorruptLogError propagates: never paper over a damaged log
        if not matches and index >= self.log_store.first_index() - 1:
            log.warning("raft.log_behind_state", extra={"node": self.id, "applied": index,
                                                        "last_index": self.log_store.last_index()})
            self.log_store.persist(Ready(snapshot=self.sm.snapshot_meta()))

    # ---- transport: sending ----------------------------------------------------------------------

    def _update_peers(self) -> None:
        members = set(self.core.voters) | set(self.core.learners)
        if not members:
            return  # no configuration applied yet: keep talking to whoever talks to us
        for peer in list(self._peers):
            if peer not in members:
                link = self._peers.pop(peer)
                asyncio.ensure_future(link.close())

    def _link(self, peer: str) -> _PeerLink | None:
        link = self._peers.get(peer)
        if link is None:
            address = self.core.addresses.get(peer) or self.config.initial_peers.get(peer)
            if not address:
                return None
            parsed = Address.parse(address)
            link = _PeerLink(self, peer, (parsed.host, parsed.port))
            self._peers[peer] = link
        return link

    def _send(self, m: RaftMessage) -> None:
        if m.type == RaftMsgType.SNAP:
            if m.to not in self._snapshot_streams:
                task = asyncio.create_task(self._stream_snapshot(m), name=f"raft-snap-{self.id}-{m.to}")
                self._snapshot_streams[m.to] = task
                task.add_done_callback(lambda _t, to=m.to: self._snapshot_streams.pop(to, None))
            return
        link = self._link(m.to)
        if link is None:
            self.stats["messages_dropped"] += 1
            return
        link.enqueue(m)

    async def _stream_snapshot(self, m: RaftMessage) -> None:
        link = self._link(m.to)
        ok = False
        workdir = self.config.data_dir / "snapshots" / f"out-{m.to}"
        try:
            if link is None:
                return
            loop = asyncio.get_running_loop()
            file, meta = await loop.run_in_executor(self._snapshotter, self.sm.export_snapshot, workdir)
            total = file.stat().st_size
            hasher = xxhash.xxh3_64()
            log.info("raft.snapshot_sending", extra={"node": self.id, "to": m.to, "index": meta.index, "bytes": total})
            with open(file, "rb") as fh:
                offset = 0
                while True:
                    chunk = await loop.run_in_executor(self._snapshotter, fh.read, self.config.snapshot_chunk_bytes)
                    hasher.update(chunk)
                    done = offset + len(chunk) >= total
                    await link.client.call(RaftSnapshotChunkRequest(index=meta.index, term=meta.term, offset=offset,
                                                                    total_bytes=total, done=done,
                                                                    file_hash=hasher.intdigest() if done else 0),
                                           chunk, deadline_s=self.config.peer_send_timeout_s * 4)
                    offset += len(chunk)
                    if done:
                        break
            link.enqueue(RaftMessage(type=RaftMsgType.SNAP, to=m.to, frm=self.id, term=m.term, snapshot=meta))
            self.stats["snapshots_sent"] += 1
            ok = True
        except (VStoreError, OSError) as exc:
            log.warning("raft.snapshot_send_failed", extra={"node": self.id, "to": m.to, "error": str(exc)})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            self._put(("snapshot_done", m.to, ok))

    # ---- re-sync after a state divergence -----------------------------------------------------------

    async def _resync(self) -> None:
        """Replace this replica's state machine with the leader's snapshot (RELIABILITY.md
        §4.5). The log itself is not suspect (every entry is checksummed and matched by
        Raft): what diverged is the state built from it. So: fetch a snapshot from the
        leader, stop the Raft task, install the snapshot into the state machine and mark it
        in the log, rebuild the core from storage (applied = the snapshot's index), start
        again, and re-apply the log's entries after the snapshot. Voting stays disabled (an
        operator removes and re-adds the node to give it back its vote)."""
        workdir = self.config.data_dir / "snapshots"
        target = workdir / "resync.mdb"
        while True:
            leader = self.leader_id
            link = self._link(leader) if leader and leader != self.id else None
            if link is None:
                await asyncio.sleep(0.2)
                continue
            try:
                meta = await self._fetch_snapshot(link, target)
                break
            except (VStoreError, OSError) as exc:
                log.warning("raft.resync_fetch_failed", extra={"node": self.id, "leader": leader, "error": str(exc)})
                await asyncio.sleep(1.0)
        try:
            await self._swap_in(target, meta)
        except (FatalStorageError, OSError) as exc:
            self.fatal = exc
            log.critical("raft.fatal", extra={"node": self.id, "error": f"re-sync failed: {exc}"})
            if self._on_fatal is not None:
                self._on_fatal(exc)

    async def _swap_in(self, target: Path, meta: SnapshotMeta) -> None:
        loop = asyncio.get_running_loop()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_all(Unavailable(f"{self.id} is re-syncing its state from the leader; retry"))
        # the writer thread serialises this after whatever persist or apply was under way
        staged = await loop.run_in_executor(self._writer, self.sm.stage_snapshot, target, meta)
        self.sm.swap_in_snapshot(staged)  # on the loop: no read of the state runs meanwhile
        await loop.run_in_executor(self._writer, self.log_store.persist, Ready(snapshot=meta))
        raft_config = dataclasses.replace(_with_applied(self.config.raft, meta.index), voting_disabled=True)
        self.core = RaftCore(self.id, raft_config, self.log_store, random.Random(self._rng.random()))
        self.role, self.leader_id = Role.FOLLOWER, None
        self._proposals.clear()
        self.resyncs += 1
        log.warning("raft.resynced", extra={"node": self.id, "index": meta.index, "term": meta.term,
                                            "action": "state replaced by the leader's snapshot; voting stays off"})
        if not self._stopped:
            self._start_tasks()

    async def _fetch_snapshot(self, link: _PeerLink, target: Path) -> SnapshotMeta:
        loop = asyncio.get_running_loop()
        hasher = xxhash.xxh3_64()
        offset = 0
        with open(target, "wb") as fh:
            while True:
                reply = await link.client.call(RaftSnapshotFetchRequest(offset=offset,
                                                                        max_bytes=self.config.snapshot_chunk_bytes),
                                               deadline_s=self.config.peer_send_timeout_s * 4)
                msg = reply.message
                assert isinstance(msg, RaftSnapshotFetchReply)
                if msg.offset != offset:
                    raise Busy(f"snapshot piece at {msg.offset}, expected {offset}")
                data = bytes(reply.payload)
                await loop.run_in_executor(self._snapshotter, fh.write, data)
                hasher.update(data)
                offset += len(data)
                if msg.done:
                    break
            await loop.run_in_executor(self._snapshotter, fh.flush)
            await loop.run_in_executor(self._snapshotter, os.fsync, fh.fileno())
        if offset != msg.total_bytes or hasher.intdigest() != msg.file_hash:
            target.unlink(missing_ok=True)
            raise Busy("the fetched snapshot failed its checksum")
        return msg.meta

    async def _on_snapshot_fetch(self, ctx: RequestContext, msg: Message, payload: bytes) -> Any:
        assert isinstance(msg, RaftSnapshotFetchRequest)
        if not self.is_leader:
            raise self.not_leader_error()
        loop = asyncio.get_running_loop()
        peer = ctx.peer.node_id
        if msg.offset == 0 or peer not in self._exports:
            old = self._exports.pop(peer, None)
            if old is not None:
                shutil.rmtree(old[0].parent, ignore_errors=True)
            workdir = self.config.data_dir / "snapshots" / f"fetch-{peer}"
            self._exports[peer] = await loop.run_in_executor(self._snapshotter, self.sm.export_snapshot, workdir)
        file, meta = self._exports[peer]

        def read() -> tuple[bytes, int, int]:
            total = file.stat().st_size
            with open(file, "rb") as fh:
                fh.seek(msg.offset)
                data = fh.read(msg.max_bytes)
                if msg.offset + len(data) < total:
                    return data, total, 0
                fh.seek(0)
                hasher = xxhash.xxh3_64()
                while block := fh.read(1 << 20):
                    hasher.update(block)
                return data, total, hasher.intdigest()

        data, total, file_hash = await loop.run_in_executor(self._snapshotter, read)
        done = msg.offset + len(data) >= total
        if done:
            self._exports.pop(peer, None)
            shutil.rmtree(file.parent, ignore_errors=True)
        return Reply(RaftSnapshotFetchReply(meta=meta, offset=msg.offset, total_bytes=total, done=done,
                                            file_hash=file_hash), data)

    # ---- transport: receiving snapshots -------------------------------------------------------------

    async def _on_snapshot_chunk(self, ctx: RequestContext, msg: Message, payload: bytes) -> RaftSnapshotChunkReply:
        assert isinstance(msg, RaftSnapshotChunkRequest)
        key = (ctx.peer.node_id, msg.index, msg.term)
        incoming = self._incoming.get(key)
        if msg.offset == 0:
            for old in [k for k in self._incoming if k[0] == ctx.peer.node_id]:
                self._incoming.pop(old).discard()
            path = self.config.data_dir / "snapshots" / f"in-{ctx.peer.node_id}-{msg.index}-{msg.term}.mdb"
            incoming = _IncomingSnapshot(path, msg.total_bytes)
            self._incoming[key] = incoming
        if incoming is None or msg.offset != incoming.received or msg.total_bytes != incoming.total:
            raise Busy(f"snapshot {msg.index} chunk at {msg.offset} out of order; restart the transfer")
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._snapshotter, incoming.write, payload)
        if msg.done:
            self._incoming.pop(key, None)
            ok = await loop.run_in_executor(self._snapshotter, incoming.finish, msg.file_hash)
            if not ok:
                raise Busy(f"snapshot {msg.index} failed its checksum; restart the transfer")
            for index in [i for i in self._ready_snapshots if i != msg.index]:
                self._ready_snapshots.pop(index).unlink(missing_ok=True)
            self._ready_snapshots[msg.index] = incoming.path
        return RaftSnapshotChunkReply(received_bytes=incoming.received)


class _IncomingSnapshot:
    def __init__(self, path: Path, total: int) -> None:
        self.path = path
        self.total = total
        self.received = 0
        self.hasher = xxhash.xxh3_64()
        self.fh = open(path, "wb")

    def write(self, data: bytes) -> None:
        self.fh.write(data)
        self.hasher.update(data)
        self.received += len(data)

    def finish(self, expected_hash: int) -> bool:
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        if self.received != self.total or self.hasher.intdigest() != expected_hash:
            self.path.unlink(missing_ok=True)
            return False
        return True

    def discard(self) -> None:
        self.fh.close()
        self.path.unlink(missing_ok=True)


class _PeerLink:
    """One peer: an authenticated client and a bounded queue drained by one task."""

    def __init__(self, node: RaftNode, peer: str, address: tuple[str, int]) -> None:
        self.node = node
        self.peer = peer
        self.client = RpcClient(address, node.auth, expected_role="mds", limits=node.config.peer_limits,
                                default_deadline_s=node.config.peer_send_timeout_s)
        self.queue: deque[RaftMessage] = deque()
        self.ready = asyncio.Event()
        self.task = asyncio.create_task(self._run(), name=f"raft-peer-{node.id}-{peer}")
        self._failures = 0

    def enqueue(self, m: RaftMessage) -> None:
        if len(self.queue) >= self.node.config.peer_queue_messages:
            self.queue.clear()  # a peer this far behind needs a fresh probe, not stale appends
            self.node.stats["messages_dropped"] += 1
            self.node._put(("unreachable", self.peer))
        self.queue.append(m)
        self.ready.set()

    async def _run(self) -> None:
        while True:
            await self.ready.wait()
            self.ready.clear()
            while self.queue:
                m = self.queue.popleft()
                try:
                    await self.client.send_oneway(m)
                    self.node.stats["messages_sent"] += 1
                    self._failures = 0
                except VStoreError as exc:
                    self.node.stats["messages_dropped"] += 1 + len(self.queue)
                    self.queue.clear()
                    self._failures += 1
                    if self._failures in (1, 10, 100) or self._failures % 1000 == 0:
                        log.info("raft.peer_unreachable", extra={"node": self.node.id, "peer": self.peer,
                                                                 "error": exc.message, "failures": self._failures})
                    self.node._put(("unreachable", self.peer))

    async def close(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.client.close()


async def _storage_failpoint(name: str) -> None:
    """A failpoint between the Ready's storage steps: an injected OSError there is the
    storage failure it stands for, fatal to the node (FatalStorageError)."""
    try:
        await afailpoint(name)
    except OSError as exc:
        raise FatalStorageError(f"{name}: {exc}") from exc


def _with_applied(config: RaftConfig, applied: int) -> RaftConfig:
    return dataclasses.replace(config, applied=applied)
