"""Transactions from asyncio (kvstore.aio): atransaction, atransact, aincr,
aupdate, acompare_and_set, without and with the write-ahead log."""

import asyncio

import pytest

import kvstore
import kvstore.aio
from kvstore import MISSING, ConflictError, NestedTransactionError
from test_aio import Ticker, WriteLock


@pytest.fixture(params=[False, True], ids=["lmdb", "wal"])
def wal(request):
    return request.param


def run(main, store_path, wal):
    async def opened():
        async with kvstore.aio.open(store_path, wal=wal) as db:
            return await main(db)

    return asyncio.run(opened())


def test_increments_from_many_tasks_and_threads_end_at_their_sum(store_path, wal):
    async def main(db):
        async def task():
            for _ in range(40):
                await db.aincr("counter")

        thread = asyncio.to_thread(lambda: [db.store.incr("counter") for _ in range(40)])
        await asyncio.gather(thread, *(task() for _ in range(4)))
        return await db.aget("counter")

    assert run(main, store_path, wal) == 200


def test_an_async_transaction_commits_reads_its_writes_and_conflicts(store_path, wal):
    async def main(db):
        await db.aput("meta", {"events": []}, durable=True)
        async with db.atransaction() as tx:
            meta = tx.get("meta")
            meta["events"].append("e1")
            tx.put("meta", meta)
            tx.put("m1", "hello", namespace="messages")
            assert tx.get("meta") == {"events": ["e1"]}
        assert await db.aget("meta") == {"events": ["e1"]}
        with pytest.raises(ConflictError) as caught:
            async with db.atransaction() as tx:
                tx.get("meta")
                await db.aput("meta", {}, durable=True)
                tx.put("x", 1)
        assert caught.value.keys == [("default", b"meta")] and await db.aget("x") is None
        with pytest.raises(RuntimeError):
            async with db.atransaction() as tx:
                tx.put("x", 1)
                raise RuntimeError("discard")
        assert await db.aget("x") is None
        return (await db.anamespace("messages")).store.get("m1")

    assert run(main, store_path, wal) == "hello"


def test_atransact_takes_a_coroutine_function_and_retries_it(store_path, wal):
    async def main(db):
        runs = []

        async def fn(tx):
            runs.append(1)
            value = tx.get("k", 0)
            await asyncio.sleep(0)
            if len(runs) == 1:
                await db.aput("k", 10, durable=True)  # a conflict on the first run
            tx.put("k", value + 1)
            return value + 1

        assert await db.atransact(fn) == 11
        assert len(runs) == 2
        with pytest.raises(ConflictError, match="2 runs"):
            async def always(tx):
                tx.get("k")
                await db.aput("k", len(runs), durable=True)
                runs.append(1)
                tx.put("y", 1)
            await db.atransact(always, retries=1)
        return await db.aget("y")

    assert run(main, store_path, wal) is None


def test_aupdate_and_acompare_and_set(store_path, wal):
    async def main(db):
        async def add(v):
            await asyncio.sleep(0)
            return v + [1]

        assert await db.aupdate("l", add, []) == [1]
        assert await db.aupdate("l", lambda v: v + [2]) == [1, 2]
        assert await db.acompare_and_set("c", MISSING, 1) is True
        assert await db.acompare_and_set("c", MISSING, 2) is False
        assert await db.acompare_and_set("c", 1, 2) is True
        return await db.aget_many(["l", "c"])

    assert run(main, store_path, wal) == [[1, 2], 2]


def test_tasks_each_have_their_own_transaction_and_nesting_raises(store_path, wal):
    async def main(db):
        both_in = asyncio.Barrier(2) if hasattr(asyncio, "Barrier") else None

        async def one(key):
            async with db.atransaction() as tx:
                tx.put(key, 1)
                if both_in is not None:
                    await both_in.wait()  # both tasks inside a transaction at once: not nesting
                else:
                    await asyncio.sleep(0.01)
                with pytest.raises(NestedTransactionError):
                    async with db.atransaction():
                        pass
                with pytest.raises(NestedTransactionError):
                    await db.aincr("n")

        await asyncio.gather(one("a"), one("b"))
        return await db.aget_many(["a", "b", "n"])

    assert run(main, store_path, wal) == [1, 1, None]


def test_aincr_does_not_block_the_loop_while_its_commit_waits(store_path, wal):
    async def main(db):
        await db.aincr("n")
        ticker = Ticker()
        lock = WriteLock(store_path)  # the commit cannot happen until released
        try:
            incr = asyncio.create_task(db.aincr("n"))
            ticks = await ticker.ticks_during(0.5)
            if wal:
                # decided at the log's append: LMDB's write lock (still held)
                # does not hold it up
                await asyncio.wait_for(asyncio.shield(incr), 30)
            else:
                assert not incr.done()
            assert ticks >= 20, ticks  # the loop kept turning while the increment waited
        finally:
            lock.release()
        value = await asyncio.wait_for(incr, 30)
        ticker.stop()
        return value

    assert run(main, store_path, wal) == 2
