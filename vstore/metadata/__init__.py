"""The metadata service: Raft consensus (``raft/``), the replicated state machine, placement
and repair planning, and the MDS process."""
