"""The events an operator watches, picked from the MDS's own log records.

Every MDS logs what happens as structured events (``cs.failed``, ``raft.leader_changed``,
``rebuild.finished`` ...). ``EventLog`` is a logging handler that keeps the ones listed in
``EVENTS`` in a bounded ring with sequence numbers, so the dashboard's event log and the
log files can never disagree: there is one place an event is raised. Every MDS answers
``EventsRequest`` from its ring (vstore/wire/admin.py); a dashboard on any MDS asks the
leader, and keeps its own numbering across leader changes (vstore/admin/source.py).
"""

from __future__ import annotations

import logging
import secrets
import threading
from collections import deque
from typing import Any

from vstore.logs import record_fields
from vstore.wire import admin as a

#: event name -> what the text says (the record's fields fill it in)
EVENTS: dict[str, str] = {
    "cs.offline": "chunkserver {cs_id} ({host}) offline: no heartbeat",
    "cs.failed": "chunkserver {cs_id} ({host}) failed: its replicas are rebuilt elsewhere",
    "cs.back": "chunkserver {cs_id} ({host}) back online",
    "cs.restarted": "chunkserver {cs_id} ({node_id}) restarted",
    "cs.registered": "chunkserver {cs_id} ({node_id} on {host}) joined",
    "cs.state_set": "chunkserver {cs_id} set {state} by {by}",
    "chunk.damaged": "checksum error: chunk {chunk} on chunkserver {cs_id} ({reason})",
    "rebuild.started": "rebuild started: {chunks} chunk(s) below their target",
    "rebuild.finished": "rebuild finished: {copied_mib} MiB in {seconds} s ({mib_s} MiB/s)",
    "mds.storm_brake": "storm brake: {down} chunkservers down, automatic rebuild stopped",
    "mds.safe_mode_ended": "safe mode ended: {reported} of {chunkservers} chunkservers reported",
    "raft.leader_changed": "leader is now {leader} (term {term}), seen by {node}",
    "mds.member_added": "MDS {node} added as a learner at {address}",
    "mds.member_promoted": "MDS {node} promoted to voter",
    "mds.member_removed": "MDS {node} removed",
}
CAPACITY = 2000


class _Defaults(dict):  # type: ignore[type-arg]
    def __missing__(self, key: str) -> str:
        return "?"


class EventLog(logging.Handler):
    def __init__(self, capacity: int = CAPACITY) -> None:
        super().__init__(level=logging.INFO)
        self._ring: deque[a.ClusterEvent] = deque(maxlen=capacity)
        self._seq = 0
        self._lock = threading.Lock()
        #: names this process's ring: sequence numbers restart with the process
        self.source = secrets.token_hex(8)

    def emit(self, record: logging.LogRecord) -> None:
        template = EVENTS.get(record.getMessage())
        if template is None:
            return
        try:
            text = template.format_map(_Defaults({k: v for k, v in record_fields(record).items()}))
        except (ValueError, IndexError):
            text = record.getMessage()
        with self._lock:
            self._seq += 1
            self._ring.append(a.ClusterEvent(seq=self._seq, time_ms=int(record.created * 1000),
                                             level=record.levelname.lower(), event=record.getMessage(),
                                             text=text[:1024]))

    def since(self, after: int, limit: int = a.EVENTS_MAX) -> list[a.ClusterEvent]:
        with self._lock:
            return [e for e in self._ring if e.seq > after][:limit]

    def install(self) -> None:
        """Attach to the ``vstore`` logger. Events are INFO records: with a quieter configured
        level, the level moves from the logger to its other handlers, so the log output
        stays as configured and the events still arrive here."""
        logger = logging.getLogger("vstore")
        if logger.getEffectiveLevel() > logging.INFO:
            level = logger.getEffectiveLevel()
            for handler in logger.handlers:
                handler.setLevel(max(handler.level, level))
            logger.setLevel(logging.INFO)
        logger.addHandler(self)

    def uninstall(self) -> None:
        logging.getLogger("vstore").removeHandler(self)

    def register(self, router: Any) -> None:
        router.add(a.EventsRequest, self._events, roles=frozenset({"admin"}))

    async def _events(self, ctx: Any, m: a.EventsRequest, payload: bytes) -> a.EventsReply:
        return a.EventsReply(source=self.source, events=tuple(self.since(m.after)))
