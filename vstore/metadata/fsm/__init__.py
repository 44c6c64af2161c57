"""The metadata service's replicated state machine: ``schema`` (the LMDB layout, the one
reference), ``namespace`` (inodes, directory entries, symlinks: commands and reads)."""
