"""The connection pool every process uses (app.db.create_pool), on real PostgreSQL."""

from __future__ import annotations

import asyncio
import itertools

from app import db


async def test_connections_go_to_callers_in_the_order_they_asked(database_url):
    """Twenty callers taking turns on two connections are served in the order they asked,
    give or take the two that found a connection free: a caller that gives a connection back
    and asks again waits behind those already waiting. asyncpg's own pool hands a released
    connection to whoever asks next, so a waiting caller can lose its turn again and again
    (there, some were served 17 places late)."""
    pool = await db.create_pool(database_url, size=2, application_name="test-db")
    tickets = itertools.count()
    served: list[int] = []

    async def caller() -> None:
        for _ in range(30):
            ticket = next(tickets)
            async with pool.acquire() as conn:
                served.append(ticket)
                await conn.fetchval("SELECT 1")

    try:
        # Both connections opened first: opening one takes a while, and the caller waiting on
        # that is overtaken by everyone the other connection serves meanwhile.
        opened = [await pool.acquire(), await pool.acquire()]
        for conn in opened:
            await pool.release(conn)
        await asyncio.gather(*(caller() for _ in range(20)))
        assert len(served) == 600
        assert max(place - ticket for place, ticket in enumerate(served)) <= 2
    finally:
        pool.terminate()  # close() would wait for connections a failed test still holds


async def test_a_caller_that_gives_up_waiting_leaves_its_turn_to_the_next(database_url):
    """An acquire that times out (or is cancelled) while waiting takes nothing with it: the
    connection goes to the next caller, and the pool's size is still its size."""
    pool = await db.create_pool(database_url, size=2, application_name="test-db")
    try:
        held = [await pool.acquire(), await pool.acquire()]
        gives_up = asyncio.ensure_future(pool.acquire(timeout=0.05))
        patient = asyncio.ensure_future(pool.acquire())
        await asyncio.sleep(0.01)
        try:
            await gives_up
        except TimeoutError:
            pass
        else:
            raise AssertionError("the acquire did not time out")
        await pool.release(held.pop())
        got = await asyncio.wait_for(patient, 1)
        for conn in (got, *held):
            await pool.release(conn)
        together = await asyncio.wait_for(asyncio.gather(pool.acquire(), pool.acquire()), 1)
        assert len({id(conn) for conn in together}) == 2
        for conn in together:
            await pool.release(conn)
    finally:
        pool.terminate()  # close() would wait for connections a failed test still holds
