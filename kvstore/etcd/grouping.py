"""The grouping of writes: many calls' writes in one etcd transaction.

Every write call (put, delete, put_many, a batch) becomes one `Group` of
operations, checked against the cluster's limits in the caller's thread
(nothing is sent if it cannot fit in one etcd transaction) and queued.
One sender thread per store takes, in queue order, as many groups as fit
together in one transaction (max_txn_ops distinct keys, max_request_bytes)
and sends them as one Txn: one round trip and one Raft commit for all of
them. A durable call waits for its group's transaction; a buffered one
returns at once. While a transaction is in flight the next callers queue,
so concurrent durable writers share round trips (the group commit of the
local engine, kvstore/writer.py); when nothing is in flight, a buffered
write waits up to flush_interval for company. When fewer groups are queued
than the last transaction carried, the sender lingers, up to commit_linger,
until that many are (the durable callers it just answered are about to
write again): 16 durable writers then share one transaction of about 13-15
writes, where stopping at the first of them split them into two of about 8
that alternated; a lone writer never waits for it. The callers are woken
after the sender lets go of the lock they need to write again.

Within one transaction a later operation on a key replaces an earlier one
(etcd refuses a Txn naming a key twice), which is what applying them in
order would leave. TTLs: the puts of one transaction with the same TTL
(whole seconds) share one lease, granted just before it is sent.

Read-your-writes: `pending` maps the full etcd key of every queued or
in-flight write to its newest record (None: a delete) until its
transaction is answered; reads look there first.

Failures: a transaction whose call fails fails all its groups: a durable
caller gets the error (UnavailableError: nothing of it was written;
OutcomeUnknownError: it may have been); buffered groups' first error is
raised by the next flush(). Either way later writes are sent as usual.

Lock discipline: everything below marked "guarded" is guarded by
self._cond's lock; the sender thread sends without holding it.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Callable

from ..errors import InvalidArgumentError, KVStoreError, OutcomeUnknownError, StoreClosedError, TimeoutError
from .client import Client, rpc

__all__ = ["Op", "Group", "Committer", "request_bytes", "check_limits"]

# One operation: (namespace, key, full etcd key, record or None for a delete,
# TTL in whole seconds or 0).
Op = tuple[str, bytes, bytes, "bytes | None", int]
OP_OVERHEAD = 24  # bytes of protobuf framing counted per operation (generous)
TXN_OVERHEAD = 512


def request_bytes(ops: list[Op]) -> int:
    return TXN_OVERHEAD + sum(len(op[2]) + len(op[3] or b"") + OP_OVERHEAD for op in ops)


def check_limits(ops: list[Op], max_ops: int, max_bytes: int, what: str) -> None:
    """InvalidArgumentError, before anything is sent, if ops cannot be one etcd transaction."""
    distinct = len({op[2] for op in ops})
    if distinct > max_ops:
        raise InvalidArgumentError(
            f"{what} writes {distinct} keys, more than one etcd transaction may hold (max_txn_ops="
            f"{max_ops}, the cluster's --max-txn-ops); nothing was sent. Split it into parts of at most "
            f"{max_ops} keys, or start etcd with a larger --max-txn-ops and open the store with the same "
            f"max_txn_ops=")
    size = request_bytes(ops)
    if size > max_bytes:
        raise InvalidArgumentError(
            f"{what} is about {size} bytes, more than one etcd request may carry (max_request_bytes="
            f"{max_bytes}, the cluster's --max-request-bytes); nothing was sent. Split it, or start etcd "
            f"with a larger --max-request-bytes and open the store with the same max_request_bytes=")


class Group:
    """One call's writes. A durable group's caller waits on `answered`, a
    lock held from the start and released once its transaction is answered
    (one wake-up, without an Event's condition and its second lock)."""

    __slots__ = ("ops", "durable", "nbytes", "answered", "error", "seq")

    def __init__(self, ops: list[Op], durable: bool):
        self.ops = ops
        self.durable = durable
        self.nbytes = request_bytes(ops) - TXN_OVERHEAD
        self.answered: threading.Lock | None = None
        if durable:
            self.answered = threading.Lock()
            self.answered.acquire()
        self.error: BaseException | None = None
        self.seq = 0


class Committer:
    def __init__(self, client: Client, max_ops: int, max_bytes: int, flush_interval: float,
                 max_pending: int, on_commit: Callable[[list[bytes], int], None], linger: float = 0.0):
        self._client = client
        self._max_ops = max_ops
        self._max_bytes = max_bytes
        self._interval = flush_interval
        self._linger = linger
        self._max_pending = max_pending
        # called with the full keys of a transaction that applied, and its
        # revision (0: its outcome is unknown)
        self._on_commit = on_commit
        self._cond = threading.Condition(threading.Lock())
        self._queue: deque[Group] = deque()  # guarded
        self._queued_ops = 0  # guarded
        self.pending: dict[bytes, tuple[int, bytes | None]] = {}  # guarded (read without it: one dict get)
        self._seq = 0  # guarded: groups submitted
        self._answered = 0  # guarded: every group up to this seq is answered
        self._urgent = 0  # guarded: durable groups queued, or flushes waiting
        self._failure: BaseException | None = None  # guarded: a buffered group's first error since flush()
        self._closing = False  # guarded
        self._last_groups = 0  # guarded: groups of the last transaction sent
        # stats, guarded
        self.txns = 0
        self.ops_sent = 0
        self.max_ops_per_txn = 0
        self.txn_seconds: deque[float] = deque(maxlen=1000)
        self._thread = threading.Thread(target=self._run, name="kvstore-etcd-sender", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------ callers

    def submit(self, group: Group, what: str) -> None:
        """Queue group (checked against the limits first); a durable group
        waits for its transaction and raises its error."""
        check_limits(group.ops, self._max_ops, self._max_bytes, what)
        with self._cond:
            if self._closing:
                raise StoreClosedError("the store on etcd is closed; open it again to write")
            while not group.durable and self._queued_ops >= self._max_pending and not self._closing:
                self._cond.wait(0.1)  # back-pressure on buffered writes
            self._seq += 1
            group.seq = self._seq
            for op in group.ops:
                self.pending[op[2]] = (group.seq, op[3])
            self._queue.append(group)
            self._queued_ops += len(group.ops)
            if group.durable:
                self._urgent += 1
            self._cond.notify_all()
        if group.answered is not None:
            group.answered.acquire()
            if group.error is not None:
                raise group.error

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every group submitted before the call is answered;
        raise the first error of a buffered group since the last flush."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            target = self._seq
            self._urgent += 1
            self._cond.notify_all()
            try:
                while self._answered < target:
                    left = None if deadline is None else deadline - time.monotonic()
                    if left is not None and left <= 0:
                        raise TimeoutError(f"flush: writes still queued for the etcd cluster after "
                                           f"{timeout:g} s; they stay queued")
                    self._cond.wait(left)
            finally:
                self._urgent -= 1
            failure, self._failure = self._failure, None
        if failure is not None:
            raise failure

    def queued(self) -> int:
        with self._cond:
            return self._queued_ops

    def close(self) -> None:
        """Send what is queued, then stop the sender thread."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._thread.join()

    # ------------------------------------------------------------ the sender thread

    def _take(self) -> list[Group] | None:
        """The groups of the next transaction (None: closing and nothing left)."""
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            if not self._urgent and not self._closing and self._queued_ops < self._max_ops:
                self._cond.wait(self._interval)  # company for a buffered write
            elif self._linger and len(self._queue) < self._last_groups and not self._closing:
                # Durable callers answered by the last transaction are about
                # to write again: wait a moment for them to share this one
                # (for all of them, not only the first: each submit notifies).
                until = time.monotonic() + self._linger
                while len(self._queue) < self._last_groups and not self._closing:
                    left = until - time.monotonic()
                    if left <= 0:
                        break
                    self._cond.wait(left)
            taken: list[Group] = []
            keys: set[bytes] = set()
            nbytes = TXN_OVERHEAD
            while self._queue:
                group = self._queue[0]
                new = {op[2] for op in group.ops} - keys
                if taken and (len(keys) + len(new) > self._max_ops or nbytes + group.nbytes > self._max_bytes):
                    break
                self._queue.popleft()
                self._queued_ops -= len(group.ops)
                if group.durable:
                    self._urgent -= 1
                keys |= new
                nbytes += group.nbytes
                taken.append(group)
            self._cond.notify_all()  # buffered writers waiting for room
            return taken

    def _run(self) -> None:
        while True:
            groups = self._take()
            if groups is None:
                return
            ops: dict[bytes, Op] = {}
            for group in groups:
                for op in group.ops:
                    ops.pop(op[2], None)  # a later write of the key replaces it, in order
                    ops[op[2]] = op
            error: BaseException | None = None
            started = time.monotonic()
            revision = 0
            try:
                revision = self._send(list(ops.values()))
            except KVStoreError as exc:
                error = exc
            except BaseException as exc:  # never leave a waiter hanging
                error = KVStoreError(f"sending writes to etcd failed: {exc!r}")
            elapsed = time.monotonic() - started
            if error is None or isinstance(error, OutcomeUnknownError):
                self._on_commit(list(ops), revision)
            with self._cond:
                for group in groups:
                    group.error = error
                    for op in group.ops:
                        if self.pending.get(op[2], (0,))[0] == group.seq:
                            del self.pending[op[2]]
                    if error is not None and not group.durable and self._failure is None:
                        self._failure = error
                self._answered = groups[-1].seq
                self._last_groups = len(groups)
                if error is None:
                    self.txns += 1
                    self.ops_sent += len(ops)
                    self.max_ops_per_txn = max(self.max_ops_per_txn, len(ops))
                    self.txn_seconds.append(elapsed)
                self._cond.notify_all()
            # Wake the durable callers once the lock is free: each is about
            # to write again, and would otherwise wait for it behind the others.
            for group in groups:
                if group.answered is not None:
                    group.answered.release()

    def _send(self, ops: list[Op]) -> int:
        """Send ops as one Txn; its revision."""
        leases: dict[int, int] = {}
        for op in ops:
            if op[3] is not None and op[4] and op[4] not in leases:
                leases[op[4]] = grant(self._client, op[4])
        success = []
        for _ns, _key, full, record, ttl in ops:
            if record is None:
                success.append(rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=full)))
            else:
                success.append(rpc.RequestOp(request_put=rpc.PutRequest(
                    key=full, value=record, lease=leases.get(ttl, 0) if ttl else 0)))
        resp = self._client.call("KV", "Txn", rpc.TxnRequest(success=success), write=True,
                                 doing=f"writing {len(ops)} keys", keys=[(op[0], op[1]) for op in ops])
        return int(resp.header.revision)


def grant(client: Client, seconds: int) -> int:
    """A new lease of `seconds` (a lease nobody uses expires by itself, so
    its grant is safe to repeat)."""
    resp = client.call("Lease", "LeaseGrant", rpc.LeaseGrantRequest(TTL=seconds), doing="granting a lease")
    return int(resp.ID)


def whole_seconds(ttl: float) -> int:
    """A TTL as etcd's leases take it: whole seconds, rounded up (never shorter)."""
    return max(1, math.ceil(ttl))
