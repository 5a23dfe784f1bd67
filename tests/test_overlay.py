"""kvstore.overlay.Overlay, alone: the pending writes reads see before a commit.

A hypothesis model test drives random enters, drops (stale ones included),
forget_unsorted and range snapshots against a plain dict, in namespaces with
few pending keys and with more than ORDER_FROM (where snapshots go through
the ordered index); unit tests pin each method's edge cases.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kvstore.overlay import ORDER_FROM, TOMBSTONE, Overlay

NAMESPACES = ("small", "big")
# Two-byte keys over a small alphabet: about 290 distinct keys, so a namespace
# can pass ORDER_FROM and ranges hit existing keys, their neighbours and gaps.
_ALPHABET = b"abcdefghijklmnop\x00\xff"
ALL_KEYS = [bytes([a]) for a in _ALPHABET] + [bytes([a, b]) for a in _ALPHABET for b in _ALPHABET]
KEYS = st.sampled_from(ALL_KEYS)
BOUNDS = st.none() | st.binary(min_size=0, max_size=3)
RECORDS = st.just(TOMBSTONE) | st.binary(min_size=1, max_size=4)


def ops_of(ns, pairs):
    """A group's writes as the writer hands them over: (ns, dbi, key, record)."""
    return [(ns, None, key, record) for key, record in pairs]


def model_snapshot(model, ns, lo, hi):
    return sorted((k, rec) for k, (_seq, rec) in model.get(ns, {}).items()
                  if (lo is None or lo <= k) and (hi is None or k < hi))


def check(overlay, model, ns, lo, hi):
    got = overlay.snapshot(ns, lo, hi)
    want = model_snapshot(model, ns, lo, hi)
    if lo is None and hi is None:
        assert sorted(got) == want  # unbounded: any order, same entries
        assert len(got) == len(want)
    else:
        assert got == want  # bounded: exactly these, in key order
    return got


# One step of the model test.
_enter = st.tuples(st.just("enter"), st.sampled_from(NAMESPACES),
                   st.lists(st.tuples(KEYS, RECORDS), min_size=1, max_size=60))
# Enough distinct keys at once to take "big" past ORDER_FROM: a stride through
# ALL_KEYS (342 = 2 * 3 * 3 * 19 keys; the strides are coprime to it).
_bulk = st.tuples(st.just("bulk"), st.integers(ORDER_FROM, len(ALL_KEYS)),
                  st.sampled_from([1, 5, 7, 11, 13]), st.integers(0, len(ALL_KEYS) - 1), RECORDS)
# Many writes to few keys: more keys added than forget_unsorted lets pass.
_churn = st.tuples(st.just("churn"), st.sampled_from(NAMESPACES),
                   st.lists(KEYS, min_size=1, max_size=20, unique=True))
_drop = st.tuples(st.just("drop"), st.lists(st.integers(0, 10**6), min_size=1, max_size=80))
_snap = st.tuples(st.just("snapshot"), st.sampled_from(NAMESPACES), BOUNDS, BOUNDS)
_forget = st.tuples(st.just("forget"), st.sampled_from(NAMESPACES), BOUNDS, BOUNDS)
STEPS = st.lists(st.one_of(_enter, _bulk, _churn, _drop, _snap, _snap, _forget), min_size=1, max_size=40)


@settings(max_examples=max(150, settings.default.max_examples), deadline=None)
@given(STEPS)
def test_overlay_snapshots_match_a_dict_model_through_enters_drops_and_forgets(steps):
    overlay = Overlay()
    model: dict[str, dict[bytes, tuple[int, object]]] = {}
    entered: list[tuple[str, bytes, int]] = []  # every (ns, key, seq) ever entered
    seq = 0
    for step in steps:
        kind = step[0]
        if kind in ("enter", "churn", "bulk"):
            if kind == "bulk":
                _, n, stride, start, record = step
                ns = "big"
                items = [(ALL_KEYS[(start + i * stride) % len(ALL_KEYS)], record) for i in range(n)]
            else:
                _, ns, items = step
            if kind == "churn":
                repeat = 2600 // len(items) + 1  # over 4 * 342 + 1024
                items = [(k, bytes([i % 251 + 1])) for i in range(repeat) for k in items]
            seq += 1
            overlay.enter(seq, ops_of(ns, items))
            for key, record in items:
                model.setdefault(ns, {})[key] = (seq, record)
                entered.append((ns, key, seq))
        elif kind == "drop":
            if not entered:
                continue
            # Picks from the whole history: many are stale (a later seq replaced them).
            batch = [entered[i % len(entered)] for i in step[1]]
            overlay.drop(batch)
            for ns, key, s in batch:
                pending = model.get(ns, {})
                if key in pending and pending[key][0] == s:
                    del pending[key]
        elif kind == "snapshot":
            _, ns, lo, hi = step
            check(overlay, model, ns, lo, hi)
        else:
            _, ns, lo, hi = step
            before = check(overlay, model, ns, lo, hi)
            overlay.forget_unsorted()
            assert check(overlay, model, ns, lo, hi) == before
        # Point lookups (what reads do, without the lock) agree with the model too.
        for ns in NAMESPACES:
            assert {k: v for k, v in overlay.get(ns, {}).items()} == model.get(ns, {})
    for ns in NAMESPACES:
        check(overlay, model, ns, None, None)
        check(overlay, model, ns, b"b", b"k")


# ---------------------------------------------------------------- enter


def test_enter_records_each_key_with_its_group_seq_and_a_later_write_replaces_it():
    ov = Overlay()
    ov.enter(1, ops_of("ns", [(b"a", b"1"), (b"b", b"2")]))
    ov.enter(2, ops_of("ns", [(b"a", TOMBSTONE)]))
    assert ov["ns"] == {b"a": (2, TOMBSTONE), b"b": (1, b"2")}


def test_enter_of_one_group_writing_a_key_twice_keeps_the_last_write():
    ov = Overlay()
    ov.enter(5, ops_of("ns", [(b"k", b"first"), (b"k", b"second")]))
    assert ov.snapshot("ns") == [(b"k", b"second")]


def test_enter_keeps_namespaces_apart():
    ov = Overlay()
    ov.enter(1, ops_of("one", [(b"k", b"1")]) + ops_of("two", [(b"k", b"2")]))
    assert ov.snapshot("one") == [(b"k", b"1")]
    assert ov.snapshot("two") == [(b"k", b"2")]


# ---------------------------------------------------------------- drop


def test_drop_removes_an_entry_that_still_holds_its_seq():
    ov = Overlay()
    ov.enter(1, ops_of("ns", [(b"a", b"1"), (b"b", b"2")]))
    ov.drop([("ns", b"a", 1)])
    assert ov.snapshot("ns") == [(b"b", b"2")]


def test_drop_of_a_stale_seq_keeps_the_newer_write():
    ov = Overlay()
    ov.enter(1, ops_of("ns", [(b"a", b"old")]))
    ov.enter(2, ops_of("ns", [(b"a", b"new")]))
    ov.drop([("ns", b"a", 1)])
    assert ov["ns"][b"a"] == (2, b"new")


def test_drop_of_a_missing_key_or_namespace_is_a_no_op():
    ov = Overlay()
    ov.enter(1, ops_of("ns", [(b"a", b"1")]))
    ov.drop([("ns", b"zz", 1), ("elsewhere", b"a", 1)])
    assert ov.snapshot("ns") == [(b"a", b"1")]
    assert ov.snapshot("elsewhere") == []


def test_drop_removes_a_pending_tombstone_too():
    ov = Overlay()
    ov.enter(3, ops_of("ns", [(b"gone", TOMBSTONE)]))
    assert ov.snapshot("ns") == [(b"gone", TOMBSTONE)]
    ov.drop([("ns", b"gone", 3)])
    assert ov.snapshot("ns") == []


# ---------------------------------------------------------------- snapshot


def test_snapshot_of_an_unknown_namespace_is_empty_with_or_without_bounds():
    ov = Overlay()
    assert ov.snapshot("nothing") == []
    assert ov.snapshot("nothing", b"a", b"z") == []


def test_snapshot_bounds_are_half_open_lo_included_hi_excluded():
    ov = Overlay()
    ov.enter(1, ops_of("ns", [(k, k) for k in (b"a", b"b", b"c", b"d")]))
    assert ov.snapshot("ns", b"b", b"d") == [(b"b", b"b"), (b"c", b"c")]
    assert ov.snapshot("ns", b"b") == [(b"b", b"b"), (b"c", b"c"), (b"d", b"d")]
    assert ov.snapshot("ns", None, b"b") == [(b"a", b"a")]
    assert ov.snapshot("ns", b"c", b"c") == []
    assert ov.snapshot("ns", b"d", b"a") == []  # lo past hi: nothing


def test_bounded_snapshot_is_in_key_order_below_order_from():
    ov = Overlay()
    keys = [b"m", b"a", b"z", b"\x00", b"\xff", b"ab"]
    ov.enter(1, ops_of("ns", [(k, b"v") for k in keys]))
    assert [k for k, _ in ov.snapshot("ns", b"")] == sorted(keys)


def _big(n=ORDER_FROM * 2, seq=1, ns="ns"):
    ov = Overlay()
    ov.enter(seq, ops_of(ns, [(b"k%05d" % i, b"v%d" % i) for i in range(n)]))
    return ov


def test_bounded_snapshot_from_order_from_keys_on_uses_and_keeps_the_ordered_index():
    ov = _big()
    got = ov.snapshot("ns", b"k00010", b"k00013")
    assert got == [(b"k00010", b"v10"), (b"k00011", b"v11"), (b"k00012", b"v12")]
    assert "ns" in ov._ordered  # the namespace is now kept in order


def test_keys_entered_after_the_first_ordered_snapshot_are_sorted_into_later_ones():
    ov = _big()
    ov.snapshot("ns", b"k", b"l")
    ov.enter(2, ops_of("ns", [(b"k00010x", b"new"), (b"a", b"first"), (b"k00005", b"again")]))
    got = ov.snapshot("ns", b"", b"k00011")
    assert [k for k, _ in got] == [b"a"] + [b"k%05d" % i for i in range(10)] + [b"k00010", b"k00010x"]
    assert dict(got)[b"k00005"] == b"again"
    assert len(got) == len(set(k for k, _ in got))  # a re-entered key is listed once


def test_ordered_snapshot_leaves_out_keys_dropped_since_and_lists_them_again_when_reentered():
    ov = _big()
    ov.snapshot("ns", b"k", b"l")
    ov.drop([("ns", b"k00001", 1), ("ns", b"k00002", 1)])
    assert [k for k, _ in ov.snapshot("ns", b"k00000", b"k00004")] == [b"k00000", b"k00003"]
    ov.enter(2, ops_of("ns", [(b"k00002", TOMBSTONE)]))
    assert ov.snapshot("ns", b"k00000", b"k00004") == [
        (b"k00000", b"v0"), (b"k00002", TOMBSTONE), (b"k00003", b"v3")]


def test_ordered_index_rebuilt_after_most_keys_were_dropped_still_answers_right():
    ov = _big(ORDER_FROM * 4)
    ov.snapshot("ns", b"k", b"l")
    ov.drop([("ns", b"k%05d" % i, 1) for i in range(ORDER_FROM * 4) if i % 7])
    ov.enter(2, ops_of("ns", [(b"k%05dz" % i, b"z") for i in range(ORDER_FROM)]))
    want = sorted([(b"k%05d" % i, b"v%d" % i) for i in range(0, ORDER_FROM * 4, 7)]
                  + [(b"k%05dz" % i, b"z") for i in range(ORDER_FROM)])
    assert ov.snapshot("ns", b"k", b"l") == want


def test_unbounded_snapshot_lists_every_pending_entry_once():
    ov = _big()
    ov.snapshot("ns", b"k", b"l")
    ov.enter(2, ops_of("ns", [(b"k00003", TOMBSTONE)]))
    got = ov.snapshot("ns")
    assert len(got) == ORDER_FROM * 2
    assert dict(got)[b"k00003"] is TOMBSTONE


# ---------------------------------------------------------------- added, forget_unsorted


def test_added_notes_keys_a_conditional_group_entered_itself():
    # A ConditionalGroup puts its own entries into the overlay, then calls added().
    ov = _big()
    ov.snapshot("ns", b"k", b"l")
    ov["ns"][b"j"] = (2, b"cond")
    ov.added(ops_of("ns", [(b"j", b"cond")]))
    assert ov.snapshot("ns", b"j", b"k") == [(b"j", b"cond")]


def test_forget_unsorted_drops_the_index_of_a_namespace_written_on_without_snapshots():
    ov = _big()
    ov.snapshot("ns", b"k", b"l")
    for seq in range(2, 20):  # 18 * 200 keys added (over 4 * 256 + 1024), none sorted in
        ov.enter(seq, ops_of("ns", [(b"k%05d" % (i % 50), b"s%d" % seq) for i in range(200)]))
    before = ov.snapshot("ns")
    ov.forget_unsorted()
    assert "ns" not in ov._ordered and "ns" not in ov._unordered
    assert sorted(ov.snapshot("ns")) == sorted(before)
    assert ov.snapshot("ns", b"k00049", b"k00051") == [(b"k00049", b"s19"), (b"k00050", b"v50")]


def test_forget_unsorted_keeps_the_index_of_a_namespace_with_few_keys_added():
    ov = _big()
    ov.snapshot("ns", b"k", b"l")
    ov.enter(2, ops_of("ns", [(b"x", b"1")]))
    ov.forget_unsorted()
    assert "ns" in ov._ordered
    assert ov.snapshot("ns", b"x") == [(b"x", b"1")]


def test_forget_unsorted_on_an_overlay_without_ordered_namespaces_changes_nothing():
    ov = Overlay()
    ov.enter(1, ops_of("ns", [(b"a", b"1")]))
    ov.forget_unsorted()
    assert ov.snapshot("ns", b"a") == [(b"a", b"1")]
