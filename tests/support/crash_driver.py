"""Writer processes that get killed, and the oracle that checks what survived.

Used by tests/property/. A writer child (`child_main`, started with
`start_child`) runs threads; each thread is an *owner* with keys of its own
(``"<owner>:NNN"``, in a few namespaces) and a seeded random mix of puts,
deletes, put_many and batches (some aborted), durable or buffered. It logs,
one line per event, to its stdout (a file the parent reads after the kill):

    S <commit_seq>                       at start, before any thread writes
    W                                    next, if the store has a write-ahead log
    B <owner> <op as JSON>               before the call
    A <owner> <n> <commit_seq or ->      after the call returned (a durable
                                         op: its commit is acknowledged)
    E <owner> <n> <error class> <text>   the call raised
    V <owner> <n> ...                    a durable op returned but commit_seq
                                         did not move past the owner's previous
                                         durable op (a violation: fails the test)
    F <what> <result>                    after the threads: flush/close/reads

A value is a pure function of (owner, op number, namespace, key), so the log
says exactly what every write stored.

The oracle (`check_owner`): one thread's groups are queued and committed in
the order it submitted them, and a crash loses a suffix of the queue, so
what the store holds of an owner's keys must be the state after some prefix
of its operations (failed ones left out) that includes at least every
operation up to its last acknowledged durable one -- with a write-ahead log,
its last acknowledged one, buffered or durable (a buffered write is in the
log when its call returns, and survives SIGKILL). That single check says:
no acknowledged durable write (with a log: no acknowledged write) is lost
(unless a later write of the owner replaced it), every put_many/batch is
wholly present or wholly absent, aborted batches and failed groups never
appear, and nothing else was written.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import zlib

from . import crash_report

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- values


def value_for(owner: str, n: int, ns: str, key: str, big: int = 0):
    """The value op n of owner writes under (ns, key): every shape the codec
    stores differently (small and compressible msgpack, lists, raw bytes),
    or `big` incompressible bytes."""
    r = zlib.crc32(f"{owner}|{n}|{ns}|{key}".encode())
    if big:
        return random.Random(r).randbytes(big)
    kind = r % 4
    if kind == 0:
        return {"o": owner, "n": n, "ns": ns, "k": key}
    if kind == 1:
        return {"o": owner, "n": n, "pad": "x" * (r % 700)}  # compressed past 128 bytes
    if kind == 2:
        return [owner, n, key, r, 1.5, None, True]
    return f"{owner}|{n}|{key}".encode() + bytes(r % 300)  # top-level bytes: stored raw


def normalize(value):
    """What a value reads back as (msgpack has no tuple)."""
    if isinstance(value, dict):
        return {k: normalize(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    return value


@functools.lru_cache(maxsize=1 << 16)
def stored_value(owner: str, n: int, ns: str, key: str, big: int = 0):
    """value_for as it reads back (cached: the oracle asks for each many times;
    callers must not mutate it)."""
    return normalize(value_for(owner, n, ns, key, big))


# ---------------------------------------------------------------- operations

MIXES = {
    # kind weights (put, delete, put_many, batch), chance of durable, chance a batch aborts
    "mixed": ((4, 2, 2, 2), 0.3, 0.15),
    "durable": ((4, 0, 2, 2), 1.0, 0.0),  # every op writes a distinct value: always visible
    "buffered": ((4, 2, 2, 2), 0.0, 0.15),
}


def gen_op(rng: random.Random, n: int, owner: str, mix: str, namespaces, nkeys: int, big: int = 0) -> dict:
    weights, p_durable, p_abort = MIXES[mix]
    kind = rng.choices(("put", "delete", "put_many", "batch"), weights)[0]

    def key():
        return f"{owner}:{rng.randrange(nkeys):03d}"

    if kind == "put":
        writes = [[rng.choice(namespaces), key(), 1]]
    elif kind == "delete":
        writes = [[rng.choice(namespaces), key(), 0]]
    elif kind == "put_many":
        ns = rng.choice(namespaces)
        writes = [[ns, key(), 1] for _ in range(rng.randint(2, 8))]
    else:
        writes = [[rng.choice(namespaces), key(), 1]]
        for _ in range(rng.randint(0, 5)):
            writes.append([rng.choice(namespaces), key(), int(weights[1] == 0 or rng.random() < 0.7)])
        rng.shuffle(writes)
    return {"n": n, "k": kind, "d": rng.random() < p_durable, "w": writes,
            "x": kind == "batch" and rng.random() < p_abort, "big": big}


class _Abort(Exception):
    pass


def run_op(db, handles: dict, owner: str, op: dict) -> None:
    n, big = op["n"], op["big"]
    durable = op["d"]
    writes = op["w"]
    kind = op["k"]
    if kind == "put":
        ns, key, _ = writes[0]
        handles[ns].put(key, value_for(owner, n, ns, key, big), durable=durable)
    elif kind == "delete":
        ns, key, _ = writes[0]
        handles[ns].delete(key, durable=durable)
    elif kind == "put_many":
        ns = writes[0][0]
        handles[ns].put_many([(key, value_for(owner, n, ns, key, big)) for _, key, _ in writes],
                             durable=durable)
    else:
        try:
            with db.batch(durable=durable) as b:
                for ns, key, live in writes:
                    if live:
                        b.put(key, value_for(owner, n, ns, key, big), namespace=ns)
                    else:
                        b.delete(key, namespace=ns)
                if op["x"]:
                    raise _Abort()
        except _Abort:
            pass


def apply_op(state: dict, owner: str, op: dict) -> None:
    """The model: what op does to state {(ns, key): value}."""
    if op["x"]:
        return
    for ns, key, live in op["w"]:
        if live:
            state[(ns, key)] = stored_value(owner, op["n"], ns, key, op["big"])
        else:
            state.pop((ns, key), None)


# ---------------------------------------------------------------- the child


def open_handles(db, namespaces) -> dict:
    """{namespace: handle}. The default namespace's LMDB handle is left to
    be opened by the first write in it, racing the other threads' commits
    (that once deadlocked the process: tests/test_namespace_deadlock.py)."""
    return {ns: db if ns == "default" else db.namespace(ns) for ns in namespaces}


def run_owner(db, handles: dict, spec: dict, cfg: dict, log, deadline: float) -> None:
    """One owner's seeded operations on db, each logged before and after
    (see the module docstring). spec: owner, mix, ops; cfg: seed, nkeys,
    big, max_errors (errors tolerated before the owner stops)."""
    import kvstore

    owner = spec["owner"]
    rng = random.Random(f"{cfg['seed']}:{owner}")
    namespaces = list(handles)
    errors = 0
    last_seq = -1
    for n in range(spec["ops"]):
        if time.monotonic() > deadline:
            break
        op = gen_op(rng, n, owner, spec["mix"], namespaces, cfg.get("nkeys", 24), cfg.get("big", 0))
        log(f"B {owner} {json.dumps(op, separators=(',', ':'))}")
        log_before = _log_position(db)
        try:
            run_op(db, handles, owner, op)
        except kvstore.KVStoreError as exc:
            log(f"E {owner} {n} {type(exc).__name__} {str(exc)!r}")
            errors += 1
            if errors > cfg.get("max_errors", 0):
                return
            continue
        if not op["d"] or op["x"]:  # buffered, or an aborted batch: nothing was committed
            log(f"A {owner} {n} -")
            continue
        seq = db.stats()["commit_seq"]
        log(f"A {owner} {n} {seq}")
        if log_before is not None:
            # with the write-ahead log a durable op's commit is the log's
            # sync: it covers the op's record, which lies past the end seen
            # before the op (unless the log started a new generation)
            after = _log_position(db)
            if after[0] == log_before[0] and after[2] <= log_before[1]:
                log(f"V {owner} {n} log synced to {after[2]} after a durable op; its record lies "
                    f"past {log_before[1]} (generation {after[0]})")
        elif seq <= last_seq:
            # this thread's durable op returned, so its commit came after the
            # one of its previous durable op: the count must have moved
            log(f"V {owner} {n} commit_seq {seq} after a durable op; {last_seq} before it; "
                f"{lmdb_state(db.path)}")
        last_seq = seq


def _log_position(db):
    """(generation, end, synced) of the store's write-ahead log; None without one."""
    from kvstore import engine

    log = engine.of(db).log
    if log is None:
        return None
    st = log.state()
    return (st.gen, st.end, st.synced) if st is not None else (-1, 0, 0)


class LineLog:
    """A thread-safe in-memory log for owners run in this process."""

    def __init__(self):
        self._lock = threading.Lock()
        self.lines: list[str] = []

    def __call__(self, line: str) -> None:
        with self._lock:
            self.lines.append(line)

    def parsed(self) -> "Log":
        with self._lock:
            return Log(("\n".join(self.lines) + "\n").encode())


def child_main(config_json: str) -> None:
    """Entry point of a writer child. config: path, seed, options, threads
    [{owner, mix, ops}], namespaces, nkeys, big, fsize_margin, max_errors,
    deadline (seconds), finish ("close" | "flush+close" | "none")."""
    import kvstore

    cfg = json.loads(config_json)
    lock = threading.Lock()

    def log(line: str) -> None:
        data = (line + "\n").encode("utf-8", "backslashreplace")
        with lock:
            os.write(1, data)

    db = kvstore.open(cfg["path"], **cfg.get("options", {}))
    namespaces = cfg.get("namespaces", ["default"])
    handles = open_handles(db, namespaces)
    log(f"S {db.stats()['commit_seq']}")
    if _log_position(db) is not None:
        log("W")
    if cfg.get("fsize_margin"):
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        size = os.path.getsize(os.path.join(cfg["path"], "data.mdb"))
        resource.setrlimit(resource.RLIMIT_FSIZE, (size + cfg["fsize_margin"], resource.RLIM_INFINITY))
    deadline = time.monotonic() + cfg.get("deadline", 60)

    def work(spec):
        run_owner(db, handles, spec, cfg, log, deadline)

    threads = [threading.Thread(target=work, args=(spec,)) for spec in cfg["threads"]]
    if cfg.get("train_after") is not None:
        # a new dictionary for one namespace while the owners write (and maybe the kill comes)
        def train():
            time.sleep(cfg["train_after"])
            ns = cfg["train_namespace"]
            try:
                new_id = handles[ns].train_dictionary(samples=300, dict_size=4096)
                log(f"F trained {ns} {new_id}")
            except kvstore.KVStoreError as exc:
                log(f"F train {type(exc).__name__} {exc}")

        threads.append(threading.Thread(target=train))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    log("F threads done")
    finish = cfg.get("finish", "close")
    if "flush" in finish:
        try:
            db.flush()
            log("F flush ok")
        except kvstore.KVStoreError as exc:
            log(f"F flush {type(exc).__name__}")
    if cfg.get("read_back"):
        try:
            n = sum(1 for ns in namespaces for _ in handles[ns].scan())
            log(f"F reads ok {n}")
        except kvstore.KVStoreError as exc:
            log(f"F reads {type(exc).__name__} {exc}")
    if "close" in finish:
        try:
            db.close()
            log("F close ok")
        except kvstore.KVStoreError as exc:
            log(f"F close {type(exc).__name__}")
    if finish == "none":
        os._exit(0)  # no atexit: like a crash right after the last line


def seed_dictionaries(path: str, namespaces, n: int = 200) -> dict:
    """Write n sample values (owner "dict") into each namespace and train a
    dictionary on them, so that later values are compressed with one.
    Returns the "dict" owner's state, for verify_store(fixed=...)."""
    import kvstore

    state = {}
    with kvstore.open(path) as db:
        for ns in namespaces:
            h = db if ns == "default" else db.namespace(ns)
            items = {f"dict:{i:04d}": value_for("dict", i, ns, f"dict:{i:04d}") for i in range(n)}
            h.put_many(items, durable=True)
            h.train_dictionary(samples=n, dict_size=4096)
            state.update({(ns, k): normalize(v) for k, v in items.items()})
    return state


def lmdb_state(path: str) -> str:
    """The two meta pages of data.mdb and the shared txnid of lock.mdb, read raw."""
    import struct

    out = []
    try:
        with open(os.path.join(path, "data.mdb"), "rb") as f:
            head = f.read(8192)
        psize = struct.unpack_from("<I", head, 16 + 24)[0] or 4096
        for p in (0, 1):
            base = p * psize + 16
            last_pg, txnid = struct.unpack_from("<QQ", head, base + 120)
            out.append(f"meta{p} txnid={txnid} last_pg={last_pg}")
        # Read by another process: closing a file descriptor of lock.mdb
        # would drop every fcntl lock this process holds on it, LMDB's
        # included (then a new opener could think it is alone and reset it).
        txnid = subprocess.run(
            [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'rb'); f.seek(48); "
             "print(int.from_bytes(f.read(8), 'little'))", os.path.join(path, "lock.mdb")],
            capture_output=True, text=True, timeout=30).stdout.strip()
        out.append(f"lock.mdb txnid={txnid}")
    except (OSError, struct.error, subprocess.TimeoutExpired) as exc:
        out.append(f"({exc})")
    return ", ".join(out)


# SIGUSR1 makes a child print every thread's stack to its stderr (a hang's post-mortem).
CHILD_CODE = (
    "import faulthandler, signal, sys; faulthandler.register(signal.SIGUSR1, all_threads=True); "
    "sys.path.insert(0, {tests!r}); from support import crash_driver; crash_driver.child_main(sys.argv[1])"
)


def start_child(config: dict, out_path: str, env_extra: dict | None = None) -> subprocess.Popen:
    """Start a writer child logging to out_path (stderr to out_path + '.err')."""
    env = dict(os.environ)
    env.pop("KVSTORE_KILL_POINT", None)
    env.update(env_extra or {})
    out = open(out_path, "wb")
    err = open(out_path + ".err", "wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-c", CHILD_CODE.format(tests=TESTS_DIR), json.dumps(config)],
            stdout=out, stderr=err, env=env)
    finally:
        out.close()
        err.close()


def wait_for_line(out_path: str, prefix: str, proc: subprocess.Popen, timeout: float = 30) -> None:
    """Until out_path holds a line starting with prefix (or the child ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with open(out_path, "rb") as f:
            if any(line.startswith(prefix.encode()) for line in f.read().split(b"\n")):
                return
        if proc.poll() is not None:
            return
        time.sleep(0.005)
    raise AssertionError(f"child wrote no {prefix!r} line within {timeout} s; its stacks:\n"
                         f"{dump_stacks(proc, out_path)}")


def dump_stacks(proc: subprocess.Popen, out_path: str) -> str:
    """Every thread's stack of a live (hung) child, from its stderr."""
    if proc.poll() is not None:
        return f"(exited with {proc.returncode})"
    proc.send_signal(signal.SIGUSR1)
    time.sleep(0.5)
    with open(out_path + ".err", "rb") as f:
        return f.read().decode("utf-8", "replace")[-6000:]


def waiting_on_lmdb_write_mutex(pid: int) -> bool:
    """True if a thread of process pid sleeps in futex() on an address in
    its mapping of lock.mdb: waiting for LMDB's write (or reader) mutex."""
    try:
        ranges = []
        with open(f"/proc/{pid}/maps") as f:
            for line in f:
                if line.rstrip().endswith("/lock.mdb"):
                    lo, hi = line.split()[0].split("-")
                    ranges.append((int(lo, 16), int(hi, 16)))
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/syscall") as f:
                fields = f.read().split()
            if fields and fields[0] == "202" and any(lo <= int(fields[1], 16) < hi for lo, hi in ranges):
                return True
    except (OSError, ValueError, IndexError):
        pass
    return False


def readline_within(stream, timeout: float = 30) -> str:
    """stream.readline(), or AssertionError after timeout seconds (a hung child)."""
    import queue

    q: queue.Queue = queue.Queue()
    threading.Thread(target=lambda: q.put(stream.readline()), daemon=True).start()
    try:
        return q.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line from the child within {timeout} s") from None


def kill(proc: subprocess.Popen) -> int:
    try:
        proc.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass
    return proc.wait(60)


# ---------------------------------------------------------------- the log


class Log:
    """What one child said: per owner, its operations in order, which were
    acknowledged (returned) and which failed; the commit_seqs it printed."""

    def __init__(self, text: bytes):
        self.ops: dict[str, list] = {}
        self.acked: dict[str, set] = {}
        self.errors: dict[str, dict] = {}
        self.seqs: list[int] = []
        self.start_seq: int | None = None
        self.wal = False  # the child's store has a write-ahead log: returned buffered writes are kept
        self.finals: list[str] = []
        self.violations: list[str] = []
        self.lines: list[str] = []
        # A line cut by the kill has no newline: dropped (the child died
        # while printing it, so before the call for a B line, and an A line
        # cut short is simply not an acknowledgement).
        for raw in text.split(b"\n")[:-1]:
            line = raw.decode("utf-8", "replace")
            self.lines.append(line)
            tag, _, rest = line.partition(" ")
            if tag == "S":
                self.start_seq = int(rest)
                self.seqs.append(int(rest))
            elif tag == "B":
                owner, _, op = rest.partition(" ")
                op = json.loads(op)
                ops = self.ops.setdefault(owner, [])
                assert op["n"] == len(ops), f"{owner}: op {op['n']} logged out of order"
                ops.append(op)
            elif tag == "A":
                owner, n, seq = rest.split(" ")
                self.acked.setdefault(owner, set()).add(int(n))
                if seq != "-":
                    self.seqs.append(int(seq))
            elif tag == "E":
                owner, n, cls, text_ = rest.split(" ", 3)
                self.errors.setdefault(owner, {})[int(n)] = (cls, text_)
            elif tag == "W":
                self.wal = True
            elif tag == "V":
                self.violations.append(rest)
            elif tag == "F":
                self.finals.append(rest)

    @classmethod
    def read(cls, path: str) -> "Log":
        with open(path, "rb") as f:
            return cls(f.read())

    def acked_durable(self, owner: str) -> list[int]:
        acked = self.acked.get(owner, set())
        return [op["n"] for op in self.ops.get(owner, []) if op["d"] and not op["x"] and op["n"] in acked]

    def acked_kept(self, owner: str) -> list[int]:
        """The owner's acknowledged ops a SIGKILL may not lose: the durable
        ones; with a write-ahead log, the buffered ones too."""
        if not self.wal:
            return self.acked_durable(owner)
        acked = self.acked.get(owner, set())
        return [op["n"] for op in self.ops.get(owner, []) if not op["x"] and op["n"] in acked]

    def tail(self, n: int = 15) -> str:
        return "\n".join(self.lines[-n:])


# ---------------------------------------------------------------- the oracle


def _writers(owner: str, ops: list, failed: dict) -> dict:
    """{(ns, key): [(op number, live)]}: which ops that can have reached the
    store write each key (the last write of a key in an op wins)."""
    out: dict = {}
    for op in ops:
        if op["x"] or op["n"] in failed:
            continue
        for (ns, key), live in {(ns, key): live for ns, key, live in op["w"]}.items():
            out.setdefault((ns, key), []).append((op["n"], live))
    return out


def _stale_keys(owner: str, op: dict, writers: dict, actual: dict) -> list:
    """The keys of op whose stored state is older than op: neither op's own
    write nor one of a later op of the owner. (A value is a function of
    (owner, op number, namespace, key), so it says which op wrote it.)"""
    stale = []
    n = op["n"]
    for (ns, key), live in {(ns, key): live for ns, key, live in op["w"]}.items():
        later = [(m, lv) for m, lv in writers.get((ns, key), ()) if m > n]
        stored = actual.get((ns, key), _ABSENT)
        if stored is _ABSENT:
            ok = not live or any(not lv for _, lv in later)
        else:
            ok = any(lv and stored == stored_value(owner, m, ns, key, op["big"])
                     for m, lv in [(n, live)] + later)
        if not ok:
            stale.append((n, ns, key, "put" if live else "delete"))
    return stale


def lost_and_partial(owner: str, log: Log, actual: dict, *, exited_cleanly: bool = False):
    """The two properties, checked directly (check_owner's prefix check
    implies both; these say which writes broke it):

    lost: the writes of acknowledged ops (durable and returned; with a
    write-ahead log, buffered and returned too; every op when the child
    closed the store cleanly) whose key holds an older state
    than the op wrote, [(op, ns, key, "put" | "delete")];
    partial: the put_many/batch ops that are in the store only in part
    (one key holds the op's own value, another an older state), [op numbers].

    Returns (lost, partial, acknowledged key writes checked)."""
    ops = log.ops.get(owner, [])
    failed = log.errors.get(owner, {})
    writers = _writers(owner, ops, failed)
    if exited_cleanly:
        acked = [op for op in ops if not op["x"] and op["n"] not in failed]
    else:
        acked = [ops[n] for n in log.acked_kept(owner)]
    lost, checked = [], 0
    for op in acked:
        lost += _stale_keys(owner, op, writers, actual)
        checked += len({(ns, key) for ns, key, _ in op["w"]})
    partial = []
    for op in ops:
        if op["x"] or op["n"] in failed or len({(ns, key) for ns, key, _ in op["w"]}) < 2:
            continue
        own = [(ns, key) for ns, key, live in op["w"]
               if live and actual.get((ns, key), _ABSENT) == stored_value(owner, op["n"], ns, key, op["big"])]
        if own and _stale_keys(owner, op, writers, actual):
            partial.append(op["n"])
    return lost, partial, checked


def check_owner(owner: str, log: Log, actual: dict, *, exited_cleanly: bool = False,
                floor: int = 0, count: bool = True) -> list[int]:
    """Assert actual (the owner's keys in the store: {(ns, key): value}) is
    the state after a prefix of the owner's operations that holds every
    acknowledged durable one (with a write-ahead log, every acknowledged
    one: Log.acked_kept; all of them if the child exited cleanly).
    Returns the matching prefix lengths, counted in op numbers.

    Also asserts, and counts (crash_report; unless count=False, for an
    owner checked again), the two properties it implies: no acknowledged
    write lost, no put_many/batch partly in the store."""
    lost, partial, checked = lost_and_partial(owner, log, actual, exited_cleanly=exited_cleanly)
    if count:
        crash_report.record(acked_writes_checked=checked, writes_lost=len(lost), partial_batches=len(partial))
    assert not lost, f"owner {owner}: acknowledged writes lost (op, namespace, key, write): {lost[:10]}"
    assert not partial, f"owner {owner}: put_many/batch ops partly in the store: {partial[:10]}"
    ops = log.ops.get(owner, [])
    failed = log.errors.get(owner, {})
    acked = log.acked.get(owner, set())
    kept = log.acked_kept(owner)
    need = (max(kept) + 1) if kept else 0
    if exited_cleanly:
        need = len(ops)
    need = max(need, floor)

    def states():
        state: dict = {}
        for j in range(len(ops) + 1):
            if j and ops[j - 1]["n"] not in failed:  # a failed op never reaches the store
                apply_op(state, owner, ops[j - 1])
            yield j, state

    matches = [j for j, state in states() if state == actual]
    good = [j for j in matches if j >= need]
    if good:
        return good
    # The diagnosis: the closest prefix.
    best_j, best_n = None, None
    for j, state in states():
        if j >= need:
            n_diff = sum(1 for k in set(state) | set(actual) if state.get(k, _ABSENT) != actual.get(k, _ABSENT))
            if best_n is None or n_diff < best_n:
                best_j, best_n = j, n_diff
    best_diff = next(_diff(state, actual) for j, state in states() if j == best_j) if best_j is not None else []
    raise AssertionError(
        f"owner {owner}: the store holds no state reachable by a prefix of its {len(ops)} ops that "
        f"keeps every acknowledged durable op (needs >= {need}; prefixes matching below that: "
        f"{matches}).\n  closest prefix {best_j}: {best_n} differences {best_diff[:10]}\n"
        f"  acked: {sorted(acked)[-10:]}, failed: {sorted(failed)[:10]}")


_ABSENT = object()


def _diff(model: dict, actual: dict) -> list:
    out = []
    for k in sorted(set(model) | set(actual)):
        if model.get(k, "<absent>") != actual.get(k, "<absent>"):
            out.append((k, "model:", _short(model.get(k, "<absent>")), "store:", _short(actual.get(k, "<absent>"))))
    return out


def _short(v):
    r = repr(v)
    return r if len(r) < 80 else r[:77] + "..."


def checksum_failures(db) -> list:
    """[(namespace, key, error)] for every stored value that fails to decode
    (CorruptionError: checksum, header or payload; FormatError: a record
    version this kvstore does not read)."""
    import kvstore

    bad = []
    for ns in db.namespaces():
        h = db if ns == "default" else db.namespace(ns)
        for key in h.scan(keys_only=True):
            try:
                h.get(key)
            except (kvstore.CorruptionError, kvstore.FormatError) as exc:
                bad.append((ns, key, f"{type(exc).__name__}: {exc}"))
    return bad


def read_everything(db) -> dict:
    """Walk every namespace with scan (both directions), get and get_many;
    assert every value decodes (counted: crash_report checksum_failures) and
    the reads agree. Returns {owner: {(ns, key): value}} for keys of the
    form owner:rest."""
    bad = checksum_failures(db)
    crash_report.record(checksum_failures=len(bad))
    assert not bad, f"stored values that fail to decode: {bad[:5]}"
    by_owner: dict[str, dict] = {}
    for ns in db.namespaces():
        h = db if ns == "default" else db.namespace(ns)
        items = list(h.scan())
        keys = [k for k, _ in items]
        assert keys == sorted(keys) and len(set(keys)) == len(keys), f"{ns}: scan out of order"
        assert list(h.scan(reverse=True)) == items[::-1], f"{ns}: reverse scan differs"
        assert len(h) == len(items), f"{ns}: len() {len(h)} != scan {len(items)}"
        values = h.get_many(keys)
        for (k, v), v2 in zip(items, values):
            assert h.get(k, "<absent>") == v == v2, f"{ns} {k!r}: get/get_many/scan disagree"
            owner, sep, _ = k.decode("utf-8", "replace").partition(":")
            assert sep, f"{ns}: unexpected key {k!r}"
            by_owner.setdefault(owner, {})[(ns, k.decode())] = v
    return by_owner


def check_every_record(path: str) -> dict:
    """`kvstore check --json PATH`, in process: every record of every
    namespace read raw from one snapshot, its header, checksum and
    dictionary verified (the CLI's own code, not the store's read path)."""
    import io

    from kvstore.cli import main

    out = io.StringIO()
    status = main(["check", path, "--json"], out=out)
    doc = json.loads(out.getvalue())
    crash_report.record(values_checksummed=doc["values"], checksum_failures=doc["bad_values"])
    assert status == 0 and doc["ok"], f"kvstore check: {doc['bad'][:5]} {doc['metadata_problems'][:5]}"
    return doc


def verify_store(path: str, logs: list, known: dict | None = None, *, clean: set = frozenset(),
                 fixed: dict | None = None, open_options: dict | None = None) -> dict:
    """Reopen path and check every owner of every log, and again every owner
    verified earlier (`known`, as returned by a previous call).

    An owner's state may only move forward: a later check must find a
    prefix at least as long as the shortest one found before. (It can move
    forward after its process died: when a writer is killed between writing
    LMDB's meta page and publishing the new txnid in lock.mdb, a process
    that already has the store open reads the previous snapshot until the
    next writer takes LMDB's write lock and recovers the committed one. No
    writer of that last commit was acknowledged.)

    fixed: {owner: state} written outside any log, that must be exactly there.
    Returns {owner: {"log", "floor", "clean", "seen"}}."""
    import kvstore

    known = dict(known or {})
    for log in logs:
        for owner in log.ops:
            known[owner] = {"log": log, "floor": 0, "clean": owner in clean, "seen": None}
    state_before = lmdb_state(path)
    with kvstore.open(path, **(open_options or {})) as db:
        actual = read_everything(db)
        seq = db.stats()["commit_seq"]
    check_every_record(path)
    for log in logs:
        top = max(log.seqs, default=0)
        assert seq >= top, f"commit_seq went back: {seq} after reopen, a child printed {top}"
        assert not log.violations, f"a durable op returned with no commit after it: {log.violations[:3]}"
    fixed = fixed or {}
    for owner, state in fixed.items():
        assert actual.get(owner, {}) == state, f"{owner}: {_diff(state, actual.get(owner, {}))[:5]}"
    stray = set(actual) - set(known) - set(fixed)
    assert not stray, f"keys of unknown owners in the store: {sorted(stray)[:5]}"
    for owner, k in known.items():
        try:
            good = check_owner(owner, k["log"], actual.get(owner, {}), exited_cleanly=k["clean"],
                               floor=k["floor"], count=k["seen"] is None)
        except AssertionError as exc:
            if k["seen"] is None:
                raise
            raise AssertionError(f"{exc}\n  (verified before, with prefix >= {k['floor']}, when LMDB "
                                 f"was: {k['seen']}; now: {state_before})") from None
        k["floor"] = min(good)
        k["seen"] = state_before
    return known


# ---------------------------------------------------------------- opening hostile files


def probe_open(req: dict) -> dict:
    """Open req["path"] with kvstore and read every key of every namespace
    (scan, then get of each key), optionally write one key. Returns what
    happened: status "ok" or "error" (a KVStoreError, with its class, and
    the stage: open, read or write)."""
    import kvstore

    stage = "open"
    bad_keys = []
    try:
        db = kvstore.open(req["path"], readonly=req.get("readonly", False))
        try:
            stage = "read"
            n = 0
            for ns in db.namespaces():
                h = db if ns == "default" else db.namespace(ns)
                for key in h.scan(keys_only=True):
                    n += 1
                    try:
                        h.get(key)
                    except kvstore.KVStoreError as exc:
                        bad_keys.append([ns, key.decode("utf-8", "replace"), type(exc).__name__])
                if not bad_keys:
                    for _ in h.scan():
                        pass
            if req.get("write"):
                stage = "write"
                db.put("probe:0", "written", durable=True)
                assert db.get("probe:0") == "written"
        finally:
            db.close()
    except kvstore.KVStoreError as exc:
        return {"status": "error", "stage": stage, "type": type(exc).__name__, "msg": str(exc)[:400],
                "bad_keys": bad_keys[:10]}
    return {"status": "ok", "keys": n, "bad_keys": bad_keys[:10]}


_PROBE_SERVER = r'''
import json, os, signal, sys, time
sys.path.insert(0, {tests!r})
import kvstore
from support import crash_driver
for line in sys.stdin:
    req = json.loads(line)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            result = crash_driver.probe_open(req)
        except BaseException as exc:
            result = {{"status": "exception", "type": type(exc).__name__, "msg": repr(exc)[:400]}}
        os.write(w, json.dumps(result).encode()[:60000])
        os._exit(0)
    os.close(w)
    deadline = time.monotonic() + req.get("timeout", 10)
    status = None
    while True:
        done, st = os.waitpid(pid, os.WNOHANG)
        if done:
            status = st
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            break
        time.sleep(0.001)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    if status is None:
        result = {{"status": "timeout"}}
    elif os.WIFSIGNALED(status):
        result = {{"status": "signal", "signal": signal.Signals(os.WTERMSIG(status)).name}}
    elif not data:
        result = {{"status": "no result", "exit": os.WEXITSTATUS(status)}}
    else:
        result = json.loads(data)
    print(json.dumps(result), flush=True)
'''


class _Server:
    """A helper child process that answers one line per request line."""

    def __init__(self, code: str, env_extra: dict | None = None):
        env = dict(os.environ, **(env_extra or {}))
        env.pop("KVSTORE_KILL_POINT", None)
        self.proc = subprocess.Popen([sys.executable, "-c", code.format(tests=TESTS_DIR)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, request: str, timeout: float) -> str:
        self.proc.stdin.write(request + "\n")
        self.proc.stdin.flush()
        line = readline_within(self.proc.stdout, timeout)
        assert line, f"the helper process died (exit {self.proc.poll()})"
        return line

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(30)
        except (OSError, subprocess.TimeoutExpired):
            kill(self.proc)


class Prober(_Server):
    """A child process that opens paths for the tests, each in a process of
    its own (forked from it), so that a crash or a hang of the open shows up
    as a result ("signal", "timeout") instead of taking the test run down."""

    def __init__(self, env_extra: dict | None = None):
        super().__init__(_PROBE_SERVER, env_extra)

    def probe(self, path: str, *, timeout: float = 10, **req) -> dict:
        req.update(path=path, timeout=timeout)
        return json.loads(self.ask(json.dumps(req), timeout + 20))


# ---------------------------------------------------------------- another process's writes

_OTHER_WRITER = r'''
import base64, pickle, sys
sys.path.insert(0, {tests!r})
import kvstore
db = None  # the store of the last request, kept open until another path comes
for line in sys.stdin:
    path, ns, key, value, delete = pickle.loads(base64.b64decode(line))
    try:
        if db is None or db.path != path:
            if db is not None:
                db.close()
            db = kvstore.open(path)
        h = db if ns == "default" else db.namespace(ns)
        if delete:
            h.delete(key, durable=True)
        else:
            h.put(key, value, durable=True)
        result = ("ok", db.stats()["commit_seq"])
    except Exception as exc:
        result = ("error", repr(exc))
    print(base64.b64encode(pickle.dumps(result)).decode(), flush=True)
'''


class OtherWriter(_Server):
    """A process that writes one key durably to a store when asked (keeping
    the last store it wrote open), so a test can interleave another process's
    commits with its own reads and writes."""

    def __init__(self, env_extra: dict | None = None):
        super().__init__(_OTHER_WRITER, env_extra)

    def write(self, path: str, ns: str, key, value=None, *, delete: bool = False) -> int:
        """Commit the write in the other process; returns its commit_seq after."""
        import base64
        import pickle

        line = self.ask(base64.b64encode(pickle.dumps((path, ns, key, value, delete))).decode(), 60)
        status, result = pickle.loads(base64.b64decode(line))
        assert status == "ok", f"the other process's write failed: {result}"
        return result
