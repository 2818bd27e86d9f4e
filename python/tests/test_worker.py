"""The SDK against a clusterd played by the test, frame by frame (the real sockets: a
SOCK_SEQPACKET pair with SCM_RIGHTS, a SOCK_STREAM bus pair), for what the real clusterd cannot be
made to do on purpose: exact frames, split requests, malformed frames. Both servers (uvicorn for
ASGI, aiohttp) run the same probe app."""

import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from clusterd_worker import bus_protocol as b
from clusterd_worker import protocol as p
from conftest import APPS, TIMEOUT, worker_env

PROBE = os.path.join(APPS, "probe.py")


class FakeClusterd:
    """clusterd's ends of a worker's channel and bus, and the worker process."""

    def __init__(self, kind, heartbeat_ms=0, env=None):
        self.channel, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.bus, bus_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.channel.settimeout(TIMEOUT)
        self.bus.settimeout(TIMEOUT)
        self.channel.send(p.encode(p.Hello(1, 0, 1, 1, heartbeat_ms, p.MAX_FRAME)))
        self.proc = subprocess.Popen(
            [sys.executable, PROBE, kind], pass_fds=[child.fileno(), bus_child.fileno()],
            env=worker_env({"CLUSTERD_IPC_FD": str(child.fileno()), "CLUSTERD_BUS_FD": str(bus_child.fileno()),
                            "CLUSTERD_WORKER_ID": "0", "CLUSTERD_WORKER_COUNT": "1", "CLUSTERD_GENERATION": "1",
                            **(env or {})}),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        child.close()
        bus_child.close()
        self.bus_buffer = b.FrameBuffer()

    def frame(self, skip_heartbeats=True):
        """The worker's next frame."""
        while True:
            try:
                data = self.channel.recv(p.MAX_FRAME + 1)
            except socket.timeout:
                raise AssertionError(f"no frame from the worker within {TIMEOUT}s; {self.dump()}") from None
            if not data:
                raise AssertionError(f"the worker closed its channel; {self.dump()}")
            frame = p.decode_from_worker(data)
            if not (skip_heartbeats and isinstance(frame, p.Heartbeat)):
                return frame

    def bus_frame(self):
        while True:
            body = self.bus_buffer.next_body()
            if body is not None:
                return b.decode_from_worker(body)
            data = self.bus.recv(65536)
            assert data, "the worker closed its bus"
            self.bus_buffer.extend(data)

    def started(self):
        assert self.frame() == p.WorkerHello(1, self.proc.pid)
        assert self.frame() == p.Ready()
        return self

    def hand(self, conn_id, sock, initial, local=p.UnknownAddress()):
        """Hands ``sock`` to the worker with the bytes ``initial``, as clusterd does."""
        frame = p.encode(p.Connection(conn_id, p.UnknownAddress(), local, initial))
        socket.send_fds(self.channel, [frame], [sock.fileno()])
        sock.close()

    def dump(self):
        if self.proc.poll() is None:
            self.proc.kill()
        out, err = self.proc.communicate(timeout=TIMEOUT)
        return f"worker exited {self.proc.returncode}\nstdout: {out}\nstderr: {err}"

    def wait_exit(self):
        try:
            out, err = self.proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the worker did not exit within {TIMEOUT}s; {self.dump()}") from None
        return self.proc.returncode, out, err

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate(timeout=TIMEOUT)
        self.channel.close()
        self.bus.close()


@pytest.fixture(params=["asgi", "aiohttp"])
def fake(request):
    made = []

    def start(**kwargs):
        made.append(FakeClusterd(request.param, **kwargs))
        return made[-1]

    yield start
    for f in made:
        f.close()


def read_all(sock):
    sock.settimeout(TIMEOUT)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def test_a_handed_off_request_reads_initial_bytes_first_then_the_socket_and_its_close_is_reported(fake):
    clusterd = fake().started()
    body = os.urandom(100_000)
    request = (b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body)) + body
    # clusterd read the request line and part of the headers; the rest is still in the socket.
    split = 40
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    clusterd.hand(7, server, request[:split])
    client.sendall(request[split:])
    response = read_all(client)
    assert response.startswith(b"HTTP/1.1 200"), response[:200]
    assert response.endswith(f"{len(body)} {hashlib.sha256(body).hexdigest()}".encode()), response[-200:]
    assert clusterd.frame() == p.ConnectionsClosed((7,))


def test_a_tcp_connection_whole_request_in_initial_and_two_requests_kept_alive(fake):
    clusterd = fake().started()
    listener = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(listener.getsockname())
    server, _ = listener.accept()
    listener.close()
    first = b"GET / HTTP/1.1\r\nHost: t\r\n\r\n"
    local = p.V4Address(bytes([127, 0, 0, 1]), server.getsockname()[1])
    clusterd.hand(3, server, first, local)
    client.settimeout(TIMEOUT)
    got = b""
    while b"worker 0" not in got:
        chunk = client.recv(65536)
        assert chunk, got
        got += chunk
    client.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc")
    rest = read_all(client)
    assert rest.endswith(f"3 {hashlib.sha256(b'abc').hexdigest()}".encode()), rest
    assert clusterd.frame() == p.ConnectionsClosed((3,))


def test_sessions_wait_for_the_ack_and_bad_ids_are_refused(fake):
    clusterd = fake().started()
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    clusterd.hand(1, server, b"GET /session?sid=abc_-1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    opened = clusterd.frame()
    assert isinstance(opened, p.SessionOpen) and opened.sid == "abc_-1", opened
    clusterd.channel.send(p.encode(p.SessionAck(opened.seq)))
    assert read_all(client).endswith(b"acked")
    bad_client, bad_server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    clusterd.hand(2, bad_server, b"GET /session?sid=a%20b HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert read_all(bad_client).startswith(b"HTTP/1.1 400")
    closed = {clusterd.frame(), clusterd.frame()}
    assert closed == {p.ConnectionsClosed((1,)), p.ConnectionsClosed((2,))} or closed == {p.ConnectionsClosed((1, 2))}


def test_bus_publish_requests_and_a_message_over_the_limit_refused_before_sending(fake):
    clusterd = fake().started()

    def get(conn_id, target):
        client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        clusterd.hand(conn_id, server, f"GET {target} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        return client

    assert read_all(get(1, "/big")).endswith(b"refused")
    assert read_all(get(2, "/publish?m=hi")).endswith(b"published")
    assert clusterd.bus_frame() == b.Publish("probe", b"hi", False)  # nothing of /big before it
    asking = get(3, "/ask")
    request = clusterd.bus_frame()
    assert isinstance(request, b.Request) and request.payload == b"question" and request.timeout_ms == 5000
    clusterd.bus.sendall(b.encode_frame(b.Answers(request.id, [(1, b"yes")], [2])))
    assert json.loads(read_all(asking).split(b"\r\n\r\n", 1)[1]) == {"answers": [[1, "yes"]], "missing": [2]}


def test_a_raising_handler_loses_no_other_client(fake):
    clusterd = fake().started()
    waiting, waiting_server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    clusterd.hand(1, waiting_server, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n")
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    clusterd.hand(2, server, b"GET /raise HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert read_all(client).startswith(b"HTTP/1.1 500")
    waiting.sendall(b"ok")
    waiting.shutdown(socket.SHUT_WR)
    assert read_all(waiting).endswith(f"2 {hashlib.sha256(b'ok').hexdigest()}".encode())


def test_a_malformed_frame_from_clusterd_makes_the_worker_drain_and_exit(fake):
    clusterd = fake().started()
    clusterd.channel.send(b"\x7f")
    code, out, err = clusterd.wait_exit()
    assert code == 0 and "malformed frame" in err and "drained" in out, (code, out, err)


def test_the_drain_frame_and_sigterm_end_the_worker_after_its_connections(fake):
    clusterd = fake(heartbeat_ms=50).started()
    assert clusterd.frame(skip_heartbeats=False) == p.Heartbeat()
    # A connection handed over just before the drain frame is still served.
    client, server = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    clusterd.hand(9, server, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    clusterd.channel.send(p.encode(p.Drain(5000)))
    clusterd.proc.terminate()
    assert read_all(client).endswith(b"worker 0")
    code, out, err = clusterd.wait_exit()
    assert code == 0 and "drained" in out, (code, out, err)


def test_the_end_of_the_channel_drains_the_worker(fake):
    clusterd = fake().started()
    clusterd.channel.shutdown(socket.SHUT_RDWR)
    code, out, err = clusterd.wait_exit()
    assert code == 0 and "drained" in out, (code, out, err)


@pytest.mark.parametrize("kind", ["asgi", "aiohttp"])
def test_workers_that_listen_themselves_are_served_by_the_real_clusterd(start_cluster, kind):
    # No --listen: each worker asks clusterd to listen (Listen/Listening), as Node's server.listen.
    cluster = start_cluster(["--workers", "2"], [sys.executable, PROBE, kind], env={"LISTEN": "127.0.0.1:0"})
    cluster.wait_ready(2)
    cluster.wait_line("listening on 127.0.0.1:", at_least=2)
    host, port = cluster.url()[len("http://"):].rsplit(":", 1)
    seen = set()
    for _ in range(8):
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as client:
            client.sendall(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            response = read_all(client)
        assert response.startswith(b"HTTP/1.1 200"), response
        seen.add(response.rsplit(b"\r\n\r\n", 1)[1])
    assert seen == {b"worker 0", b"worker 1"}, seen


def test_the_bus_under_the_real_clusterd_publishes_counts_sends_and_gathers_answers(start_cluster):
    cluster = start_cluster(["--workers", "3", "--ready-timeout", "60s"],
                            [sys.executable, os.path.join(APPS, "bus_probe.py")])
    cluster.wait_ready(3)
    cluster.wait_line("worker 0 answers ['1:q', '2:q'] missing []")
    for line in ("worker 1 news from 0: hello", "worker 2 news from 0: hello", "worker 1 direct from 0: psst",
                 "worker 0 undeliverable 99"):
        cluster.wait_line(line)
    # No echo: the publisher does not get its own message.
    assert cluster.count("worker 0 news from") == 0, cluster.output()
