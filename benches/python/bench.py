"""The Python workers' bench: python-socketio on 4 workers under clusterd against one
python-socketio process alone, and clusterd's bus against Redis for cross-worker emits.

    scripts/python-bench            (installs wrk and redis-server if missing, builds the release
                                     clusterd, makes the venv, then runs this)

Three scenarios, side by side in one run, each in 3 interleaved rounds (medians); prints Markdown
tables:

1. **Sessions/s**: wrk opens Engine.IO polling sessions (the handshake ``GET
   /socket.io/?EIO=4&transport=polling``), one per new connection as new clients do, against
   ``app.py alone`` and against 4 ``app.py clusterd`` workers (each session reported to clusterd
   and acknowledged before the handshake leaves).
2. **Broadcast deliveries/s**: ``RECEIVERS`` raw WebSocket Socket.IO clients connected; one of them
   sends ``MESSAGES`` ``"chat message"`` events in a burst; every client counts what reaches it.
   deliveries/s = messages x clients / time until the last client got the last message.
3. **Cross-worker emit latency**: a python-socketio client on one worker emits, a client on
   another worker receives; one message at a time; p50 and p99 over ``LATENCY_SAMPLES`` with
   ClusterdManager and with python-socketio's AsyncRedisManager on a local redis-server, the same
   4 workers under clusterd otherwise.

The clients run on the same machine as the servers and take CPU from them: the figures are those
of this machine, not of the servers alone.
"""

import argparse
import asyncio
import base64
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import socketio

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
APP = os.path.join(HERE, "app.py")
#: Any wait of the bench fails after this many seconds.
TIMEOUT = 60.0
#: Concurrent connections of wrk in the sessions scenario.
CONNECTIONS = 128
#: Receivers of the broadcast scenario.
RECEIVERS = 100
#: Messages of the broadcast scenario.
MESSAGES = 200
#: Samples of the latency scenario (after WARMUP).
LATENCY_SAMPLES = 1000
WARMUP = 100


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what, probe, timeout=TIMEOUT):
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"bench: timed out waiting for {what}")
        time.sleep(0.05)  # a poll interval; the probe decides


class Server:
    """The servers under test: one process alone, or clusterd with workers."""

    def __init__(self, clusterd, mode, workers=4, extra=()):
        self.tmp = tempfile.mkdtemp(prefix="clusterd-pybench-")
        self.clusterd = clusterd
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERD_")}
        if mode == "alone":
            port = free_port()
            self.proc = subprocess.Popen([sys.executable, APP, "alone", str(port)], env=env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            self.addr = f"127.0.0.1:{port}"
            wait_for("the server alone", lambda: self._connects(self.addr))
            self.pids = [self.proc.pid]
        else:
            self.control = os.path.join(self.tmp, "control.sock")
            self.proc = subprocess.Popen(
                [clusterd, "--workers", str(workers), "--listen", "127.0.0.1:0", "--control", self.control, "--",
                 sys.executable, APP, mode, *extra],
                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
            status = wait_for(f"{workers} ready workers", lambda: self._ready(workers))
            self.addr = status["listen"][0]
            self.pids = [self.proc.pid] + [w["pid"] for w in status["workers"]]

    @staticmethod
    def _connects(addr):
        host, port = addr.rsplit(":", 1)
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return True
        except OSError:
            return False

    def _ready(self, n):
        done = subprocess.run([self.clusterd, "status", "--json", "--control", self.control], capture_output=True,
                              text=True)
        if done.returncode != 0:
            return None
        status = json.loads(done.stdout)
        ok = status["phase"] == "ready" and len(status["workers"]) == n and all(
            w["state"] == "ready" for w in status["workers"])
        return status if ok else None

    def cpu_seconds(self):
        """CPU time of the server processes so far (clusterd and its workers)."""
        total = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
            except OSError:
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)


# -- 1. sessions/s ------------------------------------------------------------------------------


def sessions(server, seconds):
    done = subprocess.run(
        ["wrk", "-t1", f"-c{CONNECTIONS}", f"-d{seconds}s", "-H", "Connection: close",
         f"http://{server.addr}/socket.io/?EIO=4&transport=polling"],
        capture_output=True, text=True, timeout=seconds + TIMEOUT)
    out = done.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    if bad or errors:
        print(f"bench: wrk reported failures:\n{out}", file=sys.stderr)
    return rate


# -- 2. broadcast deliveries/s ------------------------------------------------------------------


MARKER = b'"chat message"'


def ws_frame(text):
    """A masked WebSocket text frame from a client (payloads under 126 bytes)."""
    data = text.encode()
    mask = os.urandom(4)
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data))


class Receiver:
    """A raw WebSocket Socket.IO client that only counts the chat messages reaching it."""

    async def open(self, addr):
        host, port = addr.rsplit(":", 1)
        self.reader, self.writer = await asyncio.open_connection(host, int(port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.writer.write((f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {addr}\r\n"
                           f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        head = await self.reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        self.writer.write(ws_frame("40"))
        self.buffer = b""
        while b"40{" not in self.buffer:  # the namespace is connected
            self.buffer += await self.reader.read(65536)
        self.count = 0
        return self

    async def expect(self, n):
        # The tail kept from the last read is shorter than the marker, so a marker found in
        # tail + data ends in data: one cut in two by a read is counted once.
        tail = b""
        while self.count < n:
            data = await self.reader.read(1 << 20)
            if not data:
                raise SystemExit("bench: a receiver's connection closed")
            chunk = tail + data
            self.count += chunk.count(MARKER)
            tail = chunk[-(len(MARKER) - 1):]

    def close(self):
        self.writer.close()


async def broadcast(server):
    receivers = [await Receiver().open(server.addr) for _ in range(RECEIVERS)]
    sender = receivers[0]
    cpu = server.cpu_seconds()
    own = time.process_time()
    start = time.perf_counter()
    for i in range(MESSAGES):
        sender.writer.write(ws_frame(f'42["chat message","m{i}"]'))
    await sender.writer.drain()
    await asyncio.wait_for(asyncio.gather(*(r.expect(MESSAGES) for r in receivers)), TIMEOUT)
    elapsed = time.perf_counter() - start
    cpu = server.cpu_seconds() - cpu
    own = time.process_time() - own
    for r in receivers:
        r.close()
    # CPU per delivery of the servers and of this process (the receivers), in microseconds.
    return MESSAGES * RECEIVERS / elapsed, cpu / (MESSAGES * RECEIVERS) * 1e6, own / (MESSAGES * RECEIVERS) * 1e6


# -- 3. cross-worker emit latency ---------------------------------------------------------------


async def latency(server):
    url = f"http://{server.addr}"
    clients = []
    by_worker = {}
    while len(by_worker) < 2:
        client = socketio.AsyncClient(reconnection=False)
        await client.connect(url, transports=["websocket"])
        clients.append(client)
        me = await client.call("whoami", timeout=TIMEOUT)
        by_worker.setdefault(me["worker"], client)
        if len(clients) > 16:
            raise SystemExit("bench: could not place two clients on two workers")
    sender, receiver = list(by_worker.values())[:2]
    loop = asyncio.get_running_loop()
    waiting = {}

    def on_message(text):
        future = waiting.pop(text, None)
        if future is not None:
            future.set_result(time.perf_counter())

    receiver.on("chat message", on_message)
    samples = []
    for i in range(WARMUP + LATENCY_SAMPLES):
        text = f"t{i}"
        future = loop.create_future()
        waiting[text] = future
        start = time.perf_counter()
        await sender.emit("chat message", text)
        arrived = await asyncio.wait_for(future, TIMEOUT)
        if i >= WARMUP:
            samples.append((arrived - start) * 1000)
    for client in clients:
        await client.disconnect()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.99) - 1]


def start_redis():
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for("redis-server", lambda: Server._connects(f"127.0.0.1:{port}"))
    return proc, f"redis://127.0.0.1:{port}"


#: Interleaved rounds of each scenario; the table shows medians.
ROUNDS = 3


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=5, help="length of each wrk run")
    parser.add_argument("--workers", type=int, default=4, help="workers under clusterd")
    parser.add_argument("--clusterd", default=os.environ.get("CLUSTERD_BIN",
                                                             os.path.join(REPO, "target", "release", "clusterd")))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    redis, url = start_redis()
    servers = []
    try:
        alone = Server(args.clusterd, "alone")
        servers.append(alone)
        pool = Server(args.clusterd, "clusterd", workers=args.workers)
        servers.append(pool)
        redis_pool = Server(args.clusterd, "redis", workers=args.workers, extra=(url,))
        servers.append(redis_pool)
        # Interleaved, so that a change in the machine's load hits both sides alike.
        s_alone, s_pool, b_alone, b_pool, l_bus, l_redis = [], [], [], [], [], []
        cpu_alone, cpu_pool = [], []
        for _ in range(ROUNDS):
            rate, server_us, client_us = asyncio.run(broadcast(alone))
            b_alone.append(rate)
            cpu_alone.append((server_us, client_us))
            rate, server_us, client_us = asyncio.run(broadcast(pool))
            b_pool.append(rate)
            cpu_pool.append((server_us, client_us))
        for _ in range(ROUNDS):
            l_bus.append(asyncio.run(latency(pool)))
            l_redis.append(asyncio.run(latency(redis_pool)))
        # Last: each handshake leaves a session behind until its ping timeout (45 s), whose expiry
        # would load the servers during the other scenarios.
        for _ in range(ROUNDS):
            s_alone.append(sessions(alone, args.seconds))
            s_pool.append(sessions(pool, args.seconds))
    finally:
        for server in servers:
            server.stop()
        redis.terminate()
        redis.wait()

    def ratios(pool_runs, alone_runs):
        r = sorted(p / a for p, a in zip(pool_runs, alone_runs))
        return f"**{statistics.median(pool_runs) / statistics.median(alone_runs):.2f}x** ({r[0]:.2f} to {r[-1]:.2f})"

    med = statistics.median
    print(f"python-socketio, {cores} cores, load average {os.getloadavg()[0]:.1f} at the end; "
          f"{ROUNDS} interleaved rounds, medians; {args.workers} workers under clusterd against one process alone\n")
    print(f"| scenario | one process alone | {args.workers} workers under clusterd | clusterd / alone (range over rounds) |")
    print("|---|---|---|---|")
    print(f"| Engine.IO sessions/s (`wrk -c{CONNECTIONS}`, a new connection each) | {med(s_alone):,.0f} | "
          f"{med(s_pool):,.0f} | {ratios(s_pool, s_alone)} |")
    print(f"| broadcast deliveries/s ({RECEIVERS} clients, {MESSAGES} messages) | {med(b_alone):,.0f} | "
          f"{med(b_pool):,.0f} | {ratios(b_pool, b_alone)} |")
    print(f"\nCPU per delivery, servers / receivers: alone {med(c[0] for c in cpu_alone):.1f} / "
          f"{med(c[1] for c in cpu_alone):.1f} us, under clusterd {med(c[0] for c in cpu_pool):.1f} / "
          f"{med(c[1] for c in cpu_pool):.1f} us")
    print(f"\ncross-worker emit latency, {args.workers} workers under clusterd, one message at a time, "
          f"{LATENCY_SAMPLES} samples a round, medians of the rounds\n")
    print("| manager | p50 | p99 |")
    print("|---|---|---|")
    print(f"| ClusterdManager (clusterd's bus) | {med(x[0] for x in l_bus):.2f} ms | {med(x[1] for x in l_bus):.2f} ms |")
    print(f"| AsyncRedisManager (local redis-server) | {med(x[0] for x in l_redis):.2f} ms | "
          f"{med(x[1] for x in l_redis):.2f} ms |")


if __name__ == "__main__":
    main()
