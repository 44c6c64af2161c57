"""``vstore top``'s frame is a pure function of two looks at the cluster: rates come from the
differences of the chunkservers' heartbeat counters and the leader's copied bytes."""

from __future__ import annotations

from vstore.cli.top import Snapshot, rates, render
from vstore.wire import admin as a

MIB = 1 << 20


def _cs(cs_id: int, read: int, written: int, copied: int, **kw: object) -> a.CsInfo:
    fields = {"node_id": f"cs-{cs_id}", "address": "10.0.0.1:9402", "host": f"h{cs_id}", "rack": "",
              "state": "active", "status": "online", "capacity_bytes": 100 * MIB, "used_bytes": 25 * MIB,
              "chunks": 7, "last_heartbeat_ms": 300,
              "gauges": {"read_bytes": read, "written_bytes": written, "copied_bytes": copied}, **kw}
    return a.CsInfo(cs_id=cs_id, **fields)  # type: ignore[arg-type]


def _snap(ms: int, servers: list[a.CsInfo], copied: int, **chunks: int) -> Snapshot:
    leader = {"node_id": "mds-1", "role": "leader", "term": 3, "commit": 100, "applied": 100, "raft": {}}
    follower = {**leader, "node_id": "mds-2", "role": "follower", "applied": 90}
    return Snapshot(taken_s=0.0, cluster="lab", mds={"10.0.0.1:9400": leader, "10.0.0.2:9400": follower,
                                                     "10.0.0.3:9400": None},
                    chunks={"cs_total": 2, "cs_online": 1, "copied_bytes": copied, **chunks}, servers=servers,
                    leader_ms=ms)


def test_rates_are_differences_over_the_leaders_clock() -> None:
    before = _snap(10_000, [_cs(1, 0, 0, 0), _cs(2, 0, 0, 0)], 0)
    now = _snap(12_000, [_cs(1, 4 * MIB, 2 * MIB, 0), _cs(2, 0, 0, 10 * MIB)], 10 * MIB)
    per, rebuild = rates(now, before)
    assert per == {1: (2.0, 1.0, 0.0), 2: (0.0, 0.0, 5.0)} and rebuild == 5.0
    assert rates(now, None) == ({}, None)
    assert rates(before, now)[1] is None  # a clock that went back (a new leader): no rate


def test_the_frame_shows_health_mds_chunkservers_and_the_rebuild() -> None:
    before = _snap(10_000, [_cs(1, 0, 0, 0), _cs(2, 0, 0, 0)], 0)
    now = _snap(12_000, [_cs(1, 4 * MIB, 2 * MIB, 0), _cs(2, 0, 0, 10 * MIB, status="failed", last_heartbeat_ms=9000),
                         _cs(3, 0, 0, 0, state="draining", drain_left=4, sole=1)], 10 * MIB,
                backlog_below_target=3, orders_in_flight=2, copies_committed=10)
    frame = render(now, before)
    assert "cluster lab: DEGRADED" in frame and "MDS 10.0.0.3:9400 does not answer" in frame
    mds2 = next(line for line in frame.splitlines() if " mds-2 " in line)
    assert "follower" in mds2 and mds2.endswith(" 10")  # 10 entries behind the leader
    row = next(line for line in frame.splitlines() if line.startswith("  2 cs-2"))
    assert "failed" in row and "9.0s" in row and "5.0" in row
    assert "draining: 4 chunk(s) still need copies elsewhere, 1 have no other copy" in frame
    assert "waiting for repair 3 (below_target 3)" in frame
    assert "rebuild: now 5.0 MiB/s; 2 order(s) in flight; this leader made 10 copies, 10.0 MiB" in frame
    first = render(now)
    assert "now -" in first and "   -      -      -" in first
