"""CsLiveness: chunkserver status from heartbeats, against a naive reference on random
schedules; the grace after a leader start; restarts; exact transitions; safe mode
(RELIABILITY.md §4.7, §4.10)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstore.metadata.liveness import MAX_PENDING_TRANSITIONS, CsLiveness, CsRecord, HeartbeatOutcome
from vstore.metadata.placement import CsId, CsState, CsStatus

ONLINE, OFFLINE, FAILED, DRAINING = CsStatus.ONLINE, CsStatus.OFFLINE, CsStatus.FAILED, CsStatus.DRAINING
CS1, CS2, CS3 = CsId(1), CsId(2), CsId(3)
BOOT_A, BOOT_B = b"a" * 16, b"b" * 16
START = 1000.0
GIB = 1 << 30


def _liveness(**kwargs: float) -> CsLiveness:
    return CsLiveness(START, offline_after_s=kwargs.get("offline", 5), failed_after_s=kwargs.get("failed", 60))


# ---- status -------------------------------------------------------------------------------------


def test_a_cs_heard_recently_is_online_then_offline_then_failed() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 10, BOOT_A, {})
    assert lv.status(CS1, START + 10, draining=False) is ONLINE
    assert lv.status(CS1, START + 14.9, draining=False) is ONLINE
    assert lv.status(CS1, START + 15, draining=False) is OFFLINE
    assert lv.status(CS1, START + 69.9, draining=False) is OFFLINE


def test_a_cs_silent_past_the_grace_is_failed() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 10, BOOT_A, {})
    assert lv.status(CS1, START + 70, draining=False) is FAILED


def test_a_cs_not_heard_since_the_leader_started_is_offline_for_a_full_grace() -> None:
    lv = _liveness()
    assert lv.status(CS1, START, draining=False) is OFFLINE
    assert lv.status(CS1, START + 59.9, draining=False) is OFFLINE
    assert lv.status(CS1, START + 60, draining=False) is FAILED


def test_a_draining_cs_is_draining_only_while_online() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START, BOOT_A, {})
    assert lv.status(CS1, START + 1, draining=True) is DRAINING
    assert lv.status(CS1, START + 6, draining=True) is OFFLINE
    assert lv.status(CS1, START + 61, draining=True) is FAILED
    assert lv.status(CS2, START + 1, draining=True) is OFFLINE  # never heard


def test_a_heartbeat_older_than_the_last_one_is_ignored() -> None:
    lv = _liveness()
    assert lv.heartbeat(CS1, START + 20, BOOT_A, {"chunks": 2}) is HeartbeatOutcome.FIRST
    assert lv.heartbeat(CS1, START + 19, BOOT_B, {"chunks": 1}) is HeartbeatOutcome.IGNORED
    assert lv.last_heard_s(CS1) == START + 20 and lv.boot_id(CS1) == BOOT_A and lv.gauges(CS1) == {"chunks": 2}
    assert lv.status(CS1, START + 25, draining=False) is OFFLINE


def test_a_heartbeat_at_a_non_finite_time_or_before_the_leader_started_is_ignored() -> None:
    lv = _liveness()
    assert lv.heartbeat(CS1, START - 0.5, BOOT_A, {}) is HeartbeatOutcome.IGNORED
    assert lv.heartbeat(CS1, float("nan"), BOOT_A, {}) is HeartbeatOutcome.IGNORED
    assert lv.heartbeat(CS1, float("inf"), BOOT_A, {}) is HeartbeatOutcome.IGNORED
    assert lv.last_heard_s(CS1) is None


def test_the_thresholds_must_put_offline_before_failed() -> None:
    for offline, failed in ((5, 5), (10, 5), (0, 5)):
        with pytest.raises(ValueError):
            CsLiveness(START, offline_after_s=offline, failed_after_s=failed)
    with pytest.raises(ValueError):
        CsLiveness(float("nan"))


def _naive_status(beats: list[float], t: float, *, started: float, offline: float, failed: float) -> CsStatus:
    """Straight from the contract: online if a heartbeat fell in (t - offline, t]; failed if
    neither a heartbeat nor the leader's start fell in (t - failed, t]; else offline."""
    if any(t - offline < h <= t for h in beats):
        return ONLINE
    if not any(t - failed < x <= t for x in beats + [started]):
        return FAILED
    return OFFLINE


@st.composite
def schedules(draw: st.DrawFn) -> list[tuple[float, str, float]]:
    """Events (at, kind, back_s) in processing order. Times are quarter seconds (exact in
    binary, so the thresholds are hit exactly). A "stale" heartbeat claims a time back_s
    before the last accepted one (or before the leader's start)."""
    events = []
    for _ in range(draw(st.integers(0, 40))):
        at = START + draw(st.integers(0, 800)) / 4
        kind = draw(st.sampled_from(["beat", "beat", "query", "transitions", "stale"]))
        events.append((at, kind, draw(st.integers(1, 80)) / 4 if kind == "stale" else 0.0))
    # heartbeats before queries at the same instant: at t, a CS heard at t is online
    events.sort(key=lambda e: (e[0], e[1] != "beat" and e[1] != "stale"))
    return events


def _reference_chain(beats: list[float], until: float, *, offline: float, failed: float) -> list[CsStatus]:
    """Every status the CS had over [START, until], in order, duplicates collapsed. The status
    is piecewise constant and changes only at these instants."""
    instants = {START, until, START + failed}
    for h in beats:
        instants |= {h, h + offline, h + failed}
    chain = [OFFLINE]  # the status every CS starts at under a new leader
    for t in sorted(i for i in instants if START <= i <= until):
        status = _naive_status(beats, t, started=START, offline=offline, failed=failed)
        if status is not chain[-1]:
            chain.append(status)
    return chain


@settings(max_examples=400, deadline=None)
@given(schedules(), st.sampled_from([(5, 60), (5, 20), (2, 3), (0.25, 30)]))
def test_status_and_transitions_match_a_naive_reference_on_random_schedules(
        events: list[tuple[float, str, float]], thresholds: tuple[float, float]) -> None:
    offline, failed = thresholds
    lv = _liveness(offline=offline, failed=failed)
    accepted: list[float] = []
    reported: list[tuple[CsId, CsStatus, CsStatus]] = []
    for at, kind, back_s in events:
        if kind == "beat":
            assert lv.heartbeat(CS1, at, BOOT_A, {}) is not HeartbeatOutcome.IGNORED
            accepted.append(at)
        elif kind == "stale":
            claimed = (accepted[-1] if accepted else START) - back_s
            assert lv.heartbeat(CS1, claimed, BOOT_B, {}) is HeartbeatOutcome.IGNORED
        elif kind == "query":
            want = _naive_status(accepted, at, started=START, offline=offline, failed=failed)
            assert lv.status(CS1, at, draining=False) is want
            assert lv.status(CS1, at, draining=True) is (DRAINING if want is ONLINE else want)
        else:
            reported += lv.transitions(at, [CS1])
    until = max((e[0] for e in events), default=START)
    reported += lv.transitions(until, [CS1])
    chain = _reference_chain(accepted, until, offline=offline, failed=failed)
    assert reported == [(CS1, old, new) for old, new in zip(chain, chain[1:])]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([CS1, CS2, CS3]), st.integers(0, 400), st.integers(-20, 20),
                          st.booleans()), max_size=40))
def test_transitions_form_one_chain_per_cs_even_when_heartbeats_arrive_late(
        steps: list[tuple[CsId, int, int, bool]]) -> None:
    """Heartbeats stamped before an earlier call (processed late), several chunkservers: the
    changes handed out still chain (each old status is the previous new one, from OFFLINE)
    and end at the status the CS has now, so the service never logs an impossible event."""
    lv = _liveness(offline=5, failed=20)
    out: list[tuple[CsId, CsStatus, CsStatus]] = []
    now = START
    for cs_id, at_quarter_s, late_quarter_s, call in steps:
        now = max(now, START + at_quarter_s / 4)
        if call:
            out += lv.transitions(now, [CS1, CS2, CS3])
        else:
            lv.heartbeat(cs_id, now - late_quarter_s / 4, BOOT_A, {})
    out += lv.transitions(now, [CS1, CS2, CS3])
    for cs_id in (CS1, CS2, CS3):
        chain = [(old, new) for c, old, new in out if c == cs_id]
        current = OFFLINE
        for old, new in chain:
            assert old is current and new is not old
            current = new
        assert current is lv.status(cs_id, now, draining=False)


# ---- restarts and chunk reports -------------------------------------------------------------------


def test_the_first_heartbeat_and_a_new_boot_id_ask_for_a_chunk_report() -> None:
    lv = _liveness()
    first = lv.heartbeat(CS1, START + 1, BOOT_A, {})
    assert first is HeartbeatOutcome.FIRST and first.wants_report and lv.report_pending(CS1)
    lv.report_received(CS1)
    assert not lv.report_pending(CS1)
    routine = lv.heartbeat(CS1, START + 2, BOOT_A, {})
    assert routine is HeartbeatOutcome.ROUTINE and not routine.wants_report
    restarted = lv.heartbeat(CS1, START + 3, BOOT_B, {})
    assert restarted is HeartbeatOutcome.RESTARTED and restarted.wants_report
    assert lv.report_pending(CS1)  # the old boot's report no longer describes its disk
    lv.report_received(CS1, BOOT_B)
    assert not lv.report_pending(CS1)


def test_a_report_counts_only_for_the_boot_it_names() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {})
    lv.report_received(CS1, BOOT_B)  # sent by the next boot, processed before its first heartbeat
    assert lv.report_pending(CS1)
    assert lv.heartbeat(CS1, START + 2, BOOT_B, {}) is HeartbeatOutcome.RESTARTED
    assert not lv.report_pending(CS1)


def test_a_report_before_the_first_heartbeat_counts_for_the_first_boot_heard() -> None:
    lv = _liveness()
    lv.report_received(CS1)
    assert not lv.report_pending(CS1)  # never heard: nothing pending
    assert lv.heartbeat(CS1, START + 1, BOOT_A, {}) is HeartbeatOutcome.FIRST
    assert not lv.report_pending(CS1)


def test_forgetting_a_cs_drops_its_state() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {"chunks": 1})
    lv.forget(CS1)
    assert lv.last_heard_s(CS1) is None and lv.gauges(CS1) == {} and not lv.report_pending(CS1)
    assert lv.heartbeat(CS1, START + 2, BOOT_A, {}) is HeartbeatOutcome.FIRST


# ---- snapshot -----------------------------------------------------------------------------------


def test_the_snapshot_uses_heartbeat_gauges_and_falls_back_to_the_registry() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {"capacity_bytes": 100 * GIB, "used_bytes": 40 * GIB, "chunks": 9})
    lv.heartbeat(CS2, START + 1, BOOT_A, {"used_bytes": 10 * GIB, "free_bytes": 30 * GIB})
    lv.heartbeat(CsId(4), START + 1, BOOT_A, {"free_bytes": 15 * GIB})
    records = [CsRecord(CsId(4), "h4", "", False, 20 * GIB), (CS3, "h3", "r2", False, 50 * GIB),
               CsRecord(CS2, "h2", "r1", True, 999), (CS1, "h1", "r1", False, 999)]
    assert lv.snapshot(records, START + 2) == [
        CsState(CS1, "h1", "r1", ONLINE, 100 * GIB, 40 * GIB),
        CsState(CS2, "h2", "r1", DRAINING, 40 * GIB, 10 * GIB),
        CsState(CS3, "h3", "r2", OFFLINE, 50 * GIB, 0),
        CsState(CsId(4), "h4", "", ONLINE, 20 * GIB, 5 * GIB),
    ]
    assert lv.snapshot(records, START + 100)[0].status is FAILED


# ---- transitions --------------------------------------------------------------------------------


def test_each_change_is_reported_once() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {})
    assert lv.transitions(START + 2) == [(CS1, OFFLINE, ONLINE)]
    assert lv.transitions(START + 3) == []
    assert lv.transitions(START + 7) == [(CS1, ONLINE, OFFLINE)]
    assert lv.transitions(START + 8) == []
    assert lv.transitions(START + 61) == [(CS1, OFFLINE, FAILED)]
    lv.heartbeat(CS1, START + 62, BOOT_A, {})
    assert lv.transitions(START + 62) == [(CS1, FAILED, ONLINE)]
    assert lv.transitions(START + 63) == []


def test_a_silence_between_two_calls_is_still_reported() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {})
    assert lv.transitions(START + 2) == [(CS1, OFFLINE, ONLINE)]
    lv.heartbeat(CS1, START + 9, BOOT_A, {})   # offline from 6 to 9, unseen by any call
    lv.heartbeat(CS1, START + 80, BOOT_A, {})  # failed from 69 to 80
    assert lv.transitions(START + 81) == [(CS1, ONLINE, OFFLINE), (CS1, OFFLINE, ONLINE),
                                          (CS1, ONLINE, OFFLINE), (CS1, OFFLINE, FAILED), (CS1, FAILED, ONLINE)]


def test_a_registered_cs_that_never_comes_back_is_reported_failed_when_its_grace_ends() -> None:
    lv = _liveness()
    assert lv.transitions(START + 59, [CS2]) == []
    assert lv.transitions(START + 60, [CS2]) == [(CS2, OFFLINE, FAILED)]
    assert lv.transitions(START + 61, [CS2]) == []


def test_undelivered_transitions_are_bounded() -> None:
    lv = _liveness(offline=1, failed=100)
    for i in range(MAX_PENDING_TRANSITIONS):
        lv.heartbeat(CS1, START + 2 * i, BOOT_A, {})  # each beat ends a 2 s silence: offline, then back
    out = lv.transitions(START + 2 * MAX_PENDING_TRANSITIONS)
    assert len(out) == MAX_PENDING_TRANSITIONS
    assert out[-1] == (CS1, ONLINE, OFFLINE)


# ---- safe mode ----------------------------------------------------------------------------------


def test_a_new_leader_is_in_safe_mode_until_the_chunkservers_have_reported() -> None:
    lv = _liveness()
    expected = [CS1, CS2]
    assert lv.in_safe_mode(START, expected, timeout_s=300)
    lv.heartbeat(CS1, START + 1, BOOT_A, {})
    lv.heartbeat(CS2, START + 1, BOOT_A, {})
    assert lv.in_safe_mode(START + 1, expected, timeout_s=300)  # heard, but no chunk reports yet
    lv.report_received(CS1)
    assert lv.in_safe_mode(START + 2, expected, timeout_s=300)
    lv.report_received(CS2)
    assert not lv.in_safe_mode(START + 3, expected, timeout_s=300)
    assert lv.safe_mode_ended_s == START + 3


def test_safe_mode_ends_at_99_percent_of_the_expected_chunkservers() -> None:
    lv = _liveness()
    expected = [CsId(i) for i in range(100)]
    for cs_id in expected[:98]:
        lv.heartbeat(cs_id, START + 1, BOOT_A, {})
        lv.report_received(cs_id)
    assert lv.in_safe_mode(START + 1, expected, timeout_s=300)
    lv.heartbeat(expected[98], START + 2, BOOT_A, {})
    lv.report_received(expected[98])
    assert not lv.in_safe_mode(START + 2, expected, timeout_s=300)


def test_a_ratio_is_taken_as_the_decimal_written() -> None:
    lv = _liveness()
    expected = [CsId(i) for i in range(100)]
    for cs_id in expected[:10]:
        lv.heartbeat(cs_id, START + 1, BOOT_A, {})
        lv.report_received(cs_id)
    assert not lv.in_safe_mode(START + 1, expected, ratio=0.1, timeout_s=300)


def test_a_report_without_a_heartbeat_does_not_end_safe_mode() -> None:
    lv = _liveness()
    lv.report_received(CS1)
    assert lv.in_safe_mode(START + 1, [CS1], timeout_s=300)


def test_safe_mode_ends_at_the_timeout_even_without_reports() -> None:
    lv = _liveness()
    assert lv.in_safe_mode(START + 299, [CS1, CS2], timeout_s=300)
    assert not lv.in_safe_mode(START + 300, [CS1, CS2], timeout_s=300)


def test_no_expected_chunkservers_means_no_safe_mode() -> None:
    assert not _liveness().in_safe_mode(START, [], timeout_s=300)


def test_safe_mode_once_left_is_never_reentered() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {})
    lv.report_received(CS1)
    assert not lv.in_safe_mode(START + 1, [CS1], timeout_s=300)
    lv.heartbeat(CS1, START + 2, BOOT_B, {})  # a restart: its report is pending again
    assert lv.report_pending(CS1)
    assert not lv.in_safe_mode(START + 2, [CS1, CS2], timeout_s=300)


def test_a_restart_before_safe_mode_ends_needs_a_new_report() -> None:
    lv = _liveness()
    lv.heartbeat(CS1, START + 1, BOOT_A, {})
    lv.report_received(CS1)
    lv.heartbeat(CS1, START + 2, BOOT_B, {})
    assert lv.in_safe_mode(START + 2, [CS1], timeout_s=300)
    lv.report_received(CS1)
    assert not lv.in_safe_mode(START + 3, [CS1], timeout_s=300)
