"""etcd URLs: ``etcd://host:port[,host:port...]/prefix``.

The hosts are the cluster's client endpoints (any reachable member serves
every call; the client moves to another one when a member fails). The path
is the key prefix the store lives under in etcd (default "kvstore"), so
that several stores, or other users of etcd, share one cluster:
docs/distributed.md has the key layout.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote

from ..errors import InvalidArgumentError

__all__ = ["SCHEME", "Target", "is_etcd_url", "parse"]

SCHEME = "etcd://"
DEFAULT_PREFIX = "kvstore"
DEFAULT_PORT = 2379


@dataclass(frozen=True)
class Target:
    endpoints: tuple[str, ...]  # "host:port"
    prefix: str

    def url(self) -> str:
        return SCHEME + ",".join(self.endpoints) + "/" + self.prefix


def is_etcd_url(path: object) -> bool:
    return isinstance(path, str) and path.startswith(SCHEME)


def parse(url: str) -> Target:
    """The endpoints and prefix of an etcd URL; InvalidArgumentError saying
    what is wrong otherwise."""
    if not is_etcd_url(url):
        raise InvalidArgumentError(f"not an etcd URL: {url!r}; write etcd://host:port[,host:port...]/prefix")
    rest = url[len(SCHEME):]
    hosts, _, path = rest.partition("/")
    if "?" in path or "#" in path:
        raise InvalidArgumentError(f"{url!r}: an etcd URL takes no query or fragment; pass options "
                                   f"as keyword arguments of kvstore.open()")
    endpoints = []
    for host in hosts.split(","):
        host = host.strip()
        if not host:
            raise InvalidArgumentError(f"{url!r} names no host (or has an empty one between commas); "
                                       f"write etcd://127.0.0.1:2379/prefix")
        name, sep, port = host.rpartition(":")
        if not sep or (host.startswith("[") and not name.endswith("]")):  # no port ([::1] too)
            name, port = host, str(DEFAULT_PORT)
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(f"{url!r}: {port!r} is not a port number (1-65535)")
        endpoints.append(f"{name}:{int(port)}")
    prefix = unquote(path.strip("/")) or DEFAULT_PREFIX
    if "\x00" in prefix:
        raise InvalidArgumentError(f"{url!r}: the prefix may not hold a NUL character")
    return Target(tuple(endpoints), prefix)
