"""The framing of requests and answers that a draining Python worker follows to give back the
requests its server read and did not answer (``clusterd_worker.http1``): pure, no I/O."""

from clusterd_worker.http1 import CLOSE_POLL, CLOSE_POLL_V3, MAX_HANDBACK, Exchanges, close_poll_answer

GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"


def test_each_complete_answer_retires_the_oldest_request():
    e = Exchanges()
    e.read(GET * 4)
    assert e.unanswered() == GET * 4
    e.wrote(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhe")
    assert e.unanswered() is None, "an answer partly written"
    e.wrote(b"llo")
    assert e.unanswered() == GET * 3
    e.wrote(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
    assert e.unanswered() == GET * 2
    for byte in b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n":
        e.wrote(bytes([byte]))
    assert e.unanswered() == GET, "an interim answer does not count"


def test_bodies_and_incomplete_requests_are_kept_whole():
    e = Exchanges()
    post = b"POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
    e.read(post[:20])
    e.read(post[20:] + GET[:5])
    assert e.requests() == [post, GET[:5]]
    e.wrote(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
    assert e.requests() == [GET[:5]]


def test_what_is_not_followed_gives_nothing_back():
    for read, wrote in [
        (GET, b"HTTP/1.1 200 OK\r\n\r\nuntil the close"),
        (GET, b"HTTP/1.1 101 Switching Protocols\r\n\r\n"),
        (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b""),
        (GET * (MAX_HANDBACK // len(GET) + 1), b""),
    ]:
        e = Exchanges()
        e.read(read)
        e.wrote(wrote)
        assert e.unanswered() is None, (read[:40], wrote)


def test_the_answer_that_ends_a_long_poll():
    assert close_poll_answer(b"GET /socket.io/?EIO=4&transport=polling&t=x&sid=Ab HTTP/1.1\r\n\r\n") == CLOSE_POLL
    assert close_poll_answer(b"GET /socket.io/?EIO=3&transport=polling&sid=Ab HTTP/1.1\r\n\r\n") == CLOSE_POLL_V3
    assert CLOSE_POLL.endswith(b"\r\n\r\n1") and CLOSE_POLL_V3.endswith(b"\r\n\r\n1:1")
    for request in [
        b"POST /socket.io/?EIO=4&transport=polling&sid=Ab HTTP/1.1\r\n\r\n",  # a send
        b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n\r\n",  # a handshake
        b"GET /socket.io/?EIO=4&transport=websocket&sid=Ab HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\n\r\n",
    ]:
        assert close_poll_answer(request) is None, request
