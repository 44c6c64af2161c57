"""place_replicas on random clusters, against a brute-force reference."""

from __future__ import annotations

import random
from itertools import combinations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vstore.metadata.placement import (FULL_RATIO_MAX, CsId, CsState, CsStatus, ReplicaPolicy, distinct_hosts,
                                       place_replicas)

GIB = 1 << 30


@st.composite
def clusters(draw: st.DrawFn, *, racks: bool | None = None) -> list[CsState]:
    n = draw(st.integers(0, 12))
    labelled = draw(st.booleans()) if racks is None else racks
    hosts = [f"h{i}" for i in range(draw(st.integers(1, 7)))]
    rack_of = {h: f"r{draw(st.integers(0, 2))}" if labelled else "" for h in hosts}
    out = []
    for i in range(n):
        host = draw(st.sampled_from(hosts))
        capacity = draw(st.integers(1, 100)) * GIB
        used = draw(st.integers(0, capacity))
        status = draw(st.sampled_from(list(CsStatus)))
        out.append(CsState(CsId(i + 1), host, rack_of[host], status, capacity, used))
    return out


def _eligible(servers: list[CsState]) -> list[CsState]:
    return [cs for cs in servers if cs.status is CsStatus.ONLINE and cs.used_ratio < FULL_RATIO_MAX]


def _best_possible(servers: list[CsState], count: int, existing_hosts: set[str]) -> tuple[int, int]:
    """Brute force: the largest number of replicas on distinct new hosts, and the most
    distinct racks any such choice can reach."""
    eligible = [cs for cs in _eligible(servers) if cs.host not in existing_hosts]
    best = (0, 0)
    for k in range(min(count, len(eligible)), -1, -1):
        for combo in combinations(eligible, k):
            if len({cs.host for cs in combo}) == k:
                racks = len({cs.rack for cs in combo if cs.rack})
                best = max(best, (k, racks))
        if best[0] == k and k > 0:
            break
    return best


@settings(max_examples=400, deadline=None)
@given(servers=clusters(), count=st.integers(1, 5))
def test_placement_never_puts_two_replicas_on_one_host_nor_uses_an_ineligible_server(servers, count) -> None:
    placement = place_replicas(servers, count)
    chosen = [cs for cs in servers if cs.cs_id in placement.servers]
    assert distinct_hosts(servers, placement.servers)
    assert all(cs.accepts_new_replicas() for cs in chosen)
    assert len(placement.servers) <= count


@settings(max_examples=300, deadline=None)
@given(servers=clusters(), count=st.integers(1, 4))
def test_placement_reaches_as_many_hosts_and_racks_as_the_brute_force_reference(servers, count) -> None:
    placement = place_replicas(servers, count)
    chosen = [cs for cs in servers if cs.cs_id in placement.servers]
    best_count, best_racks = _best_possible(servers, count, set())
    assert len(chosen) == best_count
    assert len({cs.rack for cs in chosen if cs.rack}) == best_racks


@settings(max_examples=300, deadline=None)
@given(servers=clusters(), count=st.integers(1, 4), data=st.data())
def test_existing_replicas_hosts_are_never_reused(servers, count, data) -> None:
    holders = data.draw(st.lists(st.sampled_from([cs.cs_id for cs in servers]), unique=True, max_size=3)) \
        if servers else []
    placement = place_replicas(servers, count, existing=holders)
    used = {cs.host for cs in servers if cs.cs_id in holders}
    assert not used & {cs.host for cs in servers if cs.cs_id in placement.servers}
    assert not set(holders) & set(placement.servers)


@settings(max_examples=200, deadline=None)
@given(servers=clusters(), count=st.integers(1, 4), seed=st.integers(0, 1000))
def test_placement_is_deterministic_whatever_the_input_order(servers, count, seed) -> None:
    shuffled = list(servers)
    random.Random(seed).shuffle(shuffled)
    assert place_replicas(servers, count) == place_replicas(shuffled, count)


@settings(max_examples=300, deadline=None)
@given(servers=clusters(racks=False), count=st.integers(1, 4))
def test_the_first_replica_goes_to_the_writers_host_when_it_qualifies(servers, count) -> None:
    eligible = _eligible(servers)
    if not eligible:
        return
    writer = eligible[-1].host
    placement = place_replicas(servers, count, writer_host=writer)
    first = next(cs for cs in servers if cs.cs_id == placement.servers[0])
    assert first.host == writer


def test_most_free_space_wins_then_the_lowest_id() -> None:
    servers = [CsState(CsId(3), "a", "", CsStatus.ONLINE, 100, 10), CsState(CsId(1), "b", "", CsStatus.ONLINE, 100, 50),
               CsState(CsId(2), "c", "", CsStatus.ONLINE, 100, 10)]
    assert place_replicas(servers, 2).servers == (2, 3)


def test_planned_bytes_count_against_a_server() -> None:
    servers = [CsState(CsId(1), "a", "", CsStatus.ONLINE, 100, 0), CsState(CsId(2), "b", "", CsStatus.ONLINE, 100, 10)]
    assert place_replicas(servers, 1).servers == (1,)
    assert place_replicas(servers, 1, extra_used_bytes={CsId(1): 50}).servers == (2,)


@pytest.mark.parametrize("text,expected", [("3:2", (3, 2)), ("2", (2, 1)), ("1", (1, 1)), ("5:3", (5, 3))])
def test_replica_policies_parse(text: str, expected: tuple[int, int]) -> None:
    policy = ReplicaPolicy.parse(text)
    assert (policy.replicas, policy.min) == expected and str(policy) == f"{expected[0]}:{expected[1]}"


@pytest.mark.parametrize("text", ["0", "3:4", "x", "3:", "3:0", "17"])
def test_bad_replica_policies_are_refused_with_the_rule(text: str) -> None:
    with pytest.raises(ValueError, match="replicas="):
        ReplicaPolicy.parse(text)


def test_equally_free_servers_share_new_chunks_evenly() -> None:
    """Identical disks (or chunkservers sharing one file system): the choice among them is the
    chunk's own, so every server gets about its share, and a chunk always gets the same."""
    servers = [CsState(CsId(i), f"h{i}", "", CsStatus.ONLINE, 100 * GIB, 10 * GIB + i * 4096) for i in range(1, 7)]
    counts = dict.fromkeys(range(1, 7), 0)
    for chunk in range(3000):
        placement = place_replicas(servers, 3, salt=chunk)
        assert distinct_hosts(servers, placement.servers) and len(placement.servers) == 3
        assert place_replicas(servers, 3, salt=chunk).servers == placement.servers
        for cs in placement.servers:
            counts[cs] += 1
    assert all(1300 < n < 1700 for n in counts.values()), counts  # 1500 each, give or take
    # a clearly emptier server still comes first
    emptier = [*servers[:5], CsState(CsId(6), "h6", "", CsStatus.ONLINE, 100 * GIB, 1 * GIB)]
    assert all(place_replicas(emptier, 1, salt=c).servers == (6,) for c in range(50))
