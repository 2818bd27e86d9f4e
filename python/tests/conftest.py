"""The harness of the Python SDK's tests: the real ``clusterd`` binary supervising real Python
workers (python/examples/chat.py and the apps under python/tests/apps), each cluster in its own
temp dir with its own control socket and port 0. Every wait polls an observable (``clusterd
status --json``, a log line) and fails with a clear message after a timeout: no sleep is used to
synchronise.

The binary is ``$CLUSTERD_BIN`` if set (scripts/test sets it), else the workspace's debug build,
built with cargo when missing.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from typing import Callable, List, Optional, TypeVar

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
CHAT = os.path.join(REPO, "python", "examples", "chat.py")
APPS = os.path.join(HERE, "apps")
NODE_DIR = os.path.join(REPO, "tests", "node")
#: Generous: the machine has 2 cores shared with parallel builds and tests.
TIMEOUT = 60.0

T = TypeVar("T")


def wait_until(what: str, probe: Callable[[], Optional[T]], timeout: float = TIMEOUT,
               context: Callable[[], str] = lambda: "") -> T:
    """Polls ``probe`` (with a short, growing pause) until it returns something other than None."""
    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{context()}")
        time.sleep(pause)  # a poll interval, not a synchronisation: the probe decides
        pause = min(pause * 2, 0.1)


def clusterd_bin() -> str:
    path = os.environ.get("CLUSTERD_BIN") or os.path.join(REPO, "target", "debug", "clusterd")
    if not os.path.exists(path):
        cargo = shutil.which("cargo")
        assert cargo, f"{path} is missing and cargo is not installed to build it"
        subprocess.run([cargo, "build", "--bin", "clusterd"], cwd=REPO, check=True)
    assert os.access(path, os.X_OK), f"{path} is not an executable clusterd"
    return path


def worker_env(extra: Optional[dict] = None) -> dict:
    """This environment without anything of an outer clusterd or service manager."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CLUSTERD_") and k not in ("NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Cluster:
    """A running clusterd; its output lines are collected by two reader threads."""

    def __init__(self, tmp: str, args: List[str], program: List[str], env: Optional[dict] = None) -> None:
        self.bin = clusterd_bin()
        self.control = os.path.join(tmp, "control.sock")
        self.lines: List[str] = []
        self._lock = threading.Lock()
        self.proc = subprocess.Popen(
            [self.bin, "--control", self.control, *args, "--", *program],
            env=worker_env(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=REPO, start_new_session=True,
        )
        for pipe in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._collect, args=(pipe,), daemon=True).start()

    def _collect(self, pipe) -> None:
        for raw in iter(pipe.readline, b""):
            with self._lock:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def output(self) -> str:
        with self._lock:
            return "\n".join(self.lines[-200:])

    def count(self, needle: str) -> int:
        with self._lock:
            return sum(needle in line for line in self.lines)

    def wait_line(self, needle: str, at_least: int = 1, timeout: float = TIMEOUT) -> None:
        wait_until(f"{at_least} line(s) with {needle!r}",
                   lambda: True if self.count(needle) >= at_least else None, timeout, self.output)

    def cli(self, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.bin, *args, "--control", self.control], capture_output=True, text=True,
                              timeout=TIMEOUT)

    def status(self) -> Optional[dict]:
        if self.proc.poll() is not None:
            raise AssertionError(f"clusterd exited ({self.proc.returncode}):\n{self.output()}")
        done = self.cli("status", "--json")
        if done.returncode != 0:
            return None
        return json.loads(done.stdout)

    def wait_status(self, what: str, pred: Callable[[dict], bool], timeout: float = TIMEOUT) -> dict:
        def probe() -> Optional[dict]:
            status = self.status()
            return status if status is not None and pred(status) else None
        return wait_until(what, probe, timeout, self.output)

    def wait_ready(self, n: int, generation: Optional[int] = None, timeout: float = TIMEOUT) -> dict:
        def ready(s: dict) -> bool:
            workers = s["workers"]
            return (s["phase"] == "ready" and len(workers) == n and all(w["state"] == "ready" for w in workers)
                    and (generation is None or all(w["generation"] == generation for w in workers)))
        return self.wait_status(f"{n} ready workers" + (f" of generation {generation}" if generation else ""),
                                ready, timeout)

    def url(self) -> str:
        status = self.wait_status("a listening address", lambda s: bool(s["listen"]))
        return "http://" + status["listen"][0]

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(TIMEOUT)
        return self.proc.returncode


@pytest.fixture
def start_cluster(tmp_path):
    """Starts clusters for one test and stops them after it."""
    started: List[Cluster] = []

    def start(args: List[str], program: Optional[List[str]] = None, env: Optional[dict] = None) -> Cluster:
        cluster = Cluster(str(tmp_path), args, program or [sys.executable, CHAT], env)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


@pytest.fixture(scope="module")
def chat4(tmp_path_factory):
    """One cluster of 4 chat workers shared by a module's tests that do not disturb it."""
    cluster = Cluster(str(tmp_path_factory.mktemp("chat4")), ["--workers", "4", "--listen", "127.0.0.1:0"],
                      [sys.executable, CHAT])
    try:
        cluster.wait_ready(4)
        yield cluster
    finally:
        cluster.stop()


def node(script: str, *args: str, timeout: float = 60.0) -> dict:
    """Runs a tests/node script (real npm socket.io-client) and returns its JSON line."""
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "socket.io-client")), (
        "tests/node/node_modules is missing: run ./scripts/test (it installs the npm packages), "
        "or `npm ci --prefix tests/node`")
    done = subprocess.run(["node", os.path.join(NODE_DIR, script), *args], capture_output=True, text=True,
                          timeout=timeout)
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise AssertionError(f"node {script} said: {done.stdout}\n{done.stderr}") from None
    assert done.returncode == 0 and result.get("ok") is True, f"node {script}: {result}\n{done.stderr}"
    return result
