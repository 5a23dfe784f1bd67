"""Copy-on-read for the read cache (kvstore/cache.py): a private copy of a
cached value, made at C speed where it can be, by a form chosen per value
when it is cached.

`snapshot(value)` makes the cached form at fill: (stored, plan). A hit hands
out `copy_out(stored, plan)`; `ReadCache.lookup` inlines it. Plans:

    None    an immutable value (str, bytes, int, float, bool, None): shared
    ()      a dict or list of immutables: stored.copy(), one C call
    LOADS   a value with many small containers: stored is marshal bytes,
            marshal.loads rebuilds the whole value in C
    tuple   any other dict or list: (index or key, plan) for each child that
            is a dict or list; copy_planned copies those, shares the rest

A caller may mutate what get returns; the next get must not see it, so every
dict and list a hit returns is new. Copying a container in Python (a call,
a dict.copy, the plan's loop) costs about 0.2 us; marshal.loads builds any
object, container or scalar, for about 0.035 us (msgpack.unpackb, 0.04-0.06
us). So the plan wins where a few containers hold many scalars (an
embedding's 384 floats: one list.copy, no float rebuilt), marshal where
containers are many and small (task trees, tool traces, records of empty
lists). snapshot counts the value's containers C and their items I and
picks marshal when C > 4 + I / 4 (0.2 C + 0.002 I > 0.4 + 0.035 (C + I),
rounded), else the plan.

CPU us per hit's copy, per kind of record, C containers and I items per
record (`python bench/bench_cache.py --forms` prints this table again, on
both data sets; 2 cores shared with 3 other engineers' jobs, so compare
within a row, not across runs):

    data    kind        C      I   plan  marshal  unpackb  chosen
    corpus  session    1.4    8.0  0.49   0.88    0.99     plan
    corpus  episode    5.5   22.0  1.58   1.79    2.21     plan
    corpus  meta      12.0   43.8  2.86   3.05    4.31     plan
    corpus  emb        2.0  389.0  2.44   7.61    6.54     plan
    shapes  plan      69.5  188.8 16.05  10.39   14.75     marshal
    shapes  trace    102.4  354.3 16.18  14.19   23.05     marshal
    shapes  tokens     3.0  186.2  1.21   7.39    7.95     plan
    shapes  state     26.1  123.8  5.11   5.62    6.71     plan
    shapes  flags     10.0   14.0  1.52   0.93    0.90     marshal

On the whole corpus a hit's copy costs 1.00 us (the plan alone 1.02,
marshal alone 1.71, msgpack 2.41) and a fill's snapshot 2.73 us (2.63 for
the plan alone: the counting rides on the walk that makes the plan, and
marshal.dumps runs only for values that keep it). A C copier (dict/list
copies sharing immutables, a CPython extension tried outside the tree) was
only 1.3-1.5x faster than marshal on the task trees and traces: allocating
and freeing the containers is most of the cost, so no such extension.
(shapes: bench/data.py generate_shapes, deeper nesting, longer lists, more
small strings.) Keeping the verified, decompressed msgpack bytes and
unpacking them on a hit (msgpack.unpackb) is slower than marshal.loads on
the task trees and traces (1.4-1.6x), even with it on the tiny containers
(0.90 against 0.93, within the noise), and 1.1-3x slower than the plan
where the plan is chosen, so no value is kept as msgpack. copy.deepcopy
(11.1 us on the corpus) and a hand-written copier without a plan (1.9 us)
lose too. Immutable
structures would cost nothing per hit but change the types callers see
(tuple is not list, mappingproxy is not dict): the cache would not be
transparent. marshal rebuilds exactly what the codec decodes (dict, list,
str, bytes, int, float, bool, None, the tuple keys msgpack makes of array
keys); its bytes are made here, from values this process decoded, and are
never read from outside.
"""

from __future__ import annotations

import marshal
from typing import Any

from .options import MAX_DEPTH

__all__ = ["snapshot", "copy_out", "copy_planned", "TooDeep", "LOADS", "loads"]

_CONTAINERS = frozenset((dict, list))
# The plan of a cached value (see the module docstring): None, (), LOADS, or
# ((index or key, plan), ...)
Plan = Any


class _Loads(tuple):  # type: ignore[type-arg]
    """The plan of a value kept as marshal bytes (LOADS): a tuple, so that
    a plan is always None or a tuple, and truthy, so that a hit's `if plan`
    test sends it past the flat-container copy."""

    def __repr__(self) -> str:
        return "LOADS"


LOADS = _Loads((0,))
loads = marshal.loads
# a hit copies by marshal when C > MARSHAL_FIXED + I / MARSHAL_ITEMS_PER_CONTAINER
# (C containers holding I items in all): see the module docstring
MARSHAL_FIXED = 4
MARSHAL_ITEMS_PER_CONTAINER = 4


class TooDeep(Exception):
    """The value is not to be cached: nested deeper than MAX_DEPTH (snapshot),
    or too big (ReadCache.fill)."""


def snapshot(v: Any) -> tuple[Any, Plan]:
    """(stored, plan): the cached form of v, a decoded value, which it does
    not keep (see the module docstring for the plans). TooDeep if v is
    nested deeper than MAX_DEPTH."""
    t = type(v)
    if t is not dict and t is not list:
        return v, None
    shape = [0, 0]  # containers, items: counted by the walk that makes the plan
    planned = _planned(v, 0, shape)
    if shape[0] > MARSHAL_FIXED + shape[1] / MARSHAL_ITEMS_PER_CONTAINER:
        return marshal.dumps(v), LOADS
    return planned


def _planned(v: Any, depth: int, shape: list[int]) -> tuple[Any, Plan]:
    """(a private copy of v, its plan): None, v is immutable (shared); (), a
    dict or list of immutables (copied with .copy()); else a tuple of (index
    or key, plan) for each child that is a dict or list. Adds v's containers
    and their items to shape[0] and shape[1]."""
    t = type(v)
    if t is dict:
        if depth >= MAX_DEPTH:
            raise TooDeep
        shape[0] += 1
        shape[1] += len(v)
        c = v.copy()
        subs: list[tuple[Any, Plan]] | None = None
        for k, x in v.items():
            tx = type(x)
            if tx is dict or tx is list:
                c[k], p = _planned(x, depth + 1, shape)
                if subs is None:
                    subs = []
                subs.append((k, p))
        return c, (tuple(subs) if subs else ())
    if t is list:
        shape[0] += 1
        shape[1] += len(v)
        if _CONTAINERS.isdisjoint(map(type, v)):
            return v.copy(), ()
        if depth >= MAX_DEPTH:
            raise TooDeep
        c = v.copy()
        subs = []
        for i, x in enumerate(v):
            tx = type(x)
            if tx is dict or tx is list:
                c[i], p = _planned(x, depth + 1, shape)
                subs.append((i, p))
        return c, tuple(subs)
    return v, None


def copy_out(value: Any, plan: Plan) -> Any:
    """What a read of a cached value with this plan returns: the value, or a
    private copy of it."""
    if plan is None:
        return value
    if plan is LOADS:
        return loads(value)
    return copy_planned(value, plan) if plan else value.copy()


def copy_planned(v: Any, plan: Plan) -> Any:
    """A copy of a cached dict or list that has nested containers."""
    c = v.copy()
    for k, sub in plan:
        c[k] = copy_planned(v[k], sub) if sub else v[k].copy()
    return c
