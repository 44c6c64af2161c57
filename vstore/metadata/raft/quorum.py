"""Majority quorum arithmetic. Pure.

Kept apart from the core so it can be checked against a naive reference on random inputs
(tests/unit/raft/test_quorum.py), as etcd does for its quorum package.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping


class VoteResult(enum.Enum):
    PENDING = 0
    LOST = 1
    WON = 2


def majority(voter_count: int) -> int:
    """How many of ``voter_count`` voters make a quorum."""
    return voter_count // 2 + 1


def committed_index(voters: Collection[str], match_index: Mapping[str, int]) -> int:
    """The largest index that a majority of voters has durably stored (0 if unknown).

    Sort the voters' match indexes descending; the quorum-th largest is stored on at least
    a quorum. A voter missing from ``match_index`` counts as 0. No voters: 0 (nothing can
    commit). The caller still has to check the entry's term (paper §5.4.2).
    """
    if not voters:
        return 0
    matched = sorted((match_index.get(v, 0) for v in voters), reverse=True)
    return matched[majority(len(matched)) - 1]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> VoteResult:
    """WON once a majority granted, LOST once a majority can no longer grant, else PENDING."""
    if not voters:
        return VoteResult.WON  # an empty configuration is trivially won (etcd's convention)
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Collection[str], active: Collection[str]) -> bool:
    """Do the ``active`` nodes include a majority of ``voters``?"""
    return sum(1 for v in voters if v in active) >= majority(len(voters)) if voters else False
