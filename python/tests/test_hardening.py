"""The SDK's part of clusterd's hardening (issue 14, items 1, 8 and 9), under the real clusterd:
a connection whose fd the worker cannot receive costs only that connection and makes the worker
say it is full; slow request heads are timed out; every Socket.IO session is counted whatever its
transport and forgotten when it ends; a kept-alive connection never carries a request to the wrong
worker."""

import asyncio
import os
import signal
import socket
import sys
import time

import aiohttp
import pytest

from conftest import APPS, TIMEOUT, wait_until

PROBE = os.path.join(APPS, "probe.py")


def request(url, path="/", timeout=TIMEOUT):
    """One request on a new connection: (status, body), or None when the connection ended unanswered."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
        except ConnectionResetError:
            pass
    if not data:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body.decode()


def worker0(status):
    return next(w for w in status["workers"] if w["id"] == 0)


@pytest.mark.parametrize("kind", ["asgi", "aiohttp"])
def test_a_connection_the_worker_has_no_fd_for_costs_only_that_connection(start_cluster, kind):
    cluster = start_cluster(["--workers", "1", "--listen", "127.0.0.1:0"], [sys.executable, PROBE, kind],
                            env={"PROBE_NOFILE": "128", "PROBE_FILL_FDS": "1"})
    status = cluster.wait_ready(1)
    cluster.wait_line("filled ")
    url = cluster.url()
    pid = worker0(status)["pid"]

    # The kernel cannot install the fd (MSG_CTRUNC): the client loses this connection, the
    # worker reads on and tells clusterd it is full.
    assert request(url) is None
    full = cluster.wait_status("worker 0 at capacity, the lost connection counted closed",
                               lambda s: worker0(s)["at_capacity"] and worker0(s)["connections"] == 0)
    assert worker0(full)["pid"] == pid and worker0(full)["state"] == "ready", full
    # The only worker is full: clusterd answers for it instead of handing it more.
    assert request(url)[0] == 503

    os.kill(pid, signal.SIGUSR1)  # the probe closes its filler fds
    cluster.wait_line("freed ")
    cluster.wait_status("worker 0 has room again", lambda s: not worker0(s)["at_capacity"])
    assert request(url) == (200, "worker 0")
    after = cluster.status()
    assert worker0(after)["pid"] == pid and worker0(after)["restarts"] == 0, after
    assert "protocol violation" not in cluster.output()


def slow_head(url, head):
    """A connection that sends ``head`` and then nothing; returns the socket."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=TIMEOUT)
    sock.sendall(head)
    return sock


def closed_within(sock, seconds):
    """Reads until the server closes; the seconds that took (failing after ``seconds``)."""
    start = time.monotonic()
    sock.settimeout(seconds)
    data = b""
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except socket.timeout:
        raise AssertionError(f"the server kept a slow head open over {seconds}s (read {data!r})") from None
    except ConnectionResetError:
        pass
    return time.monotonic() - start, data


@pytest.mark.parametrize("kind", ["asgi", "aiohttp"])
def test_a_request_head_that_never_ends_is_timed_out(start_cluster, kind):
    cluster = start_cluster(["--workers", "1", "--listen", "127.0.0.1:0"], [sys.executable, PROBE, kind],
                            env={"CLUSTERD_HEADER_TIMEOUT_MS": "500"})
    cluster.wait_ready(1)
    url = cluster.url()
    # The first head, cut in the middle of a header.
    first = slow_head(url, b"GET / HTTP/1.1\r\nHost: slow\r\nX-Never-Ends: ")
    # A second head after a complete request on the same kept-alive connection.
    second = slow_head(url, b"GET / HTTP/1.1\r\nHost: slow\r\n\r\nGET / HTTP/1.1\r\nHost: slow\r\nX-Never: ")
    for sock in (first, second):
        with sock:
            took, data = closed_within(sock, 20)
            assert data.count(b"HTTP/1.1 200") == (1 if sock is second else 0), data
    cluster.wait_status("the timed-out connections counted closed",
                        lambda s: worker0(s)["connections"] == 0)
    assert request(url) == (200, "worker 0")


def sessions(status):
    return sum(w["sessions"] for w in status["workers"])


async def connect(url, transports):
    import socketio
    client = socketio.AsyncClient(reconnection=False)
    await client.connect(url, transports=transports, wait_timeout=TIMEOUT)
    return client


async def disconnect(client):
    """A polling client's disconnect() returns only when its pending long poll ends (up to the ping
    interval, 25 s, without clusterd too); its close packet is sent at once, so the wait is cut."""
    try:
        await asyncio.wait_for(client.disconnect(), 1.0)
    except asyncio.TimeoutError:
        http = getattr(client.eio, "http", None)
        if http is not None and not http.closed:
            await http.close()


@pytest.mark.parametrize("chat", ["aiohttp", "asgi"])
def test_every_live_session_is_counted_whatever_its_transport_and_an_ended_one_forgotten_at_once(
        start_cluster, chat):
    # A session TTL of an hour: only the worker's report can make clusterd forget a session.
    program = [sys.executable, os.path.join(os.path.dirname(APPS), "..", "examples", "chat.py")]
    if chat == "asgi":
        program.append("--asgi")
    cluster = start_cluster(["--workers", "2", "--listen", "127.0.0.1:0", "--session-ttl", "1h"], program)
    cluster.wait_ready(2)
    url = cluster.url()

    async def scenario():
        loop = asyncio.get_running_loop()
        polling = await asyncio.gather(*(connect(url, ["polling"]) for _ in range(3)))
        websocket = await asyncio.gather(*(connect(url, ["websocket"]) for _ in range(2)))
        upgraded = await connect(url, ["polling", "websocket"])
        clients = polling + websocket + [upgraded]
        await loop.run_in_executor(None, lambda: cluster.wait_status(
            "6 sessions (3 polling, 2 WebSocket only, 1 upgraded)", lambda s: sessions(s) == 6))
        start = time.monotonic()
        await asyncio.gather(*(disconnect(client) for client in clients))
        await loop.run_in_executor(None, lambda: cluster.wait_status(
            "the ended sessions forgotten", lambda s: sessions(s) == 0))
        return time.monotonic() - start

    took = asyncio.run(scenario())
    # Reported at the end itself; the bound leaves room for the status polls of a loaded machine.
    assert took < 5, f"ended sessions forgotten after {took:.1f}s"


def test_a_kept_alive_connection_never_brings_a_poll_to_the_wrong_worker(start_cluster):
    """A browser fetches the page, then polls on whatever idle connection it has to the origin. The
    page's connection was routed by its first request (no sid) to some worker; a poll of a session
    on another worker sent on it would get 400 there. The worker closes every response's
    connection instead, so each poll comes on a new connection that clusterd routes by its sid."""
    cluster = start_cluster(["--workers", "2", "--listen", "127.0.0.1:0"])
    cluster.wait_ready(2)
    url = cluster.url()

    async def scenario():
        # One HTTP client with one pooled connection, as a browser keeps one to the origin.
        connector = aiohttp.TCPConnector(limit=1, force_close=False)
        async with aiohttp.ClientSession(connector=connector) as http:
            sids = {}
            # Handshakes until there is a session on each of the two workers.
            for _ in range(40):
                async with http.get(f"{url}/socket.io/?EIO=4&transport=polling") as response:
                    assert response.status == 200, await response.text()
                    assert response.headers.get("Connection", "").lower() == "close"
                    body = await response.text()
                sid = body[body.index('"sid":"') + 7:].split('"', 1)[0]
                async with http.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}", data="40") as response:
                    assert response.status == 200, await response.text()
                async with http.get(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}") as response:
                    assert response.status == 200
                async with http.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                     data='421["whoami"]') as response:
                    assert response.status == 200
                async with http.get(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}") as response:
                    answer = await response.text()
                worker = answer[answer.index('"worker":') + 9:].split(",", 1)[0]
                sids.setdefault(worker, sid)
                if len(sids) == 2:
                    break
            assert len(sids) == 2, f"no session on each worker after 40 handshakes: {sids}"
            statuses = []
            # The page (or any other route), then a poll of each worker's session, on the pool's
            # one connection whenever the server leaves it open.
            for _ in range(10):
                for sid in sids.values():
                    async with http.get(f"{url}/") as response:
                        assert response.status == 200
                        assert response.headers.get("Connection", "").lower() == "close", response.headers
                    async with http.post(f"{url}/socket.io/?EIO=4&transport=polling&sid={sid}",
                                         data='421["whoami"]') as response:
                        statuses.append((response.status, await response.text()))
            return statuses

    statuses = asyncio.run(scenario())
    assert all(status == 200 for status, _ in statuses), statuses


BROWSER_DIR = os.path.join(os.path.dirname(APPS), "..", "..", "tests", "browser")


def test_the_chat_page_in_a_real_browser_keeps_chatting_through_a_worker_kill(start_cluster, tmp_path):
    """The Rust chat's browser test (tests/browser/chat.mjs: Chromium driven by playwright-core)
    against the Python chat: the same page, bundle and icon, the worker shown and updated after a
    reconnection, a message typed while disconnected sent once reconnected (acknowledged)."""
    import json
    import subprocess
    assert os.path.isdir(os.path.join(BROWSER_DIR, "node_modules", "playwright-core")), (
        "tests/browser/node_modules is missing: scripts/test installs it (npm ci --prefix tests/browser)")
    cluster = start_cluster(["--workers", "2", "--listen", "127.0.0.1:0"],
                            [sys.executable, os.path.join(os.path.dirname(APPS), "..", "examples", "chat.py")])
    cluster.wait_ready(2)
    url = cluster.url()
    node = subprocess.Popen(["node", os.path.join(BROWSER_DIR, "chat.mjs"), url, str(tmp_path), str(tmp_path)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        lines = []

        def next_line():
            line = node.stdout.readline()
            assert line, f"chat.mjs ended: {lines}\n{cluster.output()}"
            lines.append(line)
            return json.loads(line)

        kill = next_line()
        assert kill.get("phase") == "kill", kill
        before = cluster.status()
        worker = next(w for w in before["workers"] if w["id"] == kill["worker"])
        assert worker["pid"] == kill["pid"], (kill, before)
        os.kill(kill["pid"], signal.SIGKILL)
        node.stdin.write("killed\n")
        node.stdin.flush()
        result = next_line()
        assert node.wait(TIMEOUT * 2) == 0 and result.get("ok") is True, f"{result}\n{cluster.output()}"
        assert result["desktop"][1]["pid"] != kill["pid"], result
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()


@pytest.mark.parametrize("chat", ["aiohttp", "asgi"])
def test_the_chat_serves_the_rust_chats_page_bundle_and_icon_and_acknowledges_messages(start_cluster, chat):
    examples = os.path.join(os.path.dirname(APPS), "..", "..", "examples", "chat")
    program = [sys.executable, os.path.join(os.path.dirname(APPS), "..", "examples", "chat.py")]
    if chat == "asgi":
        program.append("--asgi")
    cluster = start_cluster(["--workers", "1", "--listen", "127.0.0.1:0"], program)
    cluster.wait_ready(1)
    url = cluster.url()

    async def scenario():
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/") as response:
                page = await response.text()
            assert '<script src="/assets/socket.io-4.8.4.min.js"></script>' in page, page[:2000]
            assert "This page came from worker 0 (pid " in page
            for path, name in [("/assets/socket.io-4.8.4.min.js", "socket.io.min.js"),
                               ("/favicon.svg", "favicon.svg"), ("/favicon.ico", "favicon.svg")]:
                async with http.get(url + path) as response:
                    assert response.status == 200, path
                    with open(os.path.join(examples, name), "rb") as f:
                        assert await response.read() == f.read(), path
        client = await connect(url, ["websocket"])
        try:
            return await client.call("chat message", "hello", timeout=TIMEOUT)
        finally:
            await disconnect(client)

    assert asyncio.run(scenario()) is True
