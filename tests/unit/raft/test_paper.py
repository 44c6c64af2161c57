"""The Raft paper, section by section, on the pure core (after etcd's raft_paper_test.go).

Each test names the section of "In Search of an Understandable Consensus Algorithm"
(Ongaro & Ousterhout 2014) or of Ongaro's thesis it checks. Networks are driven by hand
(tests/harness/raftnet.py), so every interleaving is exact.
"""

from __future__ import annotations

import pytest

from tests.harness.raftnet import MT, Net
from vstore.metadata.raft.types import NotLeaderError, ProposalDropped, RaftConfig, Role
from vstore.wire.raft import ConfChange, ConfChangeType, Entry, RaftMessage


def three() -> Net:
    return Net(["a", "b", "c"])


# ---- §5.2 leader election -------------------------------------------------------------------

def test_5_2_a_follower_that_times_out_wins_an_election_through_pre_vote() -> None:
    """§5.2 + thesis §9.6: after an election timeout a follower pre-votes, then campaigns in
    term+1 and wins with a majority; the others follow it."""
    net = three()
    net.tick("a", 2 * net.config.election_tick)
    net.stabilize()
    assert net["a"].role is Role.LEADER and net["a"].term == 2
    assert all(net[n].leader == "a" and net[n].term == 2 for n in "bc")


def test_5_2_a_candidate_without_a_majority_does_not_become_leader() -> None:
    net = three()
    net.isolate("a")
    net["a"].campaign()
    net.stabilize()
    assert net["a"].role is Role.PRE_CANDIDATE


def test_9_6_pre_vote_keeps_an_isolated_nodes_term_from_growing() -> None:
    """A partitioned node that keeps timing out must not inflate its term, or it would
    depose the healthy leader when it comes back (thesis §9.6)."""
    net = three()
    net.elect("a")
    net.isolate("c")
    for _ in range(10):
        net.tick("c", 2 * net.config.election_tick)
        net.stabilize()
    assert net["c"].term == net["a"].term
    net.heal()
    net.tick_all(net.config.heartbeat_tick)
    net.stabilize()
    assert net["a"].role is Role.LEADER and net["c"].leader == "a"


def test_5_2_each_node_votes_for_at_most_one_candidate_per_term() -> None:
    net = three()
    vote = lambda frm: RaftMessage(type=MT.VOTE, to="c", frm=frm, term=5, index=3, log_term=1)  # noqa: E731
    net["c"].step(vote("a"))
    net["c"].step(vote("b"))
    net.process("c")
    replies = [(m.to, m.reject) for m in net.queue if m.type == MT.VOTE_RESP]
    assert replies == [("a", False), ("b", True)]
    assert net.nodes["c"].storage.hard_state.vote == "a"  # persisted with the reply


def test_5_4_1_a_candidate_with_a_less_up_to_date_log_is_refused() -> None:
    net = three()
    net.elect("a")
    net.cut("a", "c")
    net.propose("a", 1)
    net.stabilize()  # b has the entry, c does not
    net.isolate("a")
    net["c"].campaign()
    net.stabilize()
    assert net["c"].role is not Role.LEADER
    net["b"].campaign()
    net.stabilize()
    assert net["b"].role is Role.LEADER


def test_5_2_randomized_election_timeouts_differ_between_nodes() -> None:
    net = Net([f"n{i}" for i in range(5)])
    timeouts = {net[n].randomized_election_timeout for n in net.nodes}
    assert len(timeouts) > 1
    assert all(net.config.election_tick <= t < 2 * net.config.election_tick for t in timeouts)


def test_leader_stickiness_ignores_votes_while_the_leader_is_alive() -> None:
    """A follower that heard from the leader within the election timeout ignores a higher
    term vote request (check-quorum lease): a flapping node cannot depose a good leader."""
    net = three()
    net.elect("a")
    net["b"].step(RaftMessage(type=MT.VOTE, to="b", frm="c", term=9, index=99, log_term=9))
    net.process("b")
    assert net["b"].term == 2 and not [m for m in net.queue if m.type == MT.VOTE_RESP]


# ---- §5.3 log replication ------------------------------------------------------------------------

def test_5_3_an_entry_commits_once_a_majority_stores_it_and_is_applied_everywhere() -> None:
    net = three()
    net.elect("a")
    net.cut("a", "c")
    index = net.propose("a", 7)
    net.stabilize()
    assert net["a"].log.committed >= index and net.values("a") == (7,) and net.values("b") == (7,)
    net.heal()
    net.tick("a")
    net.stabilize()
    assert net.values("c") == (7,)


def test_5_3_the_leader_counts_its_own_entry_only_once_it_is_durable() -> None:
    """RAFT.md §4.4: never count the leader in the quorum before its own write. With one
    follower acking, nothing may commit while the leader's entry is not yet persisted."""
    net = three()
    net.elect("a")
    index = net.propose("a", 1)
    core = net["a"]
    assert core.progress["a"].match_index < index  # proposed, not yet durable
    rd = core.ready()
    assert rd.entries[-1].index == index
    # the follower's ack arrives before the leader persisted (a fast follower):
    core.step(RaftMessage(type=MT.APP_RESP, to="a", frm="b", term=core.term, index=index))
    assert core.log.committed < index
    net.nodes["a"].storage.append(rd.entries)
    core.advance(rd)
    assert core.log.committed == index


def test_5_3_a_follower_truncates_only_a_conflicting_suffix() -> None:
    net = three()
    net.elect("a")
    net.filter = lambda m: m.type != MT.APP_RESP  # b stores the entries, nothing commits
    net.cut("a", "c")
    for v in (1, 2, 3):
        net.propose("a", v)
    net.stabilize()
    core = net["b"]
    assert core.log.committed < core.log.last_index() - 2
    last = core.log.last_index()
    term = core.term
    old = core.log.slice(last - 2, last + 1)
    # a stale, duplicated append for an earlier prefix must not truncate anything
    core.step(RaftMessage(type=MT.APP, to="b", frm="a", term=term, index=last - 3, log_term=old[0].term,
                          entries=(old[0],), commit=0))
    assert core.log.last_index() == last
    # a new leader's conflicting entry at the last index replaces only the suffix
    new = Entry.make(last, term + 1, b"other")
    core.step(RaftMessage(type=MT.APP, to="b", frm="c", term=term + 1, index=last - 1, log_term=old[1].term,
                          entries=(new,), commit=0))
    assert core.log.last_index() == last and core.log.term(last) == term + 1 and core.log.term(last - 1) == term


def test_5_3_a_diverged_follower_converges_to_the_leaders_log() -> None:
    net = Net(["a", "b", "c", "d", "e"])
    net.elect("a")
    net.isolate("a")
    for v in range(1, 30):
        net.propose("a", v)  # uncommittable: a is alone
    net.stabilize()
    net.heal()
    net.isolate("a")
    net.elect("b")
    for v in range(100, 105):
        net.propose("b", v)
    net.stabilize()
    net.heal()
    net.tick_all(net.config.election_tick)
    net.stabilize()
    assert net.leader() == "b"
    assert all(net.log_terms(n) == net.log_terms("b") for n in "acde")
    assert net.values("a") == net.values("b") == tuple(range(100, 105))


def test_5_3_reordered_and_duplicated_responses_never_move_match_index_back() -> None:
    net = three()
    net.elect("a")
    for v in (1, 2, 3):
        net.propose("a", v)
    net.stabilize()
    core = net["a"]
    match = core.progress["b"].match_index
    core.step(RaftMessage(type=MT.APP_RESP, to="a", frm="b", term=core.term, index=match - 2))
    core.step(RaftMessage(type=MT.APP_RESP, to="a", frm="b", term=core.term, index=match - 3, reject=True,
                          reject_hint=1))
    assert core.progress["b"].match_index == match and core.progress["b"].next_index > match


def test_an_append_with_a_corrupt_entry_is_dropped_and_never_stored() -> None:
    net = three()
    net.elect("a")
    core = net["b"]
    last = core.log.last_index()
    good = Entry.make(last + 1, core.term, b"payload")
    bad = Entry(good.index, good.term, good.type, b"paylaod", good.checksum)
    core.step(RaftMessage(type=MT.APP, to="b", frm="a", term=core.term, index=last, log_term=core.log.last_term(),
                          entries=(bad,), commit=0))
    assert core.log.last_index() == last and core.status().dropped_corrupt_messages == 1


# ---- §5.4.2 committing entries from previous terms (Figure 8) --------------------------------------

def test_5_4_2_figure_8_an_old_term_entry_is_not_committed_by_counting_replicas() -> None:
    """Figure 8: an entry of an earlier term that a new leader finds on a majority must
    not be committed by counting replicas (another candidate could still win and overwrite
    it); it is committed only together with an entry of the leader's own term."""
    net = Net(["s1", "s2", "s3", "s4", "s5"])
    net.elect("s1")                                    # term 2
    net.filter = lambda m: not (m.type == MT.APP and m.to != "s2")
    old = net.propose("s1", 1)                          # (old, 2) reaches s2 only
    net.stabilize()
    net.filter = lambda m: m.type != MT.APP            # nothing replicates from here
    net.crash("s1")
    net.restart("s1")
    net.elect("s1")                                     # term 3; its no-op stays local
    core = net["s1"]
    assert core.term == 3 and core.log.term(old) == 2 and core.log.committed < old
    last = core.log.last_index()
    for follower in ("s2", "s3"):                       # (old, 2) is now on s1, s2, s3
        core.step(RaftMessage(type=MT.APP_RESP, to="s1", frm=follower, term=3, index=old))
    assert core.log.committed < old, "an old-term entry was committed by counting replicas"
    for follower in ("s2", "s3"):                       # the term-3 no-op reaches a majority
        core.step(RaftMessage(type=MT.APP_RESP, to="s1", frm=follower, term=3, index=last))
    assert core.log.committed == last


# ---- §6 / thesis §4 membership changes ------------------------------------------------------------

def test_membership_a_new_member_joins_as_a_learner_catches_up_and_is_promoted() -> None:
    net = Net(["a", "b", "c", "d"], members=["a", "b", "c"])
    net.elect("a")
    for v in (1, 2, 3):
        net.propose("a", v)
    net.stabilize()
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id="d", address="addr-d"))
    net.stabilize()
    net.tick("a")
    net.stabilize()
    assert "d" in net["a"].learners and net.values("d") == (1, 2, 3)
    assert net["a"].progress["d"].is_learner
    # a learner never campaigns and is not counted
    net.tick("d", 5 * net.config.election_tick)
    net.stabilize()
    assert net["d"].role is Role.FOLLOWER and net["a"].role is Role.LEADER
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.PROMOTE, node_id="d"))
    net.stabilize()
    assert net["a"].voters == ("a", "b", "c", "d") and net["d"].voters == ("a", "b", "c", "d")


def test_membership_only_one_change_may_be_pending_at_a_time() -> None:
    net = Net(["a", "b", "c", "d", "e"], members=["a", "b", "c"])
    net.elect("a")
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id="d", address="addr-d"))
    with pytest.raises(ProposalDropped, match="still pending"):
        net["a"].propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id="e", address="addr-e"))
    net.stabilize()
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.ADD_LEARNER, node_id="e", address="addr-e"))


def test_membership_no_change_before_the_new_leaders_no_op_commits() -> None:
    """The single-server change bug (Ongaro, raft-dev 2015): a new leader must commit an
    entry of its own term before it may change the configuration."""
    net = three()
    net.filter = lambda m: m.type != MT.APP  # the no-op cannot replicate
    net.elect("a")
    with pytest.raises(ProposalDropped, match="not committed an entry of its term"):
        net["a"].propose_conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id="c"))
    net.filter = None
    net.tick("a")
    net.stabilize()
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id="c"))


def test_membership_a_removed_leader_steps_down_and_the_rest_elect_a_new_one() -> None:
    net = three()
    net.elect("a")
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id="a"))
    net.stabilize()
    assert net["a"].role is Role.FOLLOWER
    assert net["b"].voters == ("b", "c")
    assert net.run_until_leader() in ("b", "c")


def test_membership_a_removed_node_cannot_disrupt_the_cluster() -> None:
    net = three()
    net.elect("a")
    net["a"].propose_conf_change(ConfChange(type=ConfChangeType.REMOVE, node_id="c"))
    net.stabilize()
    term = net["a"].term
    net["c"].campaign()  # it may still believe it is a voter if it missed the change
    net.stabilize()
    net.tick("c", 5 * net.config.election_tick)
    net.stabilize()
    assert net["a"].role is Role.LEADER and net["a"].term == term


def test_membership_bootstrap_members_cannot_be_proposed_as_voters_directly() -> None:
    net = three()
    net.elect("a")
    with pytest.raises(ProposalDropped, match="learners first"):
        net["a"].propose_conf_change(ConfChange(type=ConfChangeType.ADD_VOTER, node_id="z", address="addr-z"))


# ---- §7 log compaction and InstallSnapshot -----------------------------------------------------------

def test_7_a_follower_behind_the_compaction_point_catches_up_by_snapshot() -> None:
    net = three()
    net.elect("a")
    net.isolate("c")
    for v in range(1, 20):
        net.propose("a", v)
    net.stabilize()
    node = net.nodes["a"]
    node.storage.compact(node.sm.applied)
    net.heal()
    net.tick("a")
    net.stabilize()
    net.tick("a")
    net.stabilize()
    assert net.values("c") == tuple(range(1, 20))
    assert net.nodes["c"].storage.compacted_index >= 19
    net.propose("a", 99)
    net.stabilize()
    assert net.values("c")[-1] == 99


def test_7_an_older_snapshot_is_never_installed_over_newer_state() -> None:
    net = three()
    net.elect("a")
    for v in (1, 2):
        net.propose("a", v)
    net.stabilize()
    core = net["b"]
    committed = core.log.committed
    stale = net.nodes["a"].storage.snapshot_meta()
    from vstore.wire.raft import SnapshotMeta
    older = SnapshotMeta(index=committed - 2, term=2, conf_state=stale.conf_state)
    core.step(RaftMessage(type=MT.SNAP, to="b", frm="a", term=core.term, snapshot=older))
    rd = core.ready()
    assert rd.snapshot is None and core.log.committed == committed


# ---- check-quorum, transfers, reads ------------------------------------------------------------------

def test_check_quorum_a_leader_cut_off_from_the_majority_steps_down() -> None:
    net = three()
    net.elect("a")
    net.isolate("a")
    # peers heard from in the last check window count once more: at most two timeouts
    net.tick("a", 2 * net.config.election_tick)
    net.stabilize()
    assert net["a"].role is Role.FOLLOWER


def test_a_stale_leader_learns_the_new_term_from_a_rejection_and_steps_down() -> None:
    net = three()
    net.elect("a")
    net.isolate("a")
    net.elect("b")
    net.heal()
    net.tick("a")  # a sends heartbeats of its old term
    net.stabilize()
    assert net["a"].role is Role.FOLLOWER and net["a"].term == net["b"].term


def test_leadership_transfer_to_a_caught_up_follower() -> None:
    net = three()
    net.elect("a")
    net.propose("a", 1)
    net.stabilize()
    net["a"].transfer_leader("b")
    with pytest.raises(ProposalDropped, match="transferred"):
        net.propose("a", 2)
    net.stabilize()
    assert net["b"].role is Role.LEADER and net["a"].leader == "b"


def test_leadership_transfer_to_a_lagging_follower_catches_it_up_first() -> None:
    net = three()
    net.elect("a")
    net.cut("a", "c")
    for v in (1, 2, 3):
        net.propose("a", v)
    net.stabilize()
    net.heal()
    net["a"].transfer_leader("c")
    net.stabilize()
    assert net["c"].role is Role.LEADER and net.values("c") == (1, 2, 3)


def test_read_index_is_served_after_a_quorum_confirms_leadership() -> None:
    net = three()
    net.elect("a")
    net.propose("a", 5)
    net.stabilize()
    net["a"].read_index(b"r1")
    net.stabilize()
    reads = net.nodes["a"].read_states
    assert reads == [(net["a"].log.committed, b"r1")]


def test_a_partitioned_leader_never_answers_a_read_index() -> None:
    """RAFT.md §4.4: reads served by a deposed leader are stale; without a quorum's
    heartbeat acknowledgement there is no answer at all (the client times out)."""
    net = three()
    net.elect("a")
    net.isolate("a")
    net["a"].read_index(b"r1")
    for _ in range(3):
        net.tick("a")
        net.stabilize()
    assert net.nodes["a"].read_states == []


def test_a_follower_read_goes_through_the_leader() -> None:
    net = three()
    net.elect("a")
    net.propose("a", 5)
    net.stabilize()
    net["c"].read_index(b"f1")
    net.stabilize()
    assert net.nodes["c"].read_states == [(net["a"].log.committed, b"f1")]


def test_a_new_leader_answers_reads_only_after_its_no_op_commits() -> None:
    """§6.4 / §8: until its no-op commits, a new leader's commit index may lag entries
    committed by its predecessor, so a read index taken then could be stale."""
    net = three()
    net.elect("a")
    net.propose("a", 1)
    net.stabilize()
    net.filter = lambda m: m.type != MT.APP
    net.isolate("a")
    net.elect("b")
    net.heal()
    net["b"].read_index(b"early")
    net.stabilize()
    assert net.nodes["b"].read_states == []  # held back: the no-op has not committed
    net.filter = None
    net.tick("b")
    net.stabilize()
    core = net["b"]
    assert net.nodes["b"].read_states == [(core.log.committed, b"early")]
    assert core.log.term(core.log.committed) == core.term


def test_proposals_on_a_follower_name_the_leader() -> None:
    net = three()
    net.elect("a")
    with pytest.raises(NotLeaderError) as info:
        net.propose("b", 1)
    assert info.value.leader == "a"


def test_lease_reads_need_check_quorum() -> None:
    with pytest.raises(ValueError):
        RaftConfig(lease_reads=True, check_quorum=False)


# ---- restarts ------------------------------------------------------------------------------------

def test_a_restarted_node_never_reapplies_entries_it_applied() -> None:
    net = three()
    net.elect("a")
    for v in (1, 2, 3):
        net.propose("a", v)
    net.stabilize()
    applied = list(net.nodes["b"].applied_log)
    net.crash("b")
    net.restart("b")
    net.tick("a")
    net.stabilize()
    assert net.nodes["b"].applied_log == applied or net.nodes["b"].applied_log[:len(applied)] == applied
    assert net.values("b") == (1, 2, 3)


def test_a_voting_disabled_node_never_votes_or_campaigns() -> None:
    net = three()
    net.nodes["c"].config = RaftConfig(voting_disabled=True)
    net.crash("c")
    net.restart("c")
    net["c"].campaign()
    net.stabilize()
    assert net["c"].role is Role.FOLLOWER
    net.isolate("a")
    net["b"].campaign()
    net.stabilize()
    assert net["b"].role is not Role.LEADER  # c would not vote: b alone is no majority
