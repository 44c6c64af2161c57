"""Quorum arithmetic against a naive reference on random inputs (etcd's quorum tests)."""

from __future__ import annotations

from itertools import combinations

from hypothesis import given
from hypothesis import strategies as st

from vstore.metadata.raft import quorum

VOTERS = st.lists(st.sampled_from([f"n{i}" for i in range(9)]), min_size=1, max_size=9, unique=True)


def _naive_committed(voters: list[str], match: dict[str, int]) -> int:
    """The largest index stored on some majority: try every subset."""
    need = len(voters) // 2 + 1
    best = 0
    for group in combinations(voters, need):
        best = max(best, min(match.get(v, 0) for v in group))
    return best


@given(voters=VOTERS, data=st.data())
def test_committed_index_equals_the_naive_majority_reference(voters, data) -> None:
    match = {v: data.draw(st.integers(0, 20)) for v in voters if data.draw(st.booleans())}
    assert quorum.committed_index(voters, match) == _naive_committed(voters, match)


@given(voters=VOTERS, data=st.data())
def test_vote_result_equals_the_naive_reference(voters, data) -> None:
    votes = {v: data.draw(st.booleans()) for v in voters if data.draw(st.booleans())}
    granted = sum(votes.get(v) is True for v in voters)
    undecided = sum(v not in votes for v in voters)
    need = len(voters) // 2 + 1
    expected = (quorum.VoteResult.WON if granted >= need else
                quorum.VoteResult.PENDING if granted + undecided >= need else quorum.VoteResult.LOST)
    assert quorum.vote_result(voters, votes) == expected


def test_no_voters_commit_nothing() -> None:
    assert quorum.committed_index([], {"a": 5}) == 0
    assert not quorum.has_quorum([], {"a"})
