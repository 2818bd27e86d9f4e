"""python/examples/chat.py under the real clusterd with 4 workers, driven by real Socket.IO clients:
npm socket.io-client (tests/node) and python-socketio's AsyncClient."""

import asyncio
import http.client
import os
import signal
import subprocess
import sys
import threading
import urllib.parse

import socketio

from conftest import CHAT, TIMEOUT, node, wait_until, worker_env


async def connect(url, transports, **options):
    client = socketio.AsyncClient(reconnection=options.pop("reconnection", False), **options)
    await asyncio.wait_for(client.connect(url, transports=transports), TIMEOUT)
    return client


async def close(clients):
    """Disconnects python-socketio clients. A polling client's disconnect() returns only when its
    pending long poll ends (up to the ping interval, 25 s, without clusterd too): its disconnect
    packet is sent at once, so the wait is bounded here."""
    for client in clients:
        try:
            await asyncio.wait_for(client.disconnect(), 1.0)
        except asyncio.TimeoutError:
            http = getattr(client.eio, "http", None)
            if http is not None and not http.closed:
                await http.close()


async def whoami(client):
    return await client.call("whoami", timeout=TIMEOUT)


def test_not_started_by_clusterd_it_says_how_to_run_it():
    done = subprocess.run([sys.executable, CHAT], capture_output=True, text=True, timeout=TIMEOUT,
                          env=worker_env())
    assert done.returncode != 0
    assert "CLUSTERD_IPC_FD is not set" in done.stderr and "clusterd --workers" in done.stderr, done.stderr


def test_every_long_polling_session_stays_on_its_worker_under_concurrency(chat4):
    url = chat4.url()
    # 16 npm clients, 10 requests each, at once.
    result = node("clients.mjs", url, "polling", "16", "10")
    owners = [client["workers"] for client in result["clients"]]
    assert all(len(workers) == 1 for workers in owners), f"a session moved between workers: {owners}"
    assert len({w[0] for w in owners}) > 1, f"all sessions on one worker: {owners}"

    async def python_clients():
        clients = await asyncio.gather(*(connect(url, ["polling"]) for _ in range(12)))
        try:
            seen = await asyncio.gather(*(asyncio.gather(*(whoami(c) for _ in range(6))) for c in clients))
        finally:
            await close(clients)
        return [{me["worker"] for me in answers} for answers in seen], [a[0]["transport"] for a in seen]

    workers, transports = asyncio.run(python_clients())
    assert all(len(w) == 1 for w in workers), f"a python-socketio session moved: {workers}"
    assert set(transports) == {"polling"}


def test_websocket_only_and_polling_then_upgrade_clients_work(chat4):
    url = chat4.url()
    for mode in ("websocket", "default"):
        result = node("clients.mjs", url, mode, "8", "5")
        assert {c["transport"] for c in result["clients"]} == {"websocket"}, result
        assert all(len(c["workers"]) == 1 for c in result["clients"]), result

    async def upgraded():
        client = await connect(url, ["polling", "websocket"])
        try:
            answers = [await whoami(client) for _ in range(10)]
        finally:
            await close([client])
        return answers

    answers = asyncio.run(upgraded())
    assert len({a["worker"] for a in answers}) == 1, answers
    assert answers[-1]["transport"] == "websocket", answers


def test_every_emit_reaches_every_client_on_every_worker(chat4):
    url = chat4.url()
    for mode in ("polling", "websocket"):
        result = node("broadcast.mjs", url, mode, "8")
        assert result["received"] == 8, result

    async def broadcast():
        clients = await asyncio.gather(*(connect(url, ["websocket"] if i % 2 else ["polling"]) for i in range(8)))
        got = [[] for _ in clients]
        texts = [f"message {i}" for i in range(5)]
        done = [asyncio.get_running_loop().create_future() for _ in clients]

        def handler(i):
            def on_message(text):
                got[i].append(text)
                if len(got[i]) == len(texts) and not done[i].done():
                    done[i].set_result(None)
            return on_message

        for i, client in enumerate(clients):
            client.on("chat message", handler(i))
        workers = [(await whoami(c))["worker"] for c in clients]
        for text in texts:
            await clients[0].emit("chat message", text)
        try:
            await asyncio.wait_for(asyncio.gather(*done), TIMEOUT)
        finally:
            await close(clients)
        return workers, got, texts

    workers, got, texts = asyncio.run(broadcast())
    assert set(workers) == {0, 1, 2, 3}, f"the clients did not cover the 4 workers: {workers}"
    assert all(g == texts for g in got), f"not every client got every message, in order: {got}"


def test_rooms_counts_and_emits_with_callbacks_work_across_workers(start_cluster):
    cluster = start_cluster(["--workers", "4", "--listen", "127.0.0.1:0"])
    cluster.wait_ready(4)
    url = cluster.url()

    async def python_callbacks():
        clients = await asyncio.gather(*(connect(url, ["websocket"]) for _ in range(4)))
        for client in clients:
            client.on("question", lambda question, c=client: {"id": c.get_sid(), "question": question})
        try:
            workers = {(await whoami(c))["worker"] for c in clients}
            answer = await clients[0].call("ask all", "who?", timeout=TIMEOUT)
            return workers, answer, sorted(c.get_sid() for c in clients)
        finally:
            await close(clients)

    workers, answer, sids = asyncio.run(python_callbacks())
    assert not answer["errors"], answer
    assert sorted(a["id"] for a in answer["answers"]) == sids, (answer, sids)
    assert len(workers) > 1, workers
    # npm clients: every client on every worker answers (emits with callbacks across workers).
    asked = node("ask_all.mjs", url, "8")
    assert asked["answers"] == 8 and len(set(asked["workers"])) == 4, asked

    async def count_until_alone():
        # The npm clients of the last script may still be closing: wait until only this one is left.
        client = await connect(url, ["websocket"])
        try:
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while (count := await client.call("clients", timeout=TIMEOUT)) != 1:
                assert asyncio.get_running_loop().time() < deadline, f"{count} clients left"
                await asyncio.sleep(0.05)  # poll interval of the count, which decides
        finally:
            await close([client])

    asyncio.run(count_until_alone())
    rooms = node("rooms.mjs", url)
    assert rooms["clients"] == 6, rooms


def test_a_worker_killed_with_sigkill_loses_only_its_own_clients(start_cluster):
    cluster = start_cluster(["--workers", "4", "--listen", "127.0.0.1:0"])
    status = cluster.wait_ready(4)
    url = cluster.url()

    async def scenario():
        clients = []
        for i in range(12):
            client = socketio.AsyncClient(reconnection=True, reconnection_delay=0.05, reconnection_delay_max=0.2)
            client.disconnects = 0
            client.connects = asyncio.Event()

            def on_disconnect(*_, c=client):
                c.disconnects += 1

            def on_connect(c=client):
                c.connects.set()

            client.on("disconnect", on_disconnect)
            client.on("connect", on_connect)
            await asyncio.wait_for(client.connect(url, transports=["websocket"] if i % 3 else ["polling"]), TIMEOUT)
            clients.append(client)
        before = [(await whoami(c))["worker"] for c in clients]
        victim_id = before[0]
        victim_pid = next(w["pid"] for w in status["workers"] if w["id"] == victim_id)
        victims = [c for c, w in zip(clients, before) if w == victim_id]
        for c in victims:
            c.connects.clear()
        os.kill(victim_pid, signal.SIGKILL)
        await asyncio.wait_for(asyncio.gather(*(c.connects.wait() for c in victims)), TIMEOUT)
        after = [(await whoami(c))["worker"] for c in clients]
        # The survivors lost nothing: a broadcast still reaches every client.
        got = [asyncio.get_running_loop().create_future() for _ in clients]
        for c, future in zip(clients, got):
            c.on("chat message", lambda text, f=future: f.done() or f.set_result(text))
        await clients[-1].emit("chat message", "after the kill")
        texts = await asyncio.wait_for(asyncio.gather(*got), TIMEOUT)
        disconnects = [c.disconnects for c in clients]
        await close(clients)
        return before, after, victim_id, disconnects, texts

    before, after, victim_id, disconnects, texts = asyncio.run(scenario())
    for worker, count in zip(before, disconnects):
        assert count == (1 if worker == victim_id else 0), (before, disconnects)
    assert all(a == b for a, b in zip(after, before) if b != victim_id), (before, after)
    assert texts == ["after the kill"] * len(before)
    cluster.wait_status("the killed worker restarted",
                        lambda s: any(w["id"] == victim_id and w["restarts"] >= 1 and w["state"] == "ready"
                                      for w in s["workers"]))


class Load:
    """Threads that each request ``/`` on a new connection, in a loop, until stopped."""

    def __init__(self, url: str, threads: int = 4) -> None:
        self.addr = urllib.parse.urlparse(url).netloc
        self.stop = threading.Event()
        self.ok = 0
        self.failed = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            host, port = self.addr.rsplit(":", 1)
            connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
            try:
                connection.request("GET", "/", headers={"Connection": "close"})
                response = connection.getresponse()
                body = response.read()
                outcome = None if response.status == 200 and b"clusterd chat" in body else f"status {response.status}"
            except OSError as error:
                outcome = repr(error)
            finally:
                connection.close()
            with self.lock:
                if outcome is None:
                    self.ok += 1
                else:
                    self.failed.append(outcome)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(TIMEOUT)


def test_a_rolling_reload_under_load_fails_no_request(start_cluster):
    cluster = start_cluster(["--workers", "4", "--listen", "127.0.0.1:0"])
    before = cluster.wait_ready(4)
    load = Load(cluster.url())
    try:
        wait_until("requests served before the reload", lambda: True if load.ok >= 20 else None)
        done = cluster.cli("reload")
        assert done.returncode == 0, done.stderr
        # Workers are replaced one at a time, each after its successor is ready (a Python start
        # takes seconds on a loaded machine): a bound for four of them.
        after = cluster.wait_ready(4, generation=2, timeout=4 * TIMEOUT)
        served_during = load.ok
        wait_until("requests served after the reload", lambda: True if load.ok >= served_during + 20 else None)
    finally:
        load.finish()
    assert not load.failed, f"{len(load.failed)} failed requests of {load.ok + len(load.failed)}: {load.failed[:5]}"
    assert {w["pid"] for w in before["workers"]}.isdisjoint({w["pid"] for w in after["workers"]})
    # Each old worker drained and exited cleanly.
    cluster.wait_line("drained", at_least=4)


def test_a_worker_drains_on_sigterm_and_answers_the_request_in_flight(start_cluster):
    cluster = start_cluster(["--workers", "1", "--listen", "127.0.0.1:0"])
    status = cluster.wait_ready(1)
    host, port = cluster.url()[len("http://"):].rsplit(":", 1)

    def request(method, target, body=None):
        connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
        try:
            connection.request(method, target, body=body)
            response = connection.getresponse()
            return response.status, response.read().decode(), response.getheader("Connection")
        finally:
            connection.close()

    code, body, connection = request("GET", "/socket.io/?EIO=4&transport=polling")
    assert code == 200 and connection == "close", (code, body, connection)
    sid = body.split('"sid":"')[1].split('"')[0]
    poll = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    assert request("POST", poll, "40")[0] == 200
    assert request("GET", poll)[1].startswith("40")  # the namespace is connected
    # The next poll waits for data: it is in flight when the worker gets SIGTERM.
    pending = {}
    poller = threading.Thread(target=lambda: pending.update(result=request("GET", poll)), daemon=True)
    poller.start()
    os.kill(status["workers"][0]["pid"], signal.SIGTERM)
    poller.join(TIMEOUT)
    assert not poller.is_alive(), "the poll in flight was not answered"
    code, body, _ = pending["result"]
    assert code == 200 and body.startswith("1"), f"expected the close packet, got {code} {body!r}"
    cluster.wait_line("worker 0 drained")
    cluster.wait_line("exited with code 0")
    cluster.wait_status("the slot restarted", lambda s: s["workers"][0]["restarts"] >= 1
                        and s["workers"][0]["state"] == "ready")


def test_the_asgi_chat_on_uvicorn_is_sticky_and_broadcasts(start_cluster):
    cluster = start_cluster(["--workers", "2", "--listen", "127.0.0.1:0"], [sys.executable, CHAT, "--asgi"])
    cluster.wait_ready(2)
    url = cluster.url()
    result = node("clients.mjs", url, "polling", "8", "8")
    owners = [client["workers"] for client in result["clients"]]
    assert all(len(w) == 1 for w in owners) and len({w[0] for w in owners}) == 2, owners
    assert node("broadcast.mjs", url, "default", "6")["received"] == 6
    host, port = url[len("http://"):].rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT)
    connection.request("GET", "/")
    assert b"clusterd chat" in connection.getresponse().read()
    connection.close()


def test_rooms_and_disconnect_of_a_client_on_another_worker_and_a_raising_handler(start_cluster):
    from conftest import APPS

    cluster = start_cluster(["--workers", "2", "--listen", "127.0.0.1:0"],
                            [sys.executable, os.path.join(APPS, "sio_probe.py")])
    cluster.wait_ready(2)
    url = cluster.url()

    async def scenario():
        clients, workers = [], {}
        while len(workers) < 2:
            client = await connect(url, ["websocket"])
            clients.append(client)
            workers.setdefault((await whoami(client))["worker"], client)
            assert len(clients) <= 8, "two clients on two workers"
        admin, target = workers[0], workers[1]
        # A handler that raises loses no client: the raiser and the others are still served.
        await admin.emit("boom")
        answers = [await whoami(c) for c in clients]  # each raises if its client got no answer
        assert len(answers) == len(clients) and all(c.connected for c in clients)
        got = []
        marker = asyncio.Event()
        gone = asyncio.Event()

        def on_message(text):
            got.append(text)
            if text.startswith("marker"):
                marker.set()

        target.on("message", on_message)
        target.on("disconnect", lambda *_: gone.set())
        me = target.get_sid()

        async def step(*admin_ops, room, text):
            for op in admin_ops:
                assert await admin.call("admin", op, timeout=TIMEOUT) == "done"
            await admin.emit("to", (room, text))
            marker.clear()
            await admin.emit("to", (me, f"marker {text}"))  # after the room message, on the same bus
            await asyncio.wait_for(marker.wait(), TIMEOUT)

        await step(("enter", me, "r"), room="r", text="in r")
        await step(("leave", me, "r"), room="r", text="left r")
        await step(("enter", me, "r2"), ("close", me, "r2"), room="r2", text="r2 closed")
        assert await admin.call("admin", ("disconnect", me), timeout=TIMEOUT) == "done"
        await asyncio.wait_for(gone.wait(), TIMEOUT)
        await close([c for c in clients if c is not target])
        return got

    got = asyncio.run(scenario())
    assert got == ["in r", "marker in r", "marker left r", "marker r2 closed"], got
