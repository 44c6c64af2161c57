"""plan_repairs on random clusters: safety of every job, budgets, urgency order, brakes,
a naive reference for the classification, and convergence when the jobs are carried out."""

from __future__ import annotations

import dataclasses
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from vstore.metadata.placement import ChunkId, CsId, CsState, CsStatus, ReplicaPolicy
from vstore.metadata.repair import (ChunkState, JobKind, Limits, Replica, Urgency, classify, good_replicas,
                                    plan_repairs)

GIB = 1 << 30


@st.composite
def scenarios(draw: st.DrawFn, *, statuses: list[CsStatus] | None = None):
    n_servers = draw(st.integers(1, 9))
    hosts = [f"h{i}" for i in range(draw(st.integers(1, 7)))]
    servers = []
    for i in range(n_servers):
        capacity = 100 * GIB
        servers.append(CsState(CsId(i + 1), draw(st.sampled_from(hosts)), "", draw(st.sampled_from(statuses or list(CsStatus))),
                               capacity, draw(st.integers(0, 95)) * GIB))
    chunks = []
    for c in range(draw(st.integers(0, 15))):
        version = draw(st.integers(1, 5))
        holders = draw(st.lists(st.sampled_from([cs.cs_id for cs in servers]), unique=True, max_size=5))
        replicas = tuple(Replica(h, draw(st.sampled_from([version, version, version, version - 1])),
                                 draw(st.booleans()) and draw(st.booleans())) for h in holders)
        policy = draw(st.sampled_from([ReplicaPolicy(3, 2), ReplicaPolicy(2, 1), ReplicaPolicy(1, 1), ReplicaPolicy(4, 2)]))
        chunks.append(ChunkState(ChunkId(c + 1), version, 64 << 20, policy, replicas))
    return servers, chunks


def _naive_urgency(chunk: ChunkState, servers: dict[CsId, CsState]) -> Urgency | None:
    present = {CsStatus.ONLINE, CsStatus.OFFLINE, CsStatus.DRAINING}
    good = [r for r in chunk.replicas if r.version == chunk.version and not r.damaged
            and servers[r.cs_id].status in present]
    resident = [r for r in good if servers[r.cs_id].status != CsStatus.DRAINING]
    if len(good) == 1 and chunk.policy.replicas > 1:
        return Urgency.LAST_COPY
    if len(good) < chunk.policy.min:
        return Urgency.BELOW_MIN
    if len(good) < chunk.policy.replicas:
        return Urgency.BELOW_TARGET
    if len(resident) < chunk.policy.replicas:
        return Urgency.DRAINING
    if len({servers[r.cs_id].host for r in resident}) < len(resident):
        return Urgency.WRONG_DOMAIN
    if len(good) > chunk.policy.replicas:
        return Urgency.OVER_TARGET
    if len(good) < len(chunk.replicas):
        return Urgency.STALE
    return None


@settings(max_examples=400, deadline=None)
@given(scenario=scenarios())
def test_classification_matches_the_naive_reference(scenario) -> None:
    servers, chunks = scenario
    by_id = {cs.cs_id: cs for cs in servers}
    for chunk in chunks:
        if good_replicas(chunk, by_id):
            assert classify(chunk, by_id) == _naive_urgency(chunk, by_id)


@settings(max_examples=400, deadline=None)
@given(scenario=scenarios(), limits=st.builds(Limits, max_copies=st.integers(0, 10),
                                              max_copies_per_server=st.integers(1, 3),
                                              max_deletes=st.integers(0, 10), storm_offline_max=st.just(99)))
def test_every_job_is_safe_and_within_budget(scenario, limits: Limits) -> None:
    servers, chunks = scenario
    by_id = {cs.cs_id: cs for cs in servers}
    chunk_by_id = {c.chunk_id: c for c in chunks}
    plan = plan_repairs(chunks, servers, limits=limits)
    copies = [j for j in plan.jobs if j.kind is JobKind.COPY]
    deletes = [j for j in plan.jobs if j.kind is JobKind.DELETE]
    assert len(copies) <= limits.max_copies and len(deletes) <= limits.max_deletes
    load = Counter([j.target for j in copies] + [j.source for j in copies])
    assert all(n <= limits.max_copies_per_server for n in load.values())
    assert [j.urgency for j in copies] == sorted(j.urgency for j in copies), "urgency order"
    targets_by_chunk: dict[ChunkId, list[CsId]] = {}
    for job in copies:
        chunk = chunk_by_id[job.chunk_id]
        good = good_replicas(chunk, by_id)
        assert job.source in {r.cs_id for r in good}, "copy from a replica that is not good"
        assert by_id[job.source].status in (CsStatus.ONLINE, CsStatus.DRAINING)
        assert by_id[job.target].accepts_new_replicas(), "copy to an offline, draining or full server"
        # a draining server's copy is leaving, so its host may take the new one
        staying = [r for r in good if by_id[r.cs_id].status is not CsStatus.DRAINING]
        used_hosts = {by_id[r.cs_id].host for r in staying} | {by_id[t].host for t in targets_by_chunk.get(job.chunk_id, [])}
        assert by_id[job.target].host not in used_hosts, "two replicas on one host"
        targets_by_chunk.setdefault(job.chunk_id, []).append(job.target)
    for chunk in chunks:
        good = good_replicas(chunk, by_id)
        deleted = {j.target for j in deletes if j.chunk_id == chunk.chunk_id}
        remaining_good = [r for r in good if r.cs_id not in deleted]
        assert len(remaining_good) >= min(len(good), chunk.policy.replicas), "deleted a needed good replica"
        if deleted & {r.cs_id for r in good}:
            assert all(by_id[r.cs_id].status is not CsStatus.OFFLINE for r in good)


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_chunks_without_a_good_replica_are_reported_lost_and_never_copied(scenario) -> None:
    servers, chunks = scenario
    by_id = {cs.cs_id: cs for cs in servers}
    plan = plan_repairs(chunks, servers, limits=Limits(storm_offline_max=99))
    lost = {c.chunk_id for c in chunks if not good_replicas(c, by_id)}
    assert set(plan.lost) == lost
    assert not {j.chunk_id for j in plan.jobs if j.kind is JobKind.COPY} & lost


@settings(max_examples=200, deadline=None)
@given(scenario=scenarios())
def test_the_storm_brake_stops_everything_when_more_than_two_servers_are_down(scenario) -> None:
    servers, chunks = scenario
    down = sum(cs.status in (CsStatus.OFFLINE, CsStatus.FAILED) for cs in servers)
    plan = plan_repairs(chunks, servers)
    if down > 2:
        assert plan.storm_brake and plan.jobs == ()
    else:
        assert not plan.storm_brake


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios())
def test_safe_mode_plans_nothing(scenario) -> None:
    servers, chunks = scenario
    plan = plan_repairs(chunks, servers, safe_mode=True)
    assert plan.safe_mode and plan.jobs == ()


@settings(max_examples=100, deadline=None)
@given(scenario=scenarios(statuses=[CsStatus.ONLINE, CsStatus.ONLINE, CsStatus.FAILED, CsStatus.DRAINING]))
def test_carrying_out_the_plans_converges_to_full_health(scenario) -> None:
    """Every round's jobs succeed; after enough rounds no chunk needs anything that the
    cluster can give it."""
    servers, chunks = scenario
    servers = [dataclasses.replace(cs, used_bytes=0) for cs in servers]
    by_id = {cs.cs_id: cs for cs in servers}
    for _ in range(40):
        plan = plan_repairs(chunks, servers, limits=Limits(max_copies=8, max_copies_per_server=2, storm_offline_max=99))
        if not plan.jobs:
            break
        updated = []
        for chunk in chunks:
            replicas = list(chunk.replicas)
            for job in plan.jobs:
                if job.chunk_id != chunk.chunk_id:
                    continue
                if job.kind is JobKind.COPY:
                    replicas.append(Replica(job.target, chunk.version))
                else:
                    replicas = [r for r in replicas if r.cs_id != job.target]
            updated.append(dataclasses.replace(chunk, replicas=tuple(replicas)))
        chunks = updated
    else:
        raise AssertionError("still planning after 40 rounds")
    hosts_available = {cs.host for cs in servers if cs.accepts_new_replicas()}
    for chunk in chunks:
        good = good_replicas(chunk, by_id)
        if not good:
            continue
        resident_hosts = {by_id[r.cs_id].host for r in good if by_id[r.cs_id].status is CsStatus.ONLINE}
        reachable = min(chunk.policy.replicas, len(hosts_available | resident_hosts))
        assert len(resident_hosts) >= reachable, (chunk, plan)


def test_the_last_copy_is_repaired_before_a_chunk_below_target() -> None:
    servers = [CsState(CsId(i), f"h{i}", "", CsStatus.ONLINE, 100 * GIB, 0) for i in range(1, 6)]
    below_target = ChunkState(ChunkId(1), 1, 1, ReplicaPolicy(3, 2), (Replica(CsId(1), 1), Replica(CsId(2), 1)))
    last_copy = ChunkState(ChunkId(2), 1, 1, ReplicaPolicy(3, 2), (Replica(CsId(3), 1),))
    plan = plan_repairs([below_target, last_copy], servers, limits=Limits(max_copies=1))
    assert [(j.chunk_id, j.urgency) for j in plan.jobs] == [(2, Urgency.LAST_COPY)]
    assert plan.backlog == {Urgency.LAST_COPY: 1, Urgency.BELOW_TARGET: 1}
