"""The background scrubber: re-reads every replica against its checksums at a bounded rate
(RELIABILITY.md F11: "the scrubber finds the flip with no client read").

One pass walks the replicas the store lists, checks each with ``ChunkStore.scrub_one`` in
the disk executor, and sleeps after each replica for as long as its bytes take at
``rate_bytes_per_s`` (so scrubbing never takes more than that share of the disk). A replica
with a bad block or a bad header is reported to the MDS through ``on_damage``; the MDS drops
it when another good replica exists and rebuilds the chunk. A rate of 0 turns it off.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from vstore.chunkserver.store import ChunkStore
from vstore.errors import NotFound, VStoreError

log = logging.getLogger(__name__)


class Scrubber:
    def __init__(self, store: ChunkStore, disk: Callable[..., Awaitable[Any]], *, rate_bytes_per_s: int,
                 on_damage: Callable[[int, int, str], Awaitable[None]], pass_pause_s: float = 60.0) -> None:
        self.store = store
        self._disk = disk
        self.rate_bytes_per_s = rate_bytes_per_s
        self.on_damage = on_damage
        self.pass_pause_s = pass_pause_s
        self.stats = {"passes": 0, "replicas_checked": 0, "bytes_checked": 0, "damaged_found": 0}

    async def run(self) -> None:
        while True:
            if self.rate_bytes_per_s <= 0:
                await asyncio.sleep(self.pass_pause_s)
                continue
            await self.one_pass()
            await asyncio.sleep(self.pass_pause_s)

    async def one_pass(self) -> int:
        """Check every replica once; returns how many were found damaged."""
        found = 0
        for replica in await self._disk(self.store.list_chunks):
            if replica.damaged:
                continue  # known already (and reported when it was found)
            reason = ""
            try:
                bad = await self._disk(self.store.scrub_one, replica.chunk_id)
                if bad:
                    reason = f"blocks {bad[:8]} fail their checksums"
            except NotFound:
                continue  # deleted meanwhile
            except VStoreError as exc:
                reason = f"{type(exc).__name__}: {exc.message}"
            self.stats["replicas_checked"] += 1
            self.stats["bytes_checked"] += replica.length_bytes
            if reason:
                found += 1
                self.stats["damaged_found"] += 1
                log.warning("cs.scrub_damage", extra={"chunk": replica.chunk_id, "version": replica.version,
                                                      "reason": reason})
                await self.on_damage(replica.chunk_id, replica.version, reason)
            if self.rate_bytes_per_s > 0:
                await asyncio.sleep(replica.length_bytes / self.rate_bytes_per_s)
        self.stats["passes"] += 1
        return found
