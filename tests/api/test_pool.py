"""The work pool: bounded, fails fast when full, never loses count of running work."""

from __future__ import annotations

import asyncio
import threading

import pytest

from gateway.api.pool import WorkPool
from gateway.api.problems import Overloaded, RequestTimeout


def test_full_pool_refuses_and_timeouts_drop_queued_work() -> None:
    pool = WorkPool(1, 1)
    gate = threading.Event()
    ran: list[str] = []

    def blocked() -> str:
        gate.wait(10)
        ran.append("blocked")
        return "done"

    def queued() -> str:
        ran.append("queued")
        return "queued"

    async def go() -> None:
        first = asyncio.ensure_future(pool.run(blocked, 10))
        await asyncio.sleep(0.05)
        waiting = asyncio.ensure_future(pool.run(queued, 0.1))
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):  # one running + one waiting = full
            await pool.run(queued, 1)
        with pytest.raises(RequestTimeout, match="nothing ran"):
            await waiting
        assert pool.in_flight == 1
        with pytest.raises(RequestTimeout, match="nothing ran"):
            await pool.run(queued, 0.05)  # queued behind the first, then dropped too
        gate.set()
        assert await first == "done"
        await asyncio.sleep(0.05)
        assert pool.in_flight == 0

    asyncio.run(go())
    pool.shutdown()
    assert ran == ["blocked"]  # the dropped work never ran


def test_timed_out_running_work_keeps_its_slot() -> None:
    pool = WorkPool(1, 0)
    gate = threading.Event()

    async def go() -> None:
        with pytest.raises(RequestTimeout, match="goes on running"):
            await pool.run(lambda: gate.wait(10), 0.05)
        assert pool.in_flight == 1
        with pytest.raises(Overloaded):
            await pool.run(lambda: None, 1)
        gate.set()
        await asyncio.sleep(0.1)
        assert pool.in_flight == 0
        assert await pool.run(lambda: 7, 1) == 7

    asyncio.run(go())
    pool.shutdown()
