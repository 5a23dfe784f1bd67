"""Copy-on-read for the read cache (kvstore/cache.py): a private copy of a
cached value, made by a plan computed once, when the value is cached.

`snapshot(value)` makes the cached form at fill: (a private copy, its plan).
A hit hands out `copy_out(value, plan)`; `ReadCache.lookup` inlines it and
calls `copy_planned(value, plan)` for a value with nested containers.

Decoded values, copied by a plan made at fill
---------------------------------------------
A caller may mutate what get returns; the next get must not see it. The
forms, measured per record on the 20,000 records of
../shared/corpus/agent_memory.jsonl.zst (CPU us per record, fastest of 7
rounds; `python bench/bench_cache.py --forms` prints this table again):

    form                                   hit    fill
    copy.deepcopy                         20.7    20.7
    hand-written copier (dict/list only)   2.8     2.8
    copier driven by a plan (chosen)       1.2     3.4   (copy + plan)
    msgpack bytes: unpackb / packb         3.6     2.9
    marshal bytes: loads / dumps           2.3     2.8
    immutable structures: - / freeze       0       6.7

    hit by kind    records   copier   plan   marshal
    session         12,316     1.2     0.7      1.6
    episode          3,613     4.8     2.6      4.3
    session meta     2,495    10.3     5.4      4.2
    embedding        1,576    18.8     3.4     11.7

The hit decided it: a hit must cost a third of an uncached get, and where a
get is slow the copy is slow too unless it shares what it can. The cache
keeps decoded objects and, per value, a plan saying which children are
dicts or lists: a hit is dict.copy()/list.copy() at C speed for each
container, shares every immutable (str, bytes, int, float, bool, None, the
tuple keys msgpack makes of array keys), and never inspects a list of
scalars again (an embedding's 384 floats cost a type scan once, at fill;
marshal.loads rebuilds them on every hit). marshal is faster only on the
session metadata (lists of small dicts), 12% of the records. Immutable
structures cost nothing per hit but change the types callers see (tuple
is not list, mappingproxy is not dict): the cache would not be transparent.
"""

from __future__ import annotations

from .options import MAX_DEPTH

__all__ = ["snapshot", "copy_out", "copy_planned", "TooDeep"]

_CONTAINERS = frozenset((dict, list))


class TooDeep(Exception):
    """The value is not to be cached: nested deeper than MAX_DEPTH (snapshot),
    or too big (ReadCache.fill)."""


def snapshot(v, depth=0):
    """(a private copy of v, its plan). Plans: None, v is immutable (shared);
    (), a dict or list of immutables (copied with .copy()); else a tuple of
    (index or key, plan) for each child that is a dict or list."""
    t = type(v)
    if t is dict:
        if depth >= MAX_DEPTH:
            raise TooDeep
        c = v.copy()
        subs = None
        for k, x in v.items():
            tx = type(x)
            if tx is dict or tx is list:
                c[k], p = snapshot(x, depth + 1)
                if subs is None:
                    subs = []
                subs.append((k, p))
        return c, (tuple(subs) if subs else ())
    if t is list:
        if _CONTAINERS.isdisjoint(map(type, v)):
            return v.copy(), ()
        if depth >= MAX_DEPTH:
            raise TooDeep
        c = v.copy()
        subs = []
        for i, x in enumerate(v):
            tx = type(x)
            if tx is dict or tx is list:
                c[i], p = snapshot(x, depth + 1)
                subs.append((i, p))
        return c, tuple(subs)
    return v, None


def copy_out(value, plan):
    """What a read of a cached value with this plan returns: the value, or a
    private copy of it."""
    if plan is None:
        return value
    return copy_planned(value, plan) if plan else value.copy()


def copy_planned(v, plan):
    """A copy of a cached dict or list that has nested containers."""
    c = v.copy()
    for k, sub in plan:
        c[k] = copy_planned(v[k], sub) if sub else v[k].copy()
    return c
