"""`@db.memoize()`: cache a function's results in a store, by its arguments.

    @db.memoize(ttl=3600, namespace="tool-calls")
    def search(query: str, top_k: int = 5) -> list: ...

    search("lmdb", top_k=3)      # computed, stored under the arguments' key
    search("lmdb", 3)            # the same call: read from the store

Like diskcache's `memoize`, for agents that cache tool and model calls. A
result is stored with `put` (the store's codec and durability, `ttl` as
for put: None means the namespace's default), so any process using the
store finds it, until it expires.

Keys. A call's key is ``NAME:DIGEST``: NAME is the function's
``module.qualname`` (or `name=`), DIGEST the first 128 bits of BLAKE2b over
a canonical encoding of the call's arguments, bound to the function's
signature first, so `f(1, b=2)`, `f(1, 2)` and `f(a=1)` with b's default 2
are one call. The encoding is defined here, not by `hash()` or `pickle`:
the same arguments give the same key in every process, run and Python
version. Arguments may be None, bool, int, float, str, bytes, and lists,
tuples, dicts, sets and frozensets of those; their types count (`f(1)`,
`f(1.0)` and `f(True)` are three calls; a list and a tuple with the same
items are one). Any other argument raises `InvalidArgumentTypeError`
(an object's repr or hash is not stable across processes): pass
`key=lambda *args, **kwargs: ...` returning such a value for them, or
leave the argument out of it.

Collisions: two calls share a key only if their encodings have the same
128-bit digest (about 2**-64 odds after 2**32 distinct calls), or if two
functions are given the same NAME. A function run as a script is named
``__main__.f`` and imported ``mymodule.f``: give `name=` when both happen,
and change it (``"search:v2"``) when the function's results change
meaning: stored results are never invalidated by a change of code.

Concurrency. Safe from any number of threads and processes: a result is
one put, atomic. Threads of one process calling with the same key wait for
the first to compute (one of 64 locks, chosen by the key); other processes
may compute the same call at the same time, and the last write wins (memoize
functions whose results are interchangeable). The results come back as a
`get` returns them: a tuple as a list, a fresh copy each time.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import math
import struct
import threading
from typing import TYPE_CHECKING, Any, Callable, ParamSpec, Protocol, TypeVar

from .errors import InvalidArgumentError, InvalidArgumentTypeError
from .ttl import to_ms

if TYPE_CHECKING:
    from .store import Store

__all__ = ["memoize", "call_key", "encode_arguments", "Memoized"]

P = ParamSpec("P")
R = TypeVar("R")
R_co = TypeVar("R_co", covariant=True)


class Memoized(Protocol[P, R_co]):
    """What `memoize` makes of a function (for type checkers): called as the
    function is, returning its result (as read back from the store: a tuple
    as a list), with the helpers its docstring lists."""

    store: Store[Any]

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R_co: ...
    def key(self, *args: P.args, **kwargs: P.kwargs) -> bytes: ...
    def forget(self, *args: P.args, **kwargs: P.kwargs) -> None: ...
    def clear(self) -> int: ...

_MISSING = object()
_LOCKS = tuple(threading.Lock() for _ in range(64))  # threads computing the same key wait here
_DOUBLE = struct.Struct(">d")


def _sized(tag: bytes, data: bytes) -> bytes:
    return tag + str(len(data)).encode() + b":" + data


def _encode(value: Any, out: list[bytes]) -> None:
    """Append the canonical encoding of value to out (see the module docstring)."""
    t = type(value)
    if value is None:
        out.append(b"N")
    elif t is bool:
        out.append(b"T" if value else b"F")
    elif t is int:
        out.append(b"i" + str(value).encode() + b";")
    elif t is float:
        out.append(b"fnan" if math.isnan(value) else b"f" + _DOUBLE.pack(value))
    elif t is str:
        out.append(_sized(b"s", value.encode("utf-8", "surrogatepass")))
    elif t in (bytes, bytearray, memoryview):
        out.append(_sized(b"b", bytes(value)))
    elif t in (list, tuple):
        out.append(b"l" + str(len(value)).encode() + b":")
        for item in value:
            _encode(item, out)
    elif t is dict:
        pairs = sorted(encode_arguments(k) + encode_arguments(v) for k, v in value.items())
        out.append(b"d" + str(len(pairs)).encode() + b":" + b"".join(pairs))
    elif t in (set, frozenset):
        items = sorted(encode_arguments(item) for item in value)
        out.append(b"S" + str(len(items)).encode() + b":" + b"".join(items))
    else:
        raise InvalidArgumentTypeError(
            f"memoize cannot make a stable key of an argument of type {t.__name__}: its repr or hash may "
            f"differ between processes; pass key=lambda *args, **kwargs: ... returning None, bool, int, "
            f"float, str, bytes, or lists, tuples, dicts and sets of those")


def encode_arguments(value: Any) -> bytes:
    """The canonical encoding of value: equal for equal values of the same
    types, in every process. Nested lengths make it unambiguous."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _bound(signature: inspect.Signature | None, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> list[Any]:
    """The call's arguments by parameter name, defaults applied, in the
    signature's order (a **kwargs parameter's dict is sorted by encoding)."""
    if signature is None:
        return [list(args), kwargs]
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidArgumentTypeError(f"the memoized function cannot take these arguments: {exc}") from None
    bound.apply_defaults()
    return [[name, value] for name, value in bound.arguments.items()]


def call_key(name: str, signature: inspect.Signature | None, key_fn: Callable[..., Any] | None,
             args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """The store key of one call (see the module docstring)."""
    material = key_fn(*args, **kwargs) if key_fn is not None else _bound(signature, args, kwargs)
    digest = hashlib.blake2b(encode_arguments(material), digest_size=16).hexdigest()
    return f"{name}:{digest}".encode("utf-8")


def memoize(handle: Store[Any], ttl: float | None = None, *, name: str | None = None,
            key: Callable[..., Any] | None = None) -> Callable[[Callable[P, R]], Memoized[P, R]]:
    """A decorator caching a function's results in handle (a Store or
    Namespace), by its arguments: see the module docstring.

    :param ttl: seconds a result is kept (None: the namespace's default TTL,
        if it has one; math.inf: forever)
    :param name: the key prefix (default: the function's module.qualname)
    :param key: key(*args, **kwargs) -> the value the call's key is made of
        (default: the arguments, bound to the function's signature)
    :raises InvalidArgumentTypeError: (at the call) an argument memoize
        cannot make a stable key of
    The wrapped function has `key(*args, **kwargs)` (the store key of a
    call), `forget(*args, **kwargs)` (delete that result) and `clear()`
    (delete every stored result of the function), and `store` (the handle).
    Coroutine functions are memoized too (the result of the await).
    """
    if callable(ttl) and not isinstance(ttl, (int, float)):
        raise InvalidArgumentTypeError("memoize is a decorator factory: write @db.memoize() or "
                                       "@db.memoize(ttl=...), with the parentheses")
    if ttl is not None:
        to_ms(ttl)  # a bad ttl raises here, at decoration
    if key is not None and not callable(key):
        raise InvalidArgumentTypeError(f"memoize's key must be a function of the call's arguments, "
                                       f"not {type(key).__name__}")

    def decorate(func: Callable[P, R]) -> Memoized[P, R]:
        if not callable(func):
            raise InvalidArgumentTypeError(f"memoize decorates functions, not {type(func).__name__}")
        prefix = name if name is not None else f"{func.__module__}.{func.__qualname__}"
        if not isinstance(prefix, str) or not prefix or len(prefix.encode("utf-8")) > 400:
            raise InvalidArgumentError(f"memoize's name must be a str of 1 to 400 UTF-8 bytes, not {prefix!r}")
        try:
            signature = inspect.signature(func)
        except (TypeError, ValueError):  # some builtins have none: positional and keyword as given
            signature = None

        def key_of(*args: Any, **kwargs: Any) -> bytes:
            return call_key(prefix, signature, key, args, kwargs)

        def lookup(k: bytes) -> Any:
            return handle.get(k, _MISSING)

        def store(k: bytes, result: Any) -> Any:
            handle.put(k, result, ttl=ttl)
            # what the next call gets: the value as read back (tuples as lists)
            return handle.get(k, result)

        if inspect.iscoroutinefunction(func):
            @functools.wraps(func)
            async def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key_of(*args, **kwargs)
                found = lookup(k)
                if found is not _MISSING:
                    return found
                return store(k, await func(*args, **kwargs))
        else:
            @functools.wraps(func)
            def wrapper(*args: Any, **kwargs: Any) -> Any:
                k = key_of(*args, **kwargs)
                found = lookup(k)
                if found is not _MISSING:
                    return found
                with _LOCKS[hash(k) % len(_LOCKS)]:  # hash() here only picks a lock in this process
                    found = lookup(k)  # another thread may have computed it meanwhile
                    if found is not _MISSING:
                        return found
                    return store(k, func(*args, **kwargs))

        def forget(*args: Any, **kwargs: Any) -> None:
            handle.delete(key_of(*args, **kwargs))

        def clear() -> int:
            """Delete every stored result of the function; return how many."""
            doomed = list(handle.scan(prefix=prefix.encode("utf-8") + b":", keys_only=True))
            with handle.batch() as batch:
                for k in doomed:
                    batch.delete(k)
            return len(doomed)

        made: Any = wrapper  # a Memoized once these are set
        made.key = key_of
        made.forget = forget
        made.clear = clear
        made.store = handle
        memoized: Memoized[P, R] = made
        return memoized

    return decorate
