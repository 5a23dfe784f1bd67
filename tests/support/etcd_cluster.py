"""A real etcd cluster of 3 members on 127.0.0.1, for the tests.

    cluster = EtcdCluster.start(tmp_dir)     # waits until every member is healthy
    cluster.url("prefix")                    # "etcd://127.0.0.1:p1,127.0.0.1:p2,.../prefix"
    victim = cluster.leader()                # index of the member that leads now
    cluster.kill(victim)                     # SIGKILL
    cluster.restart(victim)                  # same name, data dir and ports
    cluster.stop()                           # SIGTERM, then SIGKILL, each member by its PID

Each member has its own free ports (client and peer) and a data directory
under the given directory. Elections are tuned short (heartbeat 50 ms,
election timeout 500 ms) so that a killed leader is replaced within about a
second; fsync stays on (a write is acknowledged once a majority synced it).
Health and leadership are read from each member's HTTP endpoints (/health,
the gRPC gateway's /v3/maintenance/status), so this needs no etcd client
library.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

ETCD = shutil.which("etcd")
START_TIMEOUT = 30.0  # seconds for a member or the cluster to become healthy


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class EtcdCluster:
    def __init__(self, base_dir: str, size: int = 3):
        self.base_dir = base_dir
        self.members: list[Member] = []
        taken: set[int] = set()
        for i in range(size):
            ports = []
            while len(ports) < 2:
                p = free_port()
                if p not in taken:
                    taken.add(p)
                    ports.append(p)
            name = f"m{i}"
            self.members.append(Member(name, ports[0], ports[1], os.path.join(base_dir, name),
                                       os.path.join(base_dir, f"{name}.log")))
        self.initial_cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    @classmethod
    def start(cls, base_dir: str, size: int = 3) -> EtcdCluster:
        cluster = cls(base_dir, size)
        try:
            for i in range(size):
                cluster._spawn(i, "new")
            cluster.wait_healthy()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    # ------------------------------------------------------------ members

    def _spawn(self, i: int, state: str) -> None:
        m = self.members[i]
        if ETCD is None:
            raise RuntimeError("no etcd binary on PATH")
        args = [
            ETCD, "--name", m.name, "--data-dir", m.data_dir,
            "--listen-client-urls", f"http://127.0.0.1:{m.client_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{m.client_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{m.peer_port}",
            "--initial-cluster", self.initial_cluster,
            "--initial-cluster-state", state,
            "--initial-cluster-token", os.path.basename(self.base_dir.rstrip("/")) or "kvstore-tests",
            "--heartbeat-interval", "50", "--election-timeout", "500",
            "--logger", "zap", "--log-level", "warn",
        ]
        log = open(m.log_path, "ab")
        try:
            m.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        finally:
            log.close()

    def kill(self, i: int) -> None:
        """SIGKILL member i and wait for it to be gone."""
        m = self.members[i]
        if m.proc is not None and m.proc.poll() is None:
            os.kill(m.proc.pid, signal.SIGKILL)
            m.proc.wait()

    def restart(self, i: int) -> None:
        """Start member i again (same data dir and ports) and wait until it is healthy."""
        self.kill(i)
        self._spawn(i, "existing")
        self._wait(lambda: self._healthy(self.members[i]), f"member {self.members[i].name} to rejoin")

    def stop(self) -> None:
        """Stop every member by its PID: SIGTERM, then SIGKILL after 5 s."""
        for m in self.members:
            if m.proc is not None and m.proc.poll() is None:
                os.kill(m.proc.pid, signal.SIGTERM)
        for m in self.members:
            if m.proc is None:
                continue
            try:
                m.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(m.proc.pid, signal.SIGKILL)
                m.proc.wait()

    # ------------------------------------------------------------ state

    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    def url(self, prefix: str = "") -> str:
        return "etcd://" + ",".join(self.endpoints()) + "/" + prefix

    def _status(self, m: Member) -> dict[str, object] | None:
        req = urllib.request.Request(f"http://{m.endpoint}/v3/maintenance/status", data=b"{}",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=1) as resp:
                return json.loads(resp.read())  # type: ignore[no-any-return]
        except (OSError, ValueError):
            return None

    def _healthy(self, m: Member) -> bool:
        if not m.running:
            return False
        try:
            with urllib.request.urlopen(f"http://{m.endpoint}/health", timeout=1) as resp:
                return bool(json.loads(resp.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def leader(self) -> int:
        """Index of the member that leads now (waits for an election if none does)."""
        found: list[int] = []

        def elected() -> bool:
            for i, m in enumerate(self.members):
                if not m.running:
                    continue
                st = self._status(m)
                if st is None:
                    continue
                header = st.get("header") or {}
                if st.get("leader") and st.get("leader") == header.get("member_id"):  # type: ignore[union-attr]
                    found.append(i)
                    return True
            return False

        self._wait(elected, "a leader")
        return found[-1]

    def wait_healthy(self) -> None:
        self._wait(lambda: all(self._healthy(m) for m in self.members if m.proc is not None),
                   "every member to be healthy")

    def _wait(self, ok: object, what: str) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if ok():  # type: ignore[operator]
                return
            time.sleep(0.05)
        logs = "\n".join(f"--- {m.name}: " + _tail(m.log_path) for m in self.members)
        raise RuntimeError(f"etcd: waited {START_TIMEOUT:g} s for {what}\n{logs}")


def _tail(path: str, n: int = 2000) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return "(no log)"
    return data[-n:].decode("utf-8", "replace")
