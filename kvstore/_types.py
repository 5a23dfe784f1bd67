"""The types of the public API's keys and values, for annotations.

    Key     what a key may be given as: bytes, or str (stored as its UTF-8)
    Value   what a value may be: what msgpack carries, nested to any depth
    Items   what put_many takes: a mapping of keys to values, or (key, value) pairs
    KeyT    the type of the keys a handle's scans return: bytes (the default)
            or str (`Store.namespace(name, keys=str)`)

`Value` is what a write accepts, checked statically: None, bool, int, float,
str, bytes (bytearray, memoryview), and lists, tuples and dicts of values. A
set, a datetime or an arbitrary object is flagged by a type checker, as it is
refused at run time (EncodeError). Containers are given as `Sequence` and
`Mapping`, whose item types are covariant, so that a `list[int]` or a
`dict[str, str]` the caller already holds is a `Value` (a `list[Value]`
would not accept them). That admits a few sequences msgpack refuses (a
range, a deque): the run time check still catches those. A dict's keys are
not checked statically (`Mapping` is invariant in its key type, so no union
of key types would accept both a `dict[str, int]` and a `dict[str | int, int]`).

What a read returns is `Any`: the shape of a stored value is the
application's, known to it and not to the store (a tuple reads back as a
list), and a union would make every caller narrow every read, as `json.loads`
would if it did not return `Any` either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

__all__ = ["Key", "Value", "Items", "KeyT"]

Key = Union[bytes, str]

Value = Union[None, bool, int, float, str, bytes, bytearray, memoryview,
              Sequence["Value"], Mapping[Any, "Value"]]

# A mapping's key type is invariant: a dict[str, ...] is neither a
# Mapping[bytes | str, ...] nor a Mapping[bytes, ...], so each is named.
Items = Union[Mapping[str, Value], Mapping[bytes, Value], Mapping[Key, Value], Iterable[tuple[Key, Value]]]

if TYPE_CHECKING:
    # A default (PEP 696) for type checkers, so that a bare `Store` is a
    # `Store[bytes]`; typing.TypeVar takes one only from Python 3.13.
    from typing_extensions import TypeVar

    KeyT = TypeVar("KeyT", bytes, str, default=bytes)
else:
    from typing import TypeVar

    KeyT = TypeVar("KeyT", bytes, str)
