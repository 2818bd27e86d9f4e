"""PROTOCOL.md's test vectors, encoded and decoded byte for byte, and the input a decoder refuses."""

import os
import re

import pytest

from clusterd_worker import bus_protocol as b
from clusterd_worker import protocol as p
from clusterd_worker.codec import Malformed, Oversized, Reader, Trailing, Writer

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOCOL_MD = os.path.join(HERE, "..", "..", "worker-sdk", "PROTOCOL.md")


def hx(text):
    return bytes.fromhex(text)


TO_WORKER = [
    (p.Hello(1, 2, 4, 1, 1000, 65536), hx("00 01 02 04 01 FB E8 03 FC 00 00 01 00")),
    (p.Drain(30000), hx("01 FB 30 75")),
    (
        p.Connection(7, p.V4Address(bytes([127, 0, 0, 1]), 50000), p.V6Address(bytes(15) + b"\x01", 3000),
                     b"GET / HTTP/1.1\r\n"),
        hx("02 07 01 7f 00 00 01 fb 50 c3 02 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 fb b8 0b"
           "10 47 45 54 20 2f 20 48 54 54 50 2f 31 2e 31 0d 0a"),
    ),
    (p.SessionAck(5), hx("03 05")),
    (p.Listening(2, p.Bound("127.0.0.1:3000")),
     hx("04 02 00 0e 31 32 37 2e 30 2e 30 2e 31 3a 33 30 30 30")),
    (p.Listening(3, p.Failed("in use")), hx("04 03 01 06 69 6e 20 75 73 65")),
    (p.MetricsRequest(300), hx("05 fb 2c 01")),
]

FROM_WORKER = [
    (p.WorkerHello(1, 4242), hx("00 01 FB 92 10")),
    (p.Ready(), hx("01")),
    (p.Heartbeat(), hx("02")),
    (p.ConnectionsClosed((1, 300)), hx("03 02 01 fb 2c 01")),
    (p.SessionOpen(1, "abc"), hx("04 01 03 61 62 63")),
    (p.SessionClose("abc"), hx("05 03 61 62 63")),
    (p.Listen(2, "127.0.0.1:0"), hx("06 02 0b 31 32 37 2e 30 2e 30 2e 31 3a 30")),
    (p.Capacity(True), hx("07 01")),
    (p.Capacity(False), hx("07 00")),
    (p.Handback(300, b"GET /?sid=a HTTP/1.1\r\n"), hx("08 fb 2c 01 16") + b"GET /?sid=a HTTP/1.1\r\n"),
    (p.MetricsAvailable(), hx("09")),
    (p.Metrics(300, 7, b"hits 1\n"), hx("0a fb 2c 01 07 07 68 69 74 73 20 31 0a")),
]


@pytest.mark.parametrize("frame,data", TO_WORKER)
def test_to_worker_vectors_encode_and_decode_exactly(frame, data):
    assert p.encode(frame) == data
    assert p.decode_to_worker(data) == frame


@pytest.mark.parametrize("frame,data", FROM_WORKER)
def test_from_worker_vectors_encode_and_decode_exactly(frame, data):
    assert p.encode(frame) == data
    assert p.decode_from_worker(data) == frame


def test_the_vectors_are_the_ones_protocol_md_shows():
    # Every vector above appears in PROTOCOL.md as hex (so neither drifts alone).
    with open(PROTOCOL_MD, encoding="utf-8") as f:
        doc = re.sub(r"[^0-9a-f]", "", f.read().lower())
    for _, data in TO_WORKER[:2] + FROM_WORKER[:1] + FROM_WORKER[3:]:
        assert data.hex() in doc, data.hex()


def test_varints_take_the_shortest_form_and_refuse_markers_wider_than_the_field():
    for value, data in [(0, "00"), (250, "fa"), (251, "fbfb00"), (1000, "fbe803"), (65535, "fbffff"),
                        (65536, "fc00000100"), (2**32, "fd0000000001000000")]:
        assert bytes(Writer().u64(value).buf).hex() == data
        assert Reader(hx(data)).u64() == value
    with pytest.raises(Malformed):
        Reader(hx("fc00000100")).u16()
    with pytest.raises(Malformed):
        Reader(hx("fd0000000001000000")).u32()
    for marker in ("fe", "ff"):
        with pytest.raises(Malformed):
            Reader(hx(marker + "00" * 16)).u64()
    with pytest.raises(ValueError):
        Writer().u16(65536)


@pytest.mark.parametrize("data", [hx("7f"), b"", hx("00 01"), hx("0b"), hx("07 02"), hx("08 fb 2c 01 16")])
def test_garbage_unknown_tags_and_truncation_are_refused(data):
    with pytest.raises(Malformed):
        p.decode_from_worker(data)


def test_trailing_bytes_are_refused():
    with pytest.raises(Trailing) as caught:
        p.decode_from_worker(hx("01 00"))
    assert (caught.value.used, caught.value.trailing) == (1, 1)


def test_oversized_input_is_refused_before_decoding_and_oversized_frames_are_never_encoded():
    with pytest.raises(Oversized):
        p.decode_to_worker(bytes(p.MAX_FRAME + 1))
    with pytest.raises(Oversized):
        p.encode(p.Listen(1, "x" * p.MAX_FRAME))


def test_the_capacity_rule_is_the_rust_sdks():
    # The cases of worker-sdk/src/capacity.rs's unit tests.
    from clusterd_worker import capacity as c
    assert [c.reserve(n) for n in (64, 256, 1024, 1 << 20)] == [16, 32, 128, 1024]
    assert not c.is_full(223, 256, False) and c.is_full(224, 256, False)
    assert c.is_full(193, 256, True) and not c.is_full(192, 256, True)
    state = c.Capacity(256)
    assert state.on_lost() and not state.on_lost() and state.full
    assert not c.Capacity(1 << 20).on_fd(10)
    roomy = c.Capacity(1 << 20)
    roomy.full = True
    assert roomy.recheck() and not roomy.full


def test_a_to_worker_tag_beyond_version_1_is_unknown():
    with pytest.raises(Malformed, match="unknown tag 6"):
        p.decode_to_worker(hx("06"))


# -- the bus ---------------------------------------------------------------------------------


def test_bus_vectors_encode_and_decode_exactly():
    publish = hx("08 00 00 00 02 02 61 62 02 01 02 00")
    assert b.encode_frame(b.Publish("ab", b"\x01\x02", False)) == publish
    assert b.decode_from_worker(publish[4:]) == b.Publish("ab", b"\x01\x02", False)
    message = hx("07 00 00 00 00 02 61 62 03 01 09")
    assert b.encode_frame(b.Message("ab", 3, b"\x09")) == message
    assert b.decode_to_worker(message[4:]) == b.Message("ab", 3, b"\x09")


@pytest.mark.parametrize("frame", [
    b.Subscribe("news"), b.Unsubscribe("news"), b.Send(2, b"x"), b.CountSubscribers(9, "c"),
    b.Request(1, None, b"q", 0), b.Request(2**40, "chan", b"q" * 300, 70000), b.Reply(5, b""),
])
def test_bus_frames_from_a_worker_round_trip(frame):
    data = b.encode_frame(frame)
    assert int.from_bytes(data[:4], "little") == len(data) - 4
    assert b.decode_from_worker(data[4:]) == frame


@pytest.mark.parametrize("frame", [
    b.Direct(1, b"d"), b.SubscriberCount(3, 4), b.Joined(2), b.Left(2), b.Undeliverable(9),
    b.PeerRequest(77, 1, b"?"), b.Answers(3, [(1, b"a"), (2, b"")], [4]), b.Answers(4, [], []),
])
def test_bus_frames_to_a_worker_round_trip(frame):
    data = b.encode_frame(frame)
    assert b.decode_to_worker(data[4:]) == frame


def test_request_option_bytes():
    assert b.encode_frame(b.Request(1, None, b"", 0))[4:] == hx("05 01 00 00 00")
    assert b.encode_frame(b.Request(1, "c", b"", 0))[4:] == hx("05 01 01 01 63 00 00")


def test_the_frame_buffer_takes_whole_frames_and_refuses_a_declared_length_over_the_limit():
    buffer = b.FrameBuffer()
    frames = b.encode_frame(b.Joined(1)) + b.encode_frame(b.Left(2))
    buffer.extend(frames[:3])
    assert buffer.next_body() is None
    buffer.extend(frames[3:])
    assert b.decode_to_worker(buffer.next_body()) == b.Joined(1)
    assert b.decode_to_worker(buffer.next_body()) == b.Left(2)
    assert buffer.next_body() is None
    buffer.extend((b.MAX_BUS_FRAME + 1).to_bytes(4, "little"))
    with pytest.raises(Oversized):
        buffer.next_body()


def test_a_bus_frame_over_the_limit_is_refused_before_sending():
    with pytest.raises(Oversized):
        b.encode_frame(b.Publish("c", bytes(b.MAX_BUS_FRAME), False))


def test_a_channel_name_over_clusterds_limit_is_refused_before_sending():
    from clusterd_worker.bus import _check_channel
    _check_channel("é" * (b.MAX_CHANNEL_NAME // 2))  # bytes, not characters
    with pytest.raises(ValueError, match="at most 4096 bytes"):
        _check_channel("é" * (b.MAX_CHANNEL_NAME // 2) + "x")


def test_engineio_polling_requests_are_recognised():
    from clusterd_worker._engineio import is_polling

    assert is_polling("EIO=4&transport=polling&t=abc")
    assert is_polling("EIO=4&transport=polling&sid=x")
    assert not is_polling("EIO=4&transport=websocket")
    assert not is_polling("transport=polling")
    assert not is_polling("EIO=4&transport=pollingx")
    assert not is_polling("")


def test_the_package_names_its_version_and_how_to_run_a_worker():
    import subprocess
    import sys

    import clusterd_worker

    done = subprocess.run([sys.executable, "-m", "clusterd_worker", "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"clusterd-worker {clusterd_worker.__version__}"
    usage = subprocess.run([sys.executable, "-m", "clusterd_worker"], capture_output=True, text=True).stdout
    assert "clusterd --workers" in usage


@pytest.mark.parametrize("frame", [
    p.SessionOpen(0, "a"), p.SessionOpen(250, "x" * 64), p.SessionOpen(251, "b"), p.SessionOpen(2**32 - 1, "c" * 300),
    p.SessionClose("s" * 251), p.Ready(), p.Heartbeat(),
])
def test_the_fast_encoders_write_what_the_general_one_does(frame):
    assert p.encode(frame) == p._encode(frame)
    assert p.decode_from_worker(p.encode(frame)) == frame


def test_the_fast_encoders_keep_the_limits():
    with pytest.raises(Oversized):
        p.encode(p.SessionClose("s" * p.MAX_FRAME))
    with pytest.raises(ValueError):
        p.encode(p.SessionOpen(2**32, "a"))
    assert p.decode_to_worker(hx("03 fa")) == p.SessionAck(250)
    assert p.decode_to_worker(hx("03 fb fb 00")) == p.SessionAck(251)
