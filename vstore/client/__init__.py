"""The vstore client library: the MDS link (leader discovery, retries, sessions), and, as
they land, the chunkserver link, file I/O with write-back and read-ahead, and caches."""
