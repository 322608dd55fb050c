"""Natural batching of database writes: the first write goes out at once; writes that arrive
while one is in flight go together in the next statement. No added latency when idle, one
statement (and one commit) for many items under load."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class Batcher(Generic[T, R]):
    def __init__(self, write: Callable[[list[T]], Awaitable[list[R]]], *, max_batch: int = 500) -> None:
        """`write` takes a batch and returns one result per item, in the same order."""
        self._write = write
        self._max_batch = max_batch
        self._waiting: list[tuple[T, asyncio.Future[R]]] = []
        self._writing = False
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, item: T) -> R:
        """The item's result, once the batch it joined is written (or that write's error)."""
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, done))
        if not self._writing:
            self._writing = True
            self._writer = asyncio.create_task(self._write_while_waiting())  # keep a reference
        return await done

    async def _write_while_waiting(self) -> None:
        try:
            while self._waiting:
                await asyncio.sleep(0)  # let items submitted in this same tick join the batch
                batch = self._waiting[: self._max_batch]
                del self._waiting[: self._max_batch]
                try:
                    results = await self._write([item for item, _ in batch])
                except Exception as exc:
                    for _, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                    continue
                for (_, done), result in zip(batch, results, strict=True):
                    if not done.done():
                        done.set_result(result)
        finally:
            self._writing = False
