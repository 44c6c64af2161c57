"""The chunkserver: one file per chunk replica, and, as they land, the store (disk I/O),
chain replication, the scrubber, the MDS link and the CS process.

``chunkfile`` (pure) is the one reference for a replica file's bytes: header, checksum
table, block arithmetic and file names. Everything that touches a chunk file goes through it.
"""
