"""Metadata writers for the MDS crash tests: one task per (link, writer), each running its
``step`` for n = 0, 1, ... on exactly-once lanes until stopped. Any error is a failure of the
invariant under test (the client must ride through the fault): it is kept and reported by
``until`` and ``stop``. Subclasses record what was acknowledged and say how much (``count``)."""

from __future__ import annotations

import asyncio
import itertools

from tests.harness.wait import wait_for
from vstore.client.mds_link import MdsLink


class WriterLoad:
    def __init__(self, links: list[MdsLink], directory: int, writers_per_link: int = 4) -> None:
        self.directory = directory
        self.errors: list[BaseException] = []
        self._stop = asyncio.Event()
        self._tasks = [asyncio.create_task(self._writer(link, f"{i}-{j}"))
                       for i, link in enumerate(links) for j in range(writers_per_link)]

    async def step(self, link: MdsLink, name: str, n: int) -> None:
        raise NotImplementedError

    def count(self) -> int:
        """Operations acknowledged so far."""
        raise NotImplementedError

    async def _writer(self, link: MdsLink, name: str) -> None:
        try:
            for n in itertools.count():
                if self._stop.is_set():
                    return
                await self.step(link, name, n)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.errors.append(exc)
            raise

    async def until(self, count: int, timeout_s: float = 60.0) -> None:
        await wait_for(lambda: self.count() >= count or self.errors, timeout_s=timeout_s,
                       what=lambda: f"{count} acknowledged operations (have {self.count()})")
        assert not self.errors, f"a writer failed: {self.errors[0]!r}"

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        assert not self.errors, f"a writer failed: {self.errors[0]!r}"
