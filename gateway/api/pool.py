"""A bounded pool for the blocking work behind a request (DuckDB, SQLite, sqlglot).

The event loop must never run a query: one slow query would stall every other
client, health checks included.  Work goes to a fixed set of threads; up to
``queue`` more requests wait their turn, and past that a request is refused at
once with 503 + ``Retry-After`` rather than piling up until everything times
out.  Capacity counts work that is still *running*, including work whose
caller already gave up on a timeout, because a thread cannot be killed: a
timed-out query still occupies its worker until the engine's own time limit
interrupts it.  Work that times out before a worker picked it up is dropped,
so it neither runs nor charges.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from gateway.api.problems import Overloaded, RequestTimeout

T = TypeVar("T")


class WorkPool:
    """``workers`` threads, ``queue`` waiting places, a timeout per request."""

    def __init__(self, workers: int, queue: int, *, retry_after_s: int = 1) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers must be >= 1 and queue >= 0")
        self.workers = workers
        self.capacity = workers + queue
        self.retry_after_s = retry_after_s
        self._executor = ThreadPoolExecutor(max_workers=workers,
                                            thread_name_prefix="gateway-work")
        self._in_flight = 0  # touched only on the event loop thread

    @property
    def in_flight(self) -> int:
        return self._in_flight

    async def run(self, fn: Callable[[], T], timeout_s: float | None) -> T:
        """Run ``fn`` on a worker; Overloaded when full, RequestTimeout after ``timeout_s``."""
        if self._in_flight >= self.capacity:
            raise Overloaded(
                f"all {self.workers} workers are busy and {self.capacity - self.workers} "
                "requests are already waiting",
                hint="retry after the delay in Retry-After", retry_after_s=self.retry_after_s)
        loop = asyncio.get_running_loop()
        work = self._executor.submit(contextvars.copy_context().run, fn)
        self._in_flight += 1
        work.add_done_callback(lambda _: self._done_threadsafe(loop))
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(work)), timeout_s)
        except TimeoutError:
            if work.cancel():  # still queued: dropped before it touched anything
                raise RequestTimeout(
                    f"the request waited {timeout_s:g} s for a worker and was dropped; "
                    "nothing ran and nothing was charged",
                    hint="retry after the delay in Retry-After",
                    retry_after_s=self.retry_after_s) from None
            raise RequestTimeout(
                f"the request did not finish within {timeout_s:g} s; it goes on running",
                hint="retry with the same Idempotency-Key to collect the answer once it is "
                "ready (it will not be charged twice), or narrow the query",
                retry_after_s=self.retry_after_s) from None

    def _done_threadsafe(self, loop: asyncio.AbstractEventLoop) -> None:
        with contextlib.suppress(RuntimeError):  # a closed loop: the server is gone
            loop.call_soon_threadsafe(self._done)

    def _done(self) -> None:
        self._in_flight -= 1

    def shutdown(self) -> None:
        """Let running work finish (each is bounded by the engine's time limit)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
