"""The etcd client: gRPC channels to the members, error mapping, bounded retries.

Built on the protobuf messages and stubs of `etcd-sdk-python` (import
`pyetcd.etcdrpc`), called directly: every request is built here, so what
is sent (sort, limit, keys_only, compares, leases, revisions) and what is
retried is explicit. `Client.call` is the one place a call meets the
network:

- every call carries etcd's "hasleader" metadata, so a member that has lost
  its leader refuses the call before proposing anything (never half-done);
- a call fails over to the next endpoint on a connection error, a member
  without leader, or a timeout;
- what is repeated: reads (always safe), and writes whose error proves they
  never reached a member with a leader (connection refused, no leader, too
  many requests), with backoff, for at most `retry_time` seconds; then
  UnavailableError;
- what is not: a write that timed out or lost its member mid-call raises
  OutcomeUnknownError at once (it may have been applied);
- anything else etcd says is mapped onto a KVStoreError saying what to do.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any, Iterable

from ..errors import (InvalidArgumentError, KVStoreError, MapFullError, NotSupportedError,
                      OutcomeUnknownError, UnavailableError)

try:
    import grpc
    from pyetcd import etcdrpc as rpc
except ImportError as exc:  # the optional extra is not installed
    raise NotSupportedError(
        f"a store on etcd needs the etcd client libraries ({exc}); install them with "
        f"pip install 'kvstore[etcd]'") from None

__all__ = ["Client", "Compacted", "rpc"]

# Details of an UNAVAILABLE error that prove the call never reached a member
# able to apply it (so a write is safe to send again).
UNSENT = ("failed to connect", "connection refused", "etcdserver: no leader", "etcdserver: too many requests",
          "dns resolution failed", "name resolution")
HASLEADER = (("hasleader", "true"),)
BACKOFF_FIRST = 0.02  # seconds before the first retry; doubles up to BACKOFF_MAX
BACKOFF_MAX = 0.4


class Compacted(KVStoreError):
    """A read asked for a revision etcd has compacted away (a long scan
    outlived the cluster's history). Read again: it starts from the
    current revision."""


class Client:
    """Channels to every endpoint; calls go to the current one, and move on
    when it fails. Thread-safe (gRPC channels and stubs are)."""

    def __init__(self, endpoints: Iterable[str], timeout: float, retry_time: float):
        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.retry_time = retry_time
        options = [("grpc.max_receive_message_length", -1), ("grpc.max_send_message_length", -1)]
        self._channels = [grpc.insecure_channel(ep, options=options) for ep in self.endpoints]
        self._stubs: list[dict[str, Any]] = [
            {"KV": rpc.KVStub(ch), "Lease": rpc.LeaseStub(ch), "Watch": rpc.WatchStub(ch),
             "Maintenance": rpc.MaintenanceStub(ch)} for ch in self._channels]
        self._lock = threading.Lock()
        self._current = random.randrange(len(self.endpoints))  # guarded by self._lock
        self.calls = 0  # calls sent (retries included); approximate, for stats
        self.retries = 0
        self.failovers = 0

    # ------------------------------------------------------------ endpoints

    def stub(self, service: str) -> tuple[int, Any]:
        with self._lock:
            i = self._current
        return i, self._stubs[i][service]

    def failed(self, i: int) -> None:
        """Endpoint i failed a call: the next calls go to the next endpoint."""
        with self._lock:
            if self._current == i and len(self.endpoints) > 1:
                self._current = (i + 1) % len(self.endpoints)
                self.failovers += 1

    @property
    def endpoint(self) -> str:
        with self._lock:
            return self.endpoints[self._current]

    # ------------------------------------------------------------ calls

    def call(self, service: str, method: str, request: Any, *, doing: str, write: bool = False,
             keys: Iterable[tuple[str, bytes]] = ()) -> Any:
        """Send request; see the module's docstring for what is retried.

        :param write: the call changes data (so it is repeated only when it
            certainly never reached a member with a leader)
        :param keys: what a write touches, for OutcomeUnknownError
        """
        deadline = time.monotonic() + self.retry_time
        attempt = 0
        while True:
            i, stub = self.stub(service)
            self.calls += 1
            try:
                return getattr(stub, method)(request, timeout=self.timeout, metadata=HASLEADER)
            except grpc.RpcError as exc:
                code, details = exc.code(), (exc.details() or "")
            error = self.mapped(code, details, doing)
            if error is not None:
                raise error
            self.failed(i)
            if write and not _unsent(code, details):
                raise OutcomeUnknownError(
                    f"{doing}: no answer from {self.endpoints[i]} ({_what(code, details)}): the write "
                    f"may or may not have been applied, and was not retried; read the keys to see "
                    f"whether it was, then write again if needed", keys)
            if time.monotonic() >= deadline:
                raise UnavailableError(
                    f"{doing}: the etcd cluster at {', '.join(self.endpoints)} did not serve the call "
                    f"within {self.retry_time:g} s ({_what(code, details)}); nothing was written by it. "
                    f"Check that a majority of its members are up and reachable, then call again")
            self.retries += 1
            time.sleep(min(BACKOFF_MAX, BACKOFF_FIRST * 2 ** attempt) * random.uniform(0.5, 1.0))
            attempt += 1

    def mapped(self, code: Any, details: str, doing: str) -> Exception | None:
        """The error to raise at once for what etcd answered, or None when
        the endpoint failed (the call may be retried elsewhere)."""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED,
                    grpc.StatusCode.CANCELLED, grpc.StatusCode.UNKNOWN):
            return None
        if "compacted" in details:
            return Compacted(f"{doing}: etcd compacted the revision this read was pinned to ({details}); "
                             f"read again (a scan longer than the cluster's history keeps is cut)")
        if "too many operations in txn request" in details:
            return InvalidArgumentError(
                f"{doing}: the cluster refused the transaction: {details}; the cluster's --max-txn-ops "
                f"is lower than this store's max_txn_ops option: lower the option, or raise the flag")
        if "request is too large" in details or code == grpc.StatusCode.RESOURCE_EXHAUSTED \
                and "larger than max" in details:
            return InvalidArgumentError(
                f"{doing}: the cluster refused the request: {details}; the cluster's --max-request-bytes "
                f"is lower than this store's max_request_bytes option: lower the option, or raise the flag")
        if "database space exceeded" in details:
            return MapFullError(
                f"{doing}: the etcd cluster is full ({details}); compact and defragment it, or raise its "
                f"--quota-backend-bytes, then disarm the alarm (etcdctl alarm disarm)")
        return KVStoreError(f"{doing}: etcd answered {_what(code, details)}")

    def close(self) -> None:
        for ch in self._channels:
            ch.close()


def _unsent(code: Any, details: str) -> bool:
    text = details.lower()
    return code == grpc.StatusCode.UNAVAILABLE and any(mark in text for mark in UNSENT)


def _what(code: Any, details: str) -> str:
    name = getattr(code, "name", str(code))
    return f"{name}: {details}" if details else name
