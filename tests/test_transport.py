"""Transport over real ZeroMQ sockets: stream semantics, lossless channels, request/reply, CURVE."""

import threading
import time

import msgpack
import numpy as np
import pytest
import zmq

from conftest import wait_until

from robot_stack.comm.codec import encode
from robot_stack.comm.messages import ActionChunk, ErrorReply, Heartbeat, ObservationWindow, WaypointSchedule
from robot_stack.comm.security import CurveClient, CurveServer, SecurityError, generate_keys, is_local_endpoint
from robot_stack.comm.transport import (
    Publisher,
    Receiver,
    RemoteError,
    ReplyServer,
    RequestClient,
    Sender,
    Subscriber,
    TransportTimeout,
    context,
)


pytestmark = pytest.mark.processes  # real sockets


def hb(i):
    return Heartbeat(node="n", metrics={"i": float(i)})


def wait_connected(pub, sub, topic="warmup"):
    """PUB/SUB joins asynchronously: publish until the subscriber sees something."""
    for _ in range(200):
        pub.publish(topic, hb(-1))
        if sub.wait_for(topic, 0.02) is not None:
            return
    raise AssertionError("subscriber never connected")


STALLED_READER = """
import sys, threading, zmq
s = zmq.Context.instance().socket(zmq.SUB)
s.rcvhwm = 2
s.subscribe(b"")
s.connect(sys.argv[1])
print("connected", flush=True)
threading.Event().wait()  # never reads; the test kills it
"""


def test_stalled_reader_never_blocks_publisher(run_dir):
    """A reader process that never reads: the publisher still sends flat out without blocking."""
    import subprocess
    import sys

    from robot_stack.comm.messages import CameraFrame

    ep = f"ipc://{run_dir}/pub"
    pub = Publisher(ep, "cam", hwm=4)
    reader = subprocess.Popen([sys.executable, "-c", STALLED_READER, ep], stdout=subprocess.PIPE)
    try:
        assert reader.stdout.readline().strip() == b"connected"
        frame = np.zeros((480, 640, 3), np.uint8)
        for i in range(500):  # would hang here if PUB blocked on the full peer
            pub.publish("camera/a", CameraFrame(color=frame, K=np.eye(3), frame_index=i))
        assert pub.stats.sent + pub.stats.dropped == 500
    finally:
        reader.kill()
        reader.wait()
        pub.close()


def test_slow_subscriber_reads_newest_sample(run_dir):
    """The owner of the subscriber never reads while 300 frames go by; it then gets the newest."""
    from robot_stack.comm.messages import CameraFrame

    ep = f"ipc://{run_dir}/pub"
    pub = Publisher(ep, "cam")
    sub = Subscriber([ep], history=3)
    wait_connected(pub, sub)
    frame = np.zeros((240, 320, 3), np.uint8)
    n = 300
    for i in range(n):  # 1 kHz, far above any camera rate
        pub.publish("camera/a", CameraFrame(color=frame, K=np.eye(3), frame_index=i))
        time.sleep(0.001)  # (pacing: a 1 kHz stream)
    newest = sub.wait_for("camera/a", 5.0, newer_than_seq=n - 2)
    assert newest is not None and newest.frame_index == n - 1
    assert [m.frame_index for m in sub.history("camera/a")] == [n - 3, n - 2, n - 1]
    assert sub.latest("camera/a").frame_index == n - 1
    sub.close()
    pub.close()


def test_bounded_queue_counts_drops(run_dir):
    ep = f"ipc://{run_dir}/pub"
    pub = Publisher(ep, "x", hwm=10_000)
    sub = Subscriber([ep], topics=("data",), queue_size=10)
    wait_connected(pub, sub, topic="data")
    while sub.get(0.05) is not None:
        pass
    for i in range(50):
        pub.publish("data", hb(i))
    sub.wait_for("data", 5.0, newer_than_seq=49 + 0)  # all delivered
    wait_until(lambda: sub.stats.received >= 50 + 1, 5, what="every sample received")
    got = []
    while (item := sub.get(0.05)) is not None:
        got.append(item[1].metrics["i"])
    assert got == [float(i) for i in range(10)]  # the first 10 fit, in order
    assert sub.stats.dropped == 40  # the rest are counted, not silently lost
    sub.close()
    pub.close()


def test_malformed_messages_are_counted_and_stream_continues(run_dir):
    ep = f"ipc://{run_dir}/pub"
    raw = context().socket(zmq.PUB)
    raw.bind(ep)
    sub = Subscriber([ep], history=1)
    for _ in range(200):
        raw.send_multipart(encode("t", hb(0)))
        if sub.wait_for("t", 0.02) is not None:
            break
    before = sub.stats.decode_errors
    raw.send_multipart([b"t", b"garbage"])
    raw.send_multipart([b"t", msgpack.packb({"schema": "heartbeat"})])
    msg = hb(42)
    msg.seq = 10**6
    raw.send_multipart(encode("t", msg))
    got = sub.wait_for("t", 5.0, newer_than_seq=10**6 - 1)
    assert got is not None and got.metrics["i"] == 42.0
    assert sub.stats.decode_errors - before == 2
    assert "header" in sub.stats.last_error
    sub.close()
    raw.close(0)


def test_lossless_ordered_channel(run_dir):
    ep = f"ipc://{run_dir}/in"
    rx = Receiver(ep)
    tx = Sender(ep, "controller", timeout_s=2.0)
    n = 2000
    for i in range(n):
        tx.send(
            "waypoints", WaypointSchedule(stamps_ns=np.array([i + 1], np.int64), positions=np.full((1, 7), i, float))
        )
    got = []
    while len(got) < n:
        item = rx.recv(2.0)
        assert item is not None, f"lost after {len(got)}"
        got.append(int(item[1].positions[0, 0]))
    assert got == list(range(n))
    assert rx.stats.seq_gaps == 0
    tx.close()
    rx.close()


def test_sender_without_receiver_times_out(run_dir):
    tx = Sender(f"ipc://{run_dir}/nobody", "controller", timeout_s=0.1)
    with pytest.raises(TransportTimeout, match="no receiver"):
        tx.send("waypoints", WaypointSchedule(stamps_ns=np.array([1], np.int64), positions=np.zeros((1, 7))))
    tx.close()


def _serve(server, handler, stop):
    while not stop.is_set():
        server.serve_once(handler, 0.05)


def echo_handler(topic, msg):
    if not isinstance(msg, ObservationWindow):
        raise ValueError("expected an observation window")
    return ActionChunk(request_id=msg.request_id, actions=np.full((4, 2), msg.request_id, np.float32))


def test_request_reply_errors_and_reconnect(run_dir):
    ep = f"ipc://{run_dir}/policy"
    client = RequestClient(ep, "controller", timeout_s=0.2)
    req = ObservationWindow(request_id=3, obs_age_ns=np.zeros(1, np.int64))
    with pytest.raises(TransportTimeout):  # server not up yet
        client.request("infer", req)
    server = ReplyServer(ep, "policy")
    stop = threading.Event()
    t = threading.Thread(target=_serve, args=(server, echo_handler, stop), daemon=True)
    t.start()
    try:
        reply = client.request("infer", req, timeout_s=5)  # the re-opened socket reaches the server
        assert isinstance(reply, ActionChunk) and reply.request_id == 3 and reply.actions[0, 0] == 3
        assert client.reconnects == 1
        with pytest.raises(RemoteError, match="handler_error: ValueError: expected an observation window"):
            client.request("infer", hb(0), timeout_s=5)
        # a raw malformed request gets an error reply, and the server keeps serving
        raw = context().socket(zmq.REQ)
        raw.connect(ep)
        raw.send_multipart([b"infer", b"\x00garbage"])
        assert raw.poll(5000)
        from robot_stack.comm.codec import decode

        _, err = decode(raw.recv_multipart())
        assert isinstance(err, ErrorReply) and err.code == "malformed"
        raw.close(0)
        assert client.request("infer", req, timeout_s=5).request_id == 3
    finally:
        stop.set()
        t.join()
        server.close()
        client.close()


def test_endpoint_locality():
    assert is_local_endpoint("ipc:///tmp/x")
    assert is_local_endpoint("tcp://127.0.0.1:5555")
    assert is_local_endpoint("tcp://localhost:5555")
    assert is_local_endpoint("tcp://[::1]:5555")
    assert not is_local_endpoint("tcp://*:5555")
    assert not is_local_endpoint("tcp://0.0.0.0:5555")
    assert not is_local_endpoint("tcp://192.168.1.20:5555")
    assert not is_local_endpoint("tcp://gpu-server:5555")


def test_non_local_tcp_without_curve_is_refused():
    with pytest.raises(SecurityError, match="leaves localhost"):
        ReplyServer("tcp://*:0", "policy")
    with pytest.raises(SecurityError, match="leaves localhost"):
        RequestClient("tcp://10.1.2.3:5555", "controller")


def test_curve_admits_authorized_client_and_refuses_others(tmp_path):
    keys = generate_keys(tmp_path / "keys", ("server", "client"))
    rogue = generate_keys(tmp_path / "rogue", ("client",))
    server = ReplyServer(
        "tcp://127.0.0.1:0".replace(":0", ":47811"),
        "policy",
        curve=CurveServer(keys["server"], tmp_path / "keys" / "authorized_clients"),
    )
    stop = threading.Event()
    t = threading.Thread(target=_serve, args=(server, echo_handler, stop), daemon=True)
    t.start()
    server_pub = tmp_path / "keys" / "server.key"
    req = ObservationWindow(request_id=9, obs_age_ns=np.zeros(1, np.int64))
    try:
        good = RequestClient(
            "tcp://127.0.0.1:47811", "controller", timeout_s=5, curve=CurveClient(keys["client"], server_pub)
        )
        assert good.request("infer", req).request_id == 9
        bad = RequestClient(
            "tcp://127.0.0.1:47811", "intruder", timeout_s=0.5, curve=CurveClient(rogue["client"], server_pub)
        )
        with pytest.raises(TransportTimeout):
            bad.request("infer", req)
        plain = RequestClient("tcp://127.0.0.1:47811", "plain", timeout_s=0.5)
        with pytest.raises(TransportTimeout):
            plain.request("infer", req)
        assert server.stats.received == 1  # only the authorized request reached the handler
        good.close()
        bad.close()
        plain.close()
    finally:
        stop.set()
        t.join()
        server.close()


def test_missing_key_file_is_a_clear_error(tmp_path):
    with pytest.raises(SecurityError, match="does not exist"):
        RequestClient("tcp://10.0.0.1:5555", "c", curve=CurveClient(tmp_path / "nope.key_secret", tmp_path / "s.key"))


def test_large_messages_go_through_shared_memory_ring(run_dir):
    """On ipc, a camera frame's buffers travel in the shm ring; the header alone crosses the socket."""
    from robot_stack.comm.messages import CameraFrame

    ep = f"ipc://{run_dir}/pub"
    pub = Publisher(ep, "cam", shm_slots=4)
    sub = Subscriber([ep], history=2)
    wait_connected(pub, sub)
    rng = np.random.default_rng(1)
    sent = []
    for i in range(20):
        color = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
        depth = rng.integers(0, 4000, (240, 320), dtype=np.uint16)
        sent.append((color, depth))
        pub.publish("camera/a", CameraFrame(color=color, depth=depth, depth_scale=0.001, K=np.eye(3), frame_index=i))
        got = sub.wait_for("camera/a", 5.0, newer_than_seq=i - 1)
        assert got is not None and got.frame_index == i
        assert np.array_equal(got.color, color) and np.array_equal(got.depth, depth)
        assert not got.color.flags.writeable
    assert len(pub._rings) == 1  # the ring was used
    # a reader holding older samples keeps valid data after the writer reuses their slots
    old = sub.history("camera/a")[0]
    assert np.array_equal(old.color, sent[old.frame_index][0])
    sub.close()
    pub.close()


def test_shm_reference_without_reader_or_after_lap_is_rejected(run_dir):
    from robot_stack.comm.codec import DecodeError, decode
    from robot_stack.comm.messages import CameraFrame
    from robot_stack.comm.shm_ring import ShmRingReader, ShmRingWriter

    ring = ShmRingWriter("t", 64 * 48 * 5 + 4096, slots=2)
    msg = CameraFrame(color=np.ones((48, 64, 3), np.uint8), K=np.eye(3))
    frames = encode("c", msg, ring=ring)
    assert len(frames) == 2
    with pytest.raises(DecodeError, match="references shared memory"):
        decode(frames)
    reader = ShmRingReader()
    assert decode(frames, shm=reader)[1].color.sum() == 48 * 64 * 3
    encode("c", msg, ring=ring)
    encode("c", msg, ring=ring)  # slot 0 reused: the first reference is stale now
    with pytest.raises(DecodeError, match="overwritten"):
        decode(frames, shm=reader)
    assert reader.lapped == 1
    h = msgpack.unpackb(frames[1])
    h["shm"]["name"] = "../../etc/passwd"
    with pytest.raises(DecodeError, match="invalid shared-memory segment name"):
        decode([frames[0], msgpack.packb(h)], shm=reader)
    h["shm"]["name"] = ring.name
    h["shm"]["spans"] = [[0, 10**9]]
    with pytest.raises(DecodeError, match="out of bounds"):
        decode([frames[0], msgpack.packb(h)], shm=reader)
    reader.close()
    ring.close()


def test_shm_header_sent_before_the_copy_waits_for_its_slot():
    """The header may leave before the data is in the slot: the reader waits for exactly that slot."""
    import threading

    from robot_stack.comm.codec import DecodeError, decode, encode_deferred
    from robot_stack.comm.messages import CameraFrame
    from robot_stack.comm.shm_ring import ShmRingReader, ShmRingWriter

    ring = ShmRingWriter("t", 64 * 48 * 5 + 4096, slots=4)
    reader = ShmRingReader(wait_s=2.0)
    color = np.arange(48 * 64 * 3, dtype=np.uint32).astype(np.uint8).reshape(48, 64, 3)
    frames, commit = encode_deferred("c", CameraFrame(color=color, K=np.eye(3)), ring=ring)
    timer = threading.Timer(0.05, commit)  # the writer finishes its copy 50 ms after the header left
    timer.start()
    got = decode(frames, shm=reader)[1]
    timer.join()
    assert np.array_equal(got.color, color) and reader.waited == 1 and reader.lapped == 0
    # a writer that never completes (died mid-copy): the read gives up after wait_s, clearly
    impatient = ShmRingReader(wait_s=0.05)
    frames2, _ = encode_deferred("c", CameraFrame(color=color, K=np.eye(3)), ring=ring)
    with pytest.raises(DecodeError, match="did not complete the slot within 50 ms"):
        decode(frames2, shm=impatient)
    reader.close()
    impatient.close()
    ring.close()


FLOODER = """
import sys, numpy as np
from robot_stack.comm.transport import Publisher
from robot_stack.comm.messages import CameraFrame
pub = Publisher(sys.argv[1], "flooder", shm=sys.argv[2] == "1")
frame = np.zeros((480, 640, 3), np.uint8)
i = 0
while True:
    pub.publish("camera/x", CameraFrame(color=frame, K=np.eye(3), frame_index=i))
    i += 1
"""


@pytest.mark.parametrize("shm", [False, True])
def test_publisher_killed_mid_stream_does_not_hurt_the_subscriber(run_dir, shm):
    """SIGKILL a publisher that is sending 900 KB frames flat out (so mid-message): the subscriber
    keeps running, and a restarted publisher on the same endpoint is received again."""
    import signal
    import subprocess
    import sys

    ep = f"ipc://{run_dir}/flood"
    sub = Subscriber([ep], history=1)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", FLOODER, ep, "1" if shm else "0"])
        try:
            sub.wait_for("camera/x", 20)  # history is cleared between rounds: any sample is new
            wait_until(
                lambda: (f := sub.latest("camera/x")) is not None and f.frame_index >= 20,
                20,
                what="frame 20 of the flooding publisher",
            )
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        before = sub.stats.received
        assert sub._thread.is_alive()  # the drain thread survived the dead peer (the next round receives again)
        with sub._lock:
            sub._hist.clear()  # next round must see fresh samples
        assert sub.stats.received >= before
    sub.close()


def test_message_sent_right_before_close_is_delivered(run_dir):
    """A one-shot sender (e.g. the e-stop CLI) sends and closes at once: nothing may be lost."""
    from robot_stack.comm.messages import ArmControl

    ep = f"ipc://{run_dir}/in"
    rx = Receiver(ep)
    for i in range(20):
        tx = Sender(ep, f"cli{i}", timeout_s=2.0)
        tx.send("control", ArmControl(kind="estop", reason=str(i)))
        tx.close()
    got = []
    while (item := rx.recv(2.0)) is not None:
        got.append(item[1].reason)
        if len(got) == 20:
            break
    assert got == [str(i) for i in range(20)]
    rx.close()


def test_publisher_is_safe_from_several_threads(run_dir):
    """A node's loop and its worker threads share one publisher (the controller: heartbeats and
    executed actions); concurrent publishes must never reach a subscriber as malformed messages."""
    import threading

    ep = f"ipc://{run_dir}/pub"
    pub = Publisher(ep, "x", hwm=100_000)
    sub = Subscriber([ep], topics=("a", "b"), queue_size=100_000)
    wait_connected(pub, sub, topic="a")
    while sub.get(0.05) is not None:
        pass
    acts = WaypointSchedule(stamps_ns=np.arange(4, dtype=np.int64), positions=np.zeros((4, 7)), space="ee")

    def flood(topic, make):
        for i in range(3000):
            pub.publish(topic, make(i))

    threads = [
        threading.Thread(target=flood, args=("a", hb)),
        threading.Thread(target=flood, args=("b", lambda i: acts)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: sub.stats.received >= 6000, 10, what="6000 samples")
    assert sub.stats.decode_errors == 0 and sub.stats.received >= 6000
    sub.close()
    pub.close()
