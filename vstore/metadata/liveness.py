"""The MDS leader's view of which chunkservers are alive, fed by heartbeats. Pure.

Owns: the last time each chunkserver was heard, its boot id and gauges, the liveness
status derived from them (ONLINE, OFFLINE, FAILED, plus DRAINING from the registry), the
status changes the service logs, the chunk-report bookkeeping after a (re)start, and the
safe-mode decision after a leader start (RELIABILITY.md §4.7). It must not do I/O, read a
clock or log: the service passes every time in, logs the transitions, sends the report
requests, and persists nothing of this (it is soft state, rebuilt by the next leader).

Why it is shaped this way:

* **Monotonic clock only** (RELIABILITY.md §4.10). Every ``now_s`` is a reading of the
  leader's ``time.monotonic()``, never wall-clock time: a wall-clock jump of a minute would
  otherwise declare every chunkserver failed and start a full-cluster rebuild. A heartbeat
  whose ``now_s`` is older than one already recorded (a reordered call, a caller bug) is
  ignored rather than allowed to move "last heard" backwards; so is one older than
  ``started_s`` (heard before this leadership, so no evidence for it) or a non-finite time.
* **The grace is measured from the leader's start.** A new leader has heard nobody yet:
  the old leader's "last heard" times are not in the replicated state (they change every
  second) and its monotonic clock is not ours. So every chunkserver starts OFFLINE at
  ``started_s`` (its replicas still count, nothing is placed on it) and becomes FAILED only
  after a full ``failed_after_s`` of silence counted from ``started_s``. The rejected
  alternative, treating the unheard as failed at once, would have every leader change
  rebuild the whole cluster.
* **Offline before failed.** OFFLINE stops new placements after ``offline_after_s``
  (default 5 s, a few lost 1 s heartbeats); FAILED, after ``failed_after_s`` (default 60 s),
  means its replicas are gone and are rebuilt elsewhere. A reboot fits in the gap, so a
  restarted node costs a chunk report, not a rebuild of its data.
* **Restarts are noticed by boot id.** A chunkserver picks a random boot id per process
  start (vstore/wire/datagram.py); a new one means it restarted and may have lost files it
  had not fsynced, so the leader asks for a full chunk report. The first heartbeat a leader
  hears from a chunkserver asks for one too: the new leader has no report of its own yet.
* **Transitions are exact, not sampled.** A silence that starts and ends between two calls
  of ``transitions`` still appears (ONLINE -> OFFLINE -> ONLINE), because the heartbeat that
  ends it records what the silence reached. Every chunkserver's chain starts at OFFLINE (the
  status at ``started_s``), so the first heartbeat after a leader change shows as
  OFFLINE -> ONLINE.
* **Safe mode** (HDFS safemode, MooseFS ``REPLICATIONS_DELAY_INIT``): after a start, an
  unreported chunkserver looks like lost replicas, so no GC, orphan deletion or rebuild
  runs until enough chunkservers have heartbeated and reported, or a timeout passes. It is
  left once and never re-entered by this leader: a restart later is ordinary repair work.

Limits: at most ``MAX_PENDING_TRANSITIONS`` undelivered transitions are kept (oldest
dropped) so a service that never calls ``transitions`` cannot grow memory without bound.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from typing import NamedTuple

from vstore.metadata.placement import CsId, CsState, CsStatus

#: Undelivered transitions kept at most. A chunkserver can change status at most three
#: times per offline_after_s of flapping, so this is hours of backlog for a large cluster.
MAX_PENDING_TRANSITIONS = 10_000

# The liveness statuses, in the order a silence goes through them.
_SILENCE_ORDER = (CsStatus.ONLINE, CsStatus.OFFLINE, CsStatus.FAILED)


class HeartbeatOutcome(enum.Enum):
    """What one heartbeat meant to the leader."""

    ROUTINE = "routine"      # the same boot as last time: time and gauges recorded
    FIRST = "first"          # the first heard from this CS by this leader: ask for a chunk report
    RESTARTED = "restarted"  # a new boot id: the CS restarted; ask for a chunk report
    IGNORED = "ignored"      # older than one already recorded or than started_s, or not a finite time

    @property
    def wants_report(self) -> bool:
        """True for FIRST and RESTARTED: the caller should ask the CS for a full chunk report
        (unless ``report_pending`` already says it arrived, e.g. over TCP before this beat)."""
        return self in (HeartbeatOutcome.FIRST, HeartbeatOutcome.RESTARTED)


class CsRecord(NamedTuple):
    """What the registry (replicated state) knows of one chunkserver, for ``snapshot``."""

    cs_id: CsId
    host: str
    rack: str
    draining: bool
    capacity_bytes: int  # used when the CS has not reported a capacity gauge


Transition = tuple[CsId, CsStatus, CsStatus]


class _AnyBoot:
    """Marker: a chunk report that names no boot id, received before any heartbeat."""


_ANY_BOOT = _AnyBoot()


@dataclass(slots=True)
class _Heard:
    last_s: float
    boot_id: bytes
    gauges: dict[str, int] = field(default_factory=dict)


class CsLiveness:
    """Liveness of the registered chunkservers as seen by one MDS leader (create one per
    leadership term). Deterministic: the same calls with the same times give the same answers."""

    def __init__(self, started_s: float, *, offline_after_s: float = 5.0, failed_after_s: float = 60.0) -> None:
        """``started_s``: the monotonic time this node became leader. Raises ValueError unless
        0 < offline_after_s < failed_after_s (offline first, failed later; config.py checks
        the same on the configured values)."""
        if not math.isfinite(started_s):
            raise ValueError(f"started_s={started_s}: must be a finite monotonic clock reading")
        if not 0 < offline_after_s < failed_after_s < math.inf:
            raise ValueError(f"offline_after_s={offline_after_s}, failed_after_s={failed_after_s}: "
                             "need 0 < offline_after_s < failed_after_s")
        self.started_s = started_s
        self.offline_after_s = offline_after_s
        self.failed_after_s = failed_after_s
        self._heard: dict[CsId, _Heard] = {}
        self._report_boot: dict[CsId, bytes | _AnyBoot] = {}
        self._reported: dict[CsId, CsStatus] = {}  # the "new" status of its latest transition
        self._pending: deque[Transition] = deque(maxlen=MAX_PENDING_TRANSITIONS)
        self._safe_mode_ended_s: float | None = None

    # ---- heartbeats and reports ------------------------------------------------------------

    def heartbeat(self, cs_id: CsId, now_s: float, boot_id: bytes, gauges: Mapping[str, int]) -> HeartbeatOutcome:
        """Record one (already authenticated and replay-checked) heartbeat heard at ``now_s``.

        ``gauges`` are the CS's figures by name (``capacity_bytes``, ``used_bytes``,
        ``free_bytes``, ``chunks``, ``load_permille`` ...); they replace the previous ones.
        A new boot id forgets the chunk report of the previous boot. Returns what the
        heartbeat meant; see HeartbeatOutcome.wants_report.
        """
        heard = self._heard.get(cs_id)
        if not math.isfinite(now_s) or now_s < self.started_s or (heard is not None and now_s < heard.last_s):
            return HeartbeatOutcome.IGNORED
        self._record_silence(cs_id, heard, now_s)
        if heard is None:
            outcome = HeartbeatOutcome.FIRST
            if self._report_boot.get(cs_id) is _ANY_BOOT:
                self._report_boot[cs_id] = boot_id
        elif heard.boot_id != boot_id:
            outcome = HeartbeatOutcome.RESTARTED
        else:
            outcome = HeartbeatOutcome.ROUTINE
        self._heard[cs_id] = _Heard(now_s, boot_id, dict(gauges))
        return outcome

    def report_received(self, cs_id: CsId, boot_id: bytes | None = None) -> None:
        """A full chunk report from ``cs_id`` has been processed.

        Pass the boot id the report was sent under when the message carries one: a report
        that races a restart then counts only for the boot it describes. Without it, the
        report counts for the boot last heard (or, before any heartbeat, the first one heard).
        """
        if boot_id is None:
            heard = self._heard.get(cs_id)
            self._report_boot[cs_id] = heard.boot_id if heard is not None else _ANY_BOOT
        else:
            self._report_boot[cs_id] = boot_id

    def report_pending(self, cs_id: CsId) -> bool:
        """True while this leader has heard ``cs_id`` but has no chunk report for its current
        boot (the service keeps asking while this holds). False for a CS never heard."""
        heard = self._heard.get(cs_id)
        return heard is not None and self._report_boot.get(cs_id) != heard.boot_id

    def forget(self, cs_id: CsId) -> None:
        """Drop everything about ``cs_id`` (removed from the registry). Transitions already
        pending for it are still delivered."""
        self._heard.pop(cs_id, None)
        self._report_boot.pop(cs_id, None)
        self._reported.pop(cs_id, None)

    def last_heard_s(self, cs_id: CsId) -> float | None:
        heard = self._heard.get(cs_id)
        return heard.last_s if heard is not None else None

    def boot_id(self, cs_id: CsId) -> bytes | None:
        heard = self._heard.get(cs_id)
        return heard.boot_id if heard is not None else None

    def gauges(self, cs_id: CsId) -> dict[str, int]:
        """The gauges of the last accepted heartbeat (a copy; empty if never heard)."""
        heard = self._heard.get(cs_id)
        return dict(heard.gauges) if heard is not None else {}

    # ---- status -----------------------------------------------------------------------------

    def status(self, cs_id: CsId, now_s: float, *, draining: bool) -> CsStatus:
        """The status of ``cs_id`` at ``now_s``; ``draining`` is the registry's flag.

        ONLINE when heard less than offline_after_s ago; FAILED once silent for
        failed_after_s, silence counted from the last heartbeat or from ``started_s``,
        whichever is later; OFFLINE in between, and for a CS not heard yet within its grace.
        DRAINING replaces ONLINE only: a draining CS that goes silent is offline, then
        failed, like any other (its replicas must be rebuilt, not waited for).
        """
        status = self._liveness(cs_id, now_s)
        return CsStatus.DRAINING if draining and status is CsStatus.ONLINE else status

    def _liveness(self, cs_id: CsId, now_s: float) -> CsStatus:
        heard = self._heard.get(cs_id)
        if heard is not None and now_s - heard.last_s < self.offline_after_s:
            return CsStatus.ONLINE
        since_s = max(heard.last_s, self.started_s) if heard is not None else self.started_s
        return CsStatus.FAILED if now_s - since_s >= self.failed_after_s else CsStatus.OFFLINE

    def snapshot(self, records: Iterable[tuple[CsId, str, str, bool, int]], now_s: float) -> list[CsState]:
        """The planners' view: one CsState per registry record (a CsRecord or an equal plain
        tuple), sorted by cs_id.

        Capacity and usage come from the last heartbeat's gauges when present
        (``capacity_bytes``, else ``used_bytes + free_bytes``; ``used_bytes``, else
        ``capacity - free_bytes``), because the CS measures its own disk; otherwise the
        record's capacity and zero used (such a CS is offline, so nothing is placed on it).
        """
        out = []
        for cs_id, host, rack, draining, capacity_fallback in records:
            capacity, used = self._space(cs_id, capacity_fallback)
            out.append(CsState(cs_id, host, rack, self.status(cs_id, now_s, draining=draining), capacity, used))
        out.sort(key=lambda cs: cs.cs_id)
        return out

    def _space(self, cs_id: CsId, capacity_fallback: int) -> tuple[int, int]:
        gauges = self._heard[cs_id].gauges if cs_id in self._heard else {}
        used, free = gauges.get("used_bytes"), gauges.get("free_bytes")
        capacity = gauges.get("capacity_bytes")
        if capacity is None:
            capacity = used + free if used is not None and free is not None else capacity_fallback
        if used is None:
            used = max(0, capacity - free) if free is not None else 0
        return max(0, capacity), max(0, used)

    # ---- transitions ------------------------------------------------------------------------

    def transitions(self, now_s: float, cs_ids: Collection[CsId] = ()) -> list[Transition]:
        """The liveness changes (cs_id, old, new) since the last call, oldest first per CS.

        Covers every CS heard by this leader, plus ``cs_ids`` (pass the registered ones, so a
        CS that never comes back after a leader change is reported FAILED when its grace
        ends). Statuses are ONLINE, OFFLINE and FAILED only (draining is the registry's
        business). Each CS's changes form a chain starting at OFFLINE, in the order they
        happened, each exactly once, including a silence that began and ended between two
        calls. The service logs ``cs.offline``, ``cs.failed`` and ``cs.back`` from them.
        """
        for cs_id in sorted(set(self._heard) | set(cs_ids)):
            current = self._liveness(cs_id, now_s)
            if current is not CsStatus.ONLINE:  # ONLINE is reached only by a heartbeat
                self._advance(cs_id, current)
        out = list(self._pending)
        self._pending.clear()
        return out

    def _record_silence(self, cs_id: CsId, heard: _Heard | None, now_s: float) -> None:
        """Before a heartbeat at ``now_s`` is recorded: note the worst status reached in
        the silence that it ends, then the return to ONLINE."""
        # The silence is the open interval (last heard, now_s): it reached a threshold only
        # if it lasted strictly longer, since at now_s itself the CS is heard again.
        since_s = max(heard.last_s, self.started_s) if heard is not None else self.started_s
        if now_s - since_s > self.failed_after_s:
            worst = CsStatus.FAILED
        elif heard is None or now_s - heard.last_s > self.offline_after_s:
            worst = CsStatus.OFFLINE
        else:
            worst = CsStatus.ONLINE
        self._advance(cs_id, worst)
        reported = self._reported.get(cs_id, CsStatus.OFFLINE)
        if reported is not CsStatus.ONLINE:
            self._pending.append((cs_id, reported, CsStatus.ONLINE))
            self._reported[cs_id] = CsStatus.ONLINE

    def _advance(self, cs_id: CsId, status: CsStatus) -> None:
        """Step the reported status forward along ONLINE -> OFFLINE -> FAILED up to ``status``,
        one transition per step (never backwards: only a heartbeat returns a CS to ONLINE)."""
        reported = self._reported.get(cs_id, CsStatus.OFFLINE)
        for i in range(_SILENCE_ORDER.index(reported), _SILENCE_ORDER.index(status)):
            self._pending.append((cs_id, _SILENCE_ORDER[i], _SILENCE_ORDER[i + 1]))
        if _SILENCE_ORDER.index(status) > _SILENCE_ORDER.index(reported):
            self._reported[cs_id] = status

    # ---- safe mode --------------------------------------------------------------------------

    def in_safe_mode(self, now_s: float, expected_cs_ids: Collection[CsId], *, ratio: float = 0.99,
                     timeout_s: float) -> bool:
        """True while the leader must not run GC, orphan deletion or re-replication.

        ``expected_cs_ids``: the registered, active chunkservers. Safe mode lasts from
        ``started_s`` until at least ``ratio`` of them have heartbeated *and* had their chunk
        report for their current boot processed, or until ``timeout_s`` has passed since
        ``started_s`` (the operator's escape: a dead node must not block repair forever).
        No expected chunkserver means no safe mode. Once this returns False it returns False
        for the life of this object.
        """
        if self._safe_mode_ended_s is not None:
            return False
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio={ratio}: must be in (0, 1]")
        expected = set(expected_cs_ids)
        reported = sum(1 for cs_id in expected if cs_id in self._heard and not self.report_pending(cs_id))
        # Exact decimal arithmetic on the ratio as written (str(0.99) == "0.99"): with floats,
        # 10 of 100 would miss ratio=0.1, whose binary value is a hair above one tenth.
        needed = Fraction(str(ratio)) * len(expected)
        if not expected or now_s - self.started_s >= timeout_s or reported >= needed:
            self._safe_mode_ended_s = now_s
            return False
        return True

    @property
    def safe_mode_ended_s(self) -> float | None:
        """When ``in_safe_mode`` first returned False (None while still in safe mode)."""
        return self._safe_mode_ended_s
