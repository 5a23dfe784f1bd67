"""kvstore on an etcd cluster: the same Store API, many machines.

    db = kvstore.open("etcd://10.0.0.1:2379,10.0.0.2:2379,10.0.0.3:2379/agents")

Needs the optional extra: ``pip install 'kvstore[etcd]'``. Nothing here
imports the etcd client until a URL is opened, so kvstore imports and works
without it. docs/distributed.md has the mapping onto etcd and the limits.

Modules: url (parsing), options (EtcdOptions), client (gRPC calls, error
mapping, retries), keys (the key layout), records (the codec), grouping
(writes into etcd transactions), cache (revisions and a watch), remote
(what a store's handles share), store (the handles), batch, txn
(transactions), aio (the asyncio API).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .url import is_etcd_url, parse

if TYPE_CHECKING:
    from .store import EtcdStore

__all__ = ["open", "is_etcd_url", "parse"]


def open(url: str, **options: Any) -> EtcdStore:
    """Open the store at an etcd URL; see kvstore.etcd.store.open_url.

    :raises NotSupportedError: the etcd extra is not installed (its message
        says pip install 'kvstore[etcd]')
    :raises UnavailableError: the cluster does not answer
    """
    from .store import open_url  # imports the client libraries
    return open_url(url, **options)
