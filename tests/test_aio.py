"""kvstore.aio: the asyncio API on a real store, many tasks, real processes."""

import asyncio
import os
import subprocess
import sys
import textwrap
import time

import pytest

import kvstore
import kvstore.aio
from kvstore.aio import INLINE_GET_MANY, AsyncStore
from kvstore.store import SCAN_CHUNK


def run(coro_fn, *args):
    return asyncio.run(coro_fn(*args))


def spawn(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


class WriteLock:
    """Another process holds LMDB's write lock of the store until released
    (or 10 s have passed, so that a loop wrongly blocked on the lock fails
    the test instead of hanging it): every commit of this process waits."""

    def __init__(self, path):
        self.proc = spawn("""
            import select, sys, lmdb
            env = lmdb.open(sys.argv[1], subdir=True, max_dbs=128, lock=True)
            txn = env.begin(write=True)
            print("locked", flush=True)
            select.select([sys.stdin], [], [], 10)
            txn.abort()
            env.close()
        """, path)
        assert self.proc.stdout.readline().strip() == "locked", self.proc.stderr.read()

    def release(self):
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.wait(30) == 0


class Ticker:
    """A task that counts its turns of the event loop: a loop parked in a
    blocking call gives it none."""

    def __init__(self):
        self.ticks = 0
        self.task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self):
        while True:
            await asyncio.sleep(0.001)
            self.ticks += 1

    async def ticks_during(self, seconds):
        start = self.ticks
        await asyncio.sleep(seconds)
        return self.ticks - start

    def stop(self):
        self.task.cancel()


# ---------------------------------------------------------------- basics


def test_open_await_and_context_manager(store_path):
    async def main():
        db = await kvstore.aio.open(store_path)
        assert isinstance(db, AsyncStore) and db.path == store_path and db.name == "default"
        await db.aput("k", {"v": 1}, durable=True)
        await db.aclose()
        async with kvstore.aio.open(store_path) as db:
            assert await db.aget("k") == {"v": 1}
        with pytest.raises(kvstore.StoreClosedError):
            await db.aget("k")

    run(main)


def test_bad_option_raises_at_the_call():
    with pytest.raises(TypeError, match="unknown option"):
        kvstore.aio.open("/nonexistent", flush_intervall=1)


def test_wraps_only_a_store():
    with pytest.raises(kvstore.InvalidArgumentError, match="kvstore.Store"):
        AsyncStore({})


def test_wraps_an_open_store_and_shares_it_with_sync_code(db):
    async def main():
        adb = AsyncStore(db)
        await adb.aput("a", 1)
        assert db.get("a") == 1  # read-your-writes across the two handles
        db.put("b", 2)
        assert await adb.aget("b") == 2
        assert adb.store is db

    run(main)


def test_put_get_delete_many_contains(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            await db.aput("k1", [1, 2])
            await db.aput(b"k2", {"x": "y"}, durable=True)
            assert await db.aget("k1") == [1, 2]
            assert await db.aget("missing", "dflt") == "dflt"
            assert await db.acontains("k2") and not await db.acontains("nope")
            await db.adelete("k1", durable=True)
            assert await db.aget("k1") is None
            await db.aput_many({f"m{i:04d}": i for i in range(500)}, durable=True)
            small = [f"m{i:04d}" for i in range(INLINE_GET_MANY)] + ["absent"]
            big = [f"m{i:04d}" for i in range(500)] + ["absent"]
            assert await db.aget_many(small) == list(range(INLINE_GET_MANY)) + [None]
            assert await db.aget_many(iter(big)) == list(range(500)) + [None]  # via a worker thread
            await db.aflush()
            assert db.stats()["pending"] == 0

    run(main)


def test_bad_key_and_value_raise_at_the_await_and_queue_nothing(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            with pytest.raises(kvstore.InvalidKeyError):
                await db.aput("", 1, durable=True)
            with pytest.raises(kvstore.InvalidKeyError):
                await db.adelete(123)
            with pytest.raises(kvstore.EncodeError):
                await db.aput("k", object(), durable=True)
            with pytest.raises(kvstore.InvalidKeyError):
                await db.aput_many([("ok", 1), ("", 2)])
            assert db.stats()["pending"] == 0
            assert await db.aget("ok") is None  # the put_many queued nothing

    run(main)


def test_readonly_store_refuses_writes(store_path):
    kvstore.open(store_path).close()

    async def main():
        async with kvstore.aio.open(store_path, readonly=True) as db:
            with pytest.raises(kvstore.ReadOnlyError):
                await db.aput("k", 1)
            with pytest.raises(kvstore.ReadOnlyError):
                db.abatch()

    run(main)


# ---------------------------------------------------------------- batches, namespaces, scans


def test_abatch_commits_atomically_or_is_discarded(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            await db.aput("gone", 0)
            async with db.abatch(durable=True) as b:
                b.put("a", 1)
                b.put("e1", {"ep": 1}, namespace="episodes")
                b.delete("gone")
                assert len(b) == 3
                assert await db.aget("a") is None  # not visible before the block exits
            assert await db.aget("a") == 1 and await db.aget("gone") is None
            episodes = await db.anamespace("episodes")
            assert await episodes.aget("e1") == {"ep": 1}

            with pytest.raises(RuntimeError):
                async with db.abatch() as b:
                    b.put("never", 1)
                    raise RuntimeError("abort")
            assert await db.aget("never") is None

    run(main)


def test_namespaces_are_separate_keyspaces(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            msgs = await db.anamespace("messages")
            await msgs.aput("k", "in messages", durable=True)
            await db.aput("k", "in default", durable=True)
            assert await msgs.aget("k") == "in messages"
            assert await db.aget("k") == "in default"
            assert msgs.name == "messages"
            assert await db.anamespaces() == ["default", "messages"]
            with pytest.raises(kvstore.InvalidNamespaceError):
                await db.anamespace("__reserved")

    run(main)


def test_ascan_orders_filters_and_sees_pending_writes(store_path):
    async def main():
        async with kvstore.aio.open(store_path, flush_interval=3600) as db:
            await db.aput_many({f"s:{i:03d}": i for i in range(10)}, durable=True)
            await db.aput("s:100", "pending")  # buffered: still in the overlay
            await db.aput("t:1", "other prefix")
            got = [(k, v) async for k, v in db.ascan(prefix="s:")]
            assert [k for k, _ in got] == [f"s:{i:03d}".encode() for i in range(10)] + [b"s:100"]
            assert got[-1][1] == "pending"
            keys = [k async for k in db.ascan("s:", reverse=True, keys_only=True)]
            assert keys == [k for k, _ in reversed(got)]
            assert [k async for k in db.ascan(start="s:005", stop="s:007", keys_only=True)] == \
                [b"s:005", b"s:006"]

    run(main)


def test_ascan_gives_the_loop_back_between_chunks(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            n = 3 * SCAN_CHUNK + 5
            await db.aput_many({f"k{i:05d}": i for i in range(n)}, durable=True)
            turns = []

            async def other():
                while True:
                    turns.append(len(seen))
                    await asyncio.sleep(0)

            seen = []
            task = asyncio.create_task(other())
            await asyncio.sleep(0)
            async for key, _ in db.ascan():
                seen.append(key)
            task.cancel()
            assert len(seen) == n
            # the other task ran while the scan was under way, not only before or after it
            assert any(0 < t < n for t in turns), turns

    run(main)


# ---------------------------------------------------------------- group commit


def test_concurrent_durable_aputs_share_commits(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            await db.aput("warm", 0, durable=True)
            before = db.stats()
            n = 500
            await asyncio.gather(*(db.aput(f"k{i}", {"i": i}, durable=True) for i in range(n)))
            after = db.stats()
            commits = after["commits"] - before["commits"]
            assert after["durable_groups"] - before["durable_groups"] == n
            assert 1 <= commits <= n // 4, commits  # shared: far fewer commits than writes (timing: loose)
            for i in range(0, n, 37):
                assert await db.aget(f"k{i}") == {"i": i}

    run(main)


def test_tasks_and_threads_share_commits_too(store_path):
    async def main():
        async with kvstore.aio.open(store_path) as db:
            sync_db = db.store
            before = db.stats()["commits"]

            def thread_writer(t):
                for i in range(20):
                    sync_db.put(f"t{t}:{i}", i, durable=True)

            async def task_writer(t):
                for i in range(20):
                    await db.aput(f"a{t}:{i}", i, durable=True)

            loop = asyncio.get_running_loop()
            await asyncio.gather(*(loop.run_in_executor(None, thread_writer, t) for t in range(4)),
                                 *(task_writer(t) for t in range(40)))
            commits = db.stats()["commits"] - before
            assert commits < (4 + 40) * 20 // 4, commits
            assert await db.aget("a39:19") == 19 and await db.aget("t3:19") == 19

    run(main)


def test_buffered_aputs_past_max_pending_ops_wait_for_a_commit(store_path):
    async def main():
        async with kvstore.aio.open(store_path, flush_interval=3600, max_batch_ops=100,
                                    max_pending_ops=100) as db:
            highest = 0
            for i in range(1000):
                await db.aput(f"k{i}", i)
                highest = max(highest, db.stats()["pending"])
            # the queue never grows far past max_pending_ops: the writers wait
            assert highest <= 2 * 100, highest
            assert db.stats()["commits"] >= 5

    run(main)


# ---------------------------------------------------------------- the loop keeps running


@pytest.mark.parametrize("wal", [False, True])
def test_durable_aput_and_aflush_do_not_block_the_loop(store_path, wal):
    async def main():
        async with kvstore.aio.open(store_path, wal=wal) as db:
            await db.aput("warm", 0, durable=True)
            ticker = Ticker()
            lock = WriteLock(store_path)  # LMDB's commit cannot happen until released
            try:
                put = asyncio.create_task(db.aput("k", "v", durable=True))
                flush = asyncio.create_task(db.aflush())
                ticks = await ticker.ticks_during(0.5)
                # with the write-ahead log a durable write needs only the log's
                # sync, never LMDB's lock; flush() applies the log to LMDB
                assert put.done() == wal and not flush.done()
                assert ticks >= 20, ticks  # the loop kept turning while the write waited
            finally:
                lock.release()
            await asyncio.wait_for(asyncio.gather(put, flush), 30)
            ticker.stop()
            assert await db.aget("k") == "v" and db.stats()["pending"] == 0

    run(main)


def test_loop_lag_stays_small_with_100_writing_tasks(store_path):
    # A sanity bound only: the benchmark (bench/bench_agent.py) measures the lag.
    async def main():
        async with kvstore.aio.open(store_path) as db:
            lags = []
            stop = False

            async def probe():
                while not stop:
                    t = time.perf_counter()
                    await asyncio.sleep(0.002)
                    lags.append(time.perf_counter() - t - 0.002)

            async def writer(t):
                for i in range(20):
                    await db.aput(f"w{t}:{i}", {"t": t, "i": i, "pad": "x" * 200}, durable=True)

            p = asyncio.create_task(probe())
            await asyncio.gather(*(writer(t) for t in range(100)))
            stop = True
            await p
            assert lags and max(lags) < 1.0, max(lags)

    run(main)


def test_cancelled_durable_aput_still_commits(store_path):
    # without the log: a durable aput waits for LMDB's write lock
    async def main():
        async with kvstore.aio.open(store_path, wal=False) as db:
            await db.aput("warm", 0, durable=True)
            lock = WriteLock(store_path)
            try:
                put = asyncio.create_task(db.aput("k", "committed anyway", durable=True))
                await asyncio.sleep(0.05)
                put.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await put
            finally:
                lock.release()
            await db.aflush()
            assert db.store.get("k") == "committed anyway"

    run(main)


def test_a_commit_finishing_after_its_loop_closed_harms_nothing(store_path):
    db = kvstore.open(store_path, wal=False)  # without the log: commits wait for LMDB's write lock
    try:
        db.put("warm", 0, durable=True)
        lock = WriteLock(store_path)
        loop = asyncio.new_event_loop()
        try:
            task = loop.create_task(AsyncStore(db).aput("k", 1, durable=True))
            loop.run_until_complete(asyncio.sleep(0.05))
            assert not task.done()
        finally:
            task.cancel()
            loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            loop.close()
            lock.release()  # the commit now completes; its callback finds the loop closed
        db.flush(timeout=30)
        assert db.get("k") == 1

        async def again():
            await AsyncStore(db).aput("k2", 2, durable=True)  # the writer is still alive

        asyncio.run(again())
        assert db.get("k2") == 2
    finally:
        db.close()


# ---------------------------------------------------------------- errors


def test_a_group_that_cannot_fit_fails_its_task_alone(store_path):
    # without the log: the commit that cannot grow the map is the writers'
    # own; it is retried one group at a time, and only the group that does
    # not fit fails
    async def main():
        db = await kvstore.aio.open(store_path, map_size=1 << 20, max_map_size=2 << 20,
                                    compression="none", wal=False)
        await db.aput("kept", "yes", durable=True)
        big = {f"k{j}": os.urandom(4000) for j in range(1000)}
        results = await asyncio.gather(db.aput_many(big, durable=True),
                                       *(db.aput(f"small{i}", i, durable=True) for i in range(5)),
                                       return_exceptions=True)
        assert isinstance(results[0], kvstore.MapFullError), results
        assert results[1:] == [None] * 5, results
        await db.aput("after", 1, durable=True)
        await db.aflush()
        assert await db.aget("kept") == "yes" and await db.aget("k1") is None
        assert await db.aget("small4") == 4 and await db.aget("after") == 1
        await db.aclose()

    run(main)


def test_with_a_log_an_apply_that_fills_the_map_fails_the_store_and_keeps_the_writes(store_path):
    # With a log, writes are acknowledged once in the log: a map that cannot
    # grow is found by the applier later. The store fails (StoreFailedError,
    # caused by MapFullError); the acknowledged writes stay readable and in
    # the log, and a reopen with room applies them.
    big = {f"k{j}": os.urandom(4000) for j in range(1000)}

    async def main():
        db = await kvstore.aio.open(store_path, map_size=1 << 20, max_map_size=2 << 20,
                                    compression="none", wal=True)
        await db.aput("kept", "yes", durable=True)
        keys = list(big)
        # groups each under an eighth of the map (a larger one would skip the
        # log and fail alone): together they overfill it at the apply
        await asyncio.gather(*(db.aput_many({k: big[k] for k in keys[i:i + 20]}, durable=True)
                               for i in range(0, len(keys), 20)),
                             *(db.aput(f"small{i}", i, durable=True) for i in range(5)))
        with pytest.raises(kvstore.StoreFailedError) as failed:
            await db.aflush()
        assert isinstance(failed.value.cause, kvstore.MapFullError)
        with pytest.raises(kvstore.StoreFailedError, match="reopen"):
            await db.aput("after", 1, durable=True)
        assert await db.aget("kept") == "yes" and await db.aget("k1") == big["k1"]
        with pytest.raises(kvstore.StoreFailedError):
            await db.aclose()

    run(main)
    with kvstore.open(store_path, max_map_size=64 << 20) as db:
        assert db.get("kept") == "yes" and db.get("small4") == 4
        assert db.get_many(list(big)) == list(big.values())
        assert db.get("after") is None
