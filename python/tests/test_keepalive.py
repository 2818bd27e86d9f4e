"""Issue 13, item 4, for Python workers: reloads and scale-downs lose no request of clients that keep
their connections alive and never retry. The race: the draining server closes an idle kept-alive
connection at the moment its client sends the next request on it. The SDK gives such connections
back to clusterd instead (``Handback``), which routes them to a live worker.

The workers are ``apps/probe.py`` on aiohttp and on uvicorn (no Socket.IO: their responses keep
the connection alive). Then the Socket.IO sessions of a draining chat worker end spread over half
the grace, not all at once.
"""

import http.client
import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from conftest import APPS, NODE_DIR, TIMEOUT, wait_until

PROBE = os.path.join(APPS, "probe.py")
#: Clients, each with one kept-alive connection at a time.
CLIENTS = 8


class KeepAliveLoad:
    """Clients sending ``GET /`` on their kept-alive connections until ``finish``; a new connection
    only after ``Connection: close`` or a failure. A request without a response is a failure:
    nothing is retried."""

    def __init__(self, url: str) -> None:
        self.host, port = url[len("http://"):].rsplit(":", 1)
        self.port = int(port)
        self.served = 0
        self.failed = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._client, daemon=True) for _ in range(CLIENTS)]
        for thread in self.threads:
            thread.start()

    def _client(self) -> None:
        connection = None
        while not self.stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
            try:
                connection.request("GET", "/")
                response = connection.getresponse()
                response.read()
                outcome = None if response.status == 200 else f"status {response.status}"
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as error:
                outcome = repr(error)
                connection.close()
                connection = None
            with self.lock:
                if outcome is None:
                    self.served += 1
                else:
                    self.failed.append(outcome)
        if connection is not None:
            connection.close()

    def wait_served(self, what: str) -> None:
        before = self.served
        wait_until(f"requests served {what}", lambda: True if self.served > before + 20 else None)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)


class PipeliningLoad(KeepAliveLoad):
    """Clients that write ``DEPTH`` requests ``GET /wait?ms=2`` at once on their kept-alive
    connections, then read their ``DEPTH`` answers, again and again; a request whose answer does
    not come is a failure, and so is one behind an answer that said ``Connection: close`` (a
    client must not read on past it, RFC 9112, 9.6)."""

    DEPTH = 4

    def _client(self) -> None:
        batch = b"GET /wait?ms=2 HTTP/1.1\r\nHost: t\r\n\r\n" * self.DEPTH
        sock = None
        while not self.stop.is_set():
            if sock is None:
                sock = socket.create_connection((self.host, self.port), timeout=TIMEOUT)
                reader = sock.makefile("rb")
            outcomes = []
            try:
                sock.sendall(batch)
                for k in range(self.DEPTH):
                    response = http.client.HTTPResponse(_Replay(reader), method="GET")
                    response.begin()
                    response.read()
                    outcomes.append(None if response.status == 200 else f"status {response.status}")
                    if response.will_close:
                        outcomes += ["unanswered after a Connection: close"] * (self.DEPTH - k - 1)
                        sock.close()
                        sock = None
                        break
            except (OSError, http.client.HTTPException) as error:
                outcomes += [repr(error)] * (self.DEPTH - len(outcomes))
                sock.close()
                sock = None
            with self.lock:
                for outcome in outcomes:
                    if outcome is None:
                        self.served += 1
                    else:
                        self.failed.append(outcome)
        if sock is not None:
            sock.close()


class _Replay:
    """A socket stand-in for ``HTTPResponse`` that reads from one shared buffered reader, so that
    several answers can be read in turn from one connection."""

    def __init__(self, reader) -> None:
        self.reader = reader

    def makefile(self, *args, **kwargs):
        return self

    def __getattr__(self, name):
        return getattr(self.reader, name)

    def close(self) -> None:
        """The answer is read; the connection goes on."""


def _through_reloads_and_a_scale_down(cluster, load) -> None:
    try:
        load.wait_served("at the start")
        for generation in (2, 3, 4):
            done = cluster.cli("reload")
            assert done.returncode == 0, done.stderr
            # A Python start takes seconds on a loaded machine: a bound for two of them.
            cluster.wait_ready(2, generation=generation, timeout=2 * TIMEOUT)
            load.wait_served(f"after the reload to generation {generation}")
        done = cluster.cli("scale", "1")
        assert done.returncode == 0, done.stderr
        cluster.wait_ready(1, timeout=2 * TIMEOUT)
        load.wait_served("after the scale-down")
    finally:
        load.finish()


@pytest.mark.parametrize("load_class", [KeepAliveLoad, PipeliningLoad], ids=["kept-alive", "pipelining"])
@pytest.mark.parametrize("kind", ["aiohttp", "asgi"])
def test_clients_lose_no_request_through_reloads_and_a_scale_down(start_cluster, kind, load_class):
    """Kept-alive clients, one request at a time or pipelining, through reloads and a scale-down."""
    cluster = start_cluster(["--workers", "2", "--listen", "127.0.0.1:0", "--grace", "20s"],
                            [sys.executable, PROBE, kind])
    cluster.wait_ready(2)
    load = load_class(cluster.url())
    _through_reloads_and_a_scale_down(cluster, load)
    print(f"{kind}: {load.served} requests served, {len(load.failed)} failed")
    assert not load.failed, f"{len(load.failed)} failed requests of {load.served + len(load.failed)}: {load.failed[:5]}"


def _reconnects_through_a_drain(start_cluster, clients: int, env: dict, polling: bool = False) -> dict:
    """``clients`` socket.io-clients (tests/node/drain_spread.mjs) on one chat worker (``--grace
    8s``), then a reload: when their sessions ended and when they reconnected (ms since the first
    end)."""
    cluster = start_cluster(["--workers", "1", "--listen", "127.0.0.1:0", "--grace", "8s"], env=env)
    status = cluster.wait_ready(1)
    assert os.path.isdir(os.path.join(NODE_DIR, "node_modules", "socket.io-client")), (
        "tests/node/node_modules is missing: run ./scripts/test, or `npm ci --prefix tests/node`")
    node = subprocess.Popen(["node", os.path.join(NODE_DIR, "drain_spread.mjs"), cluster.url(), str(clients), "90000"]
                            + (["polling"] if polling else []),
                            stdout=subprocess.PIPE, text=True)
    try:
        connected = json.loads(node.stdout.readline())
        assert connected.get("phase") == "connected", connected
        assert set(connected["pids"]) == {status["workers"][0]["pid"]}, connected
        done = cluster.cli("reload")
        assert done.returncode == 0, done.stderr
        result = json.loads(node.stdout.readline())
        assert result.get("phase") == "done", f"{result}\n{cluster.output()}"
        assert node.wait(TIMEOUT) == 0
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
    # The next cluster of the test uses the same control socket path.
    assert cluster.stop() == 0, cluster.output()
    return result


def _peak_per_second(times) -> int:
    return max(sum(1 for t in times[i:] if t < times[i] + 1000) for i in range(len(times)))


def test_socketio_sessions_of_a_draining_worker_end_spread_over_the_grace(start_cluster):
    clients = 30
    at_once = _reconnects_through_a_drain(start_cluster, clients, {"CLUSTERD_DRAIN_SPREAD_MS": "0"})
    spread = _reconnects_through_a_drain(start_cluster, clients, {})
    for name, r in (("at once", at_once), ("spread", spread)):
        print(f"{name}: {clients} sessions ended over {r['disconnects'][-1]} ms ({r['reasons']}), reconnected over "
              f"{r['reconnects'][-1] - r['reconnects'][0]} ms, at most {_peak_per_second(r['reconnects'])} in one second")
        assert len(r["reconnects"]) == clients, f"{name}: every client reconnected"
    # The spread is 4 s (half of --grace 8s): generous bounds for 2 loaded cores.
    assert spread["disconnects"][-1] >= 2000, spread["disconnects"]
    # Evenly over 4 s, about a quarter of the clients a second (socket.io-client's own random delay
    # blurs it): at most half of them in any one second.
    assert _peak_per_second(spread["reconnects"]) <= clients // 2, (spread, at_once)


def test_long_polling_sessions_of_a_draining_worker_end_spread_over_the_grace(start_cluster):
    """The same with clients on long-polling only (``transports: ["polling"]``): each pending poll
    is answered with an Engine.IO ``close`` packet at its session's turn."""
    clients = 30
    at_once = _reconnects_through_a_drain(start_cluster, clients, {"CLUSTERD_DRAIN_SPREAD_MS": "0"}, polling=True)
    spread = _reconnects_through_a_drain(start_cluster, clients, {}, polling=True)
    for name, r in (("at once", at_once), ("spread", spread)):
        print(f"{name}, polling: {clients} sessions ended over {r['disconnects'][-1]} ms ({r['reasons']}), reconnected "
              f"over {r['reconnects'][-1] - r['reconnects'][0]} ms, at most {_peak_per_second(r['reconnects'])} in one "
              "second")
        assert len(r["reconnects"]) == clients, f"{name}: every client reconnected"
    assert spread["disconnects"][-1] >= 2000, spread["disconnects"]
    assert _peak_per_second(spread["reconnects"]) <= clients // 2, (spread, at_once)
