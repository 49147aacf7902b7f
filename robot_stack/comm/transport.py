"""ZeroMQ transport: sensor streams, lossless ordered channels, request/reply.

- :class:`Publisher` / :class:`Subscriber` (PUB/SUB) for sensor streams. A publisher never blocks
  (``NOBLOCK``; PUB drops for a full peer instead of waiting). A subscriber drains its socket on a
  background thread into a short per-topic history, so its queues never fill and :meth:`latest`
  always returns the newest sample however rarely the owner reads it. Optionally every sample also
  enters a bounded queue (recorder); overflow is counted, never silent.
- :class:`Sender` / :class:`Receiver` (PUSH/PULL) for waypoints and episode events: lossless and
  ordered while connected; a send that no peer accepts within its timeout raises; the receiver
  checks sequence numbers and counts gaps.
- :class:`RequestClient` / :class:`ReplyServer` (REQ/REP) for inference, with timeouts and the
  "lazy pirate" reconnect (close and re-open the REQ socket after a timeout; ZeroMQ Guide ch. 4).
- :class:`BatchReplyServer` (ROUTER, for the same REQ clients) holds several requests at once, so
  a policy server can answer requests of many controllers as one batch (dynamic batching); each
  reply goes to its own requester by its routing envelope.

Every socket checks its endpoint with :func:`robot_stack.comm.security.check_endpoint`: a TCP endpoint
that leaves localhost needs CURVE. Malformed messages are dropped with a logged reason and counted
(:class:`TransportStats`); they never raise into the caller's loop.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import collections
import logging
import os
import queue
import threading
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable

import numpy as np
import zmq

from robot_stack.runtime.clock import now_ns
from robot_stack.comm.codec import DecodeError, buffer_sizes, decode, encode, encode_deferred
from robot_stack.comm.messages import ErrorReply, Message
from robot_stack.comm.shm_ring import ShmRingReader, ShmRingWriter
from robot_stack.comm.security import CurveClient, CurveServer, apply_client, apply_server, check_endpoint

log = logging.getLogger(__name__)


class TransportTimeout(RobotStackError, TimeoutError):
    """No peer accepted or answered within the timeout."""


class RemoteError(RobotStackError, RuntimeError):
    """The server answered a request with an :class:`ErrorReply`."""

    def __init__(self, reply: ErrorReply):
        super().__init__(f"{reply.code}: {reply.reason}")
        self.reply = reply


@dataclass
class TransportStats:
    """Counters of one socket wrapper."""

    sent: int = 0
    received: int = 0
    decode_errors: int = 0
    dropped: int = 0  # bounded-queue overflow or send refused
    seq_gaps: int = 0
    last_error: str = ""
    errors_by_reason: collections.Counter = field(default_factory=collections.Counter)

    def record_decode_error(self, err: DecodeError, where: str) -> None:
        self.decode_errors += 1
        self.last_error = err.reason
        self.errors_by_reason[err.reason.split(":")[0]] += 1
        # rate-limit logs: first few, then every 100th
        if self.decode_errors <= 5 or self.decode_errors % 100 == 0:
            log.warning("%s: rejected malformed message (#%d): %s", where, self.decode_errors, err.reason)


def context() -> zmq.Context:
    """The process-wide ZeroMQ context."""
    return zmq.Context.instance()


def _ipc_dir_ready(endpoint: str) -> None:
    if endpoint.startswith("ipc://"):
        d = os.path.dirname(endpoint[len("ipc://") :])
        if d:
            os.makedirs(d, exist_ok=True)


def _open(kind: int, endpoint: str, bind: bool, curve: CurveServer | CurveClient | None, **opts: Any) -> zmq.Socket:
    check_endpoint(endpoint, curve)
    sock = context().socket(kind)
    sock.linger = 0
    for k, v in opts.items():
        sock.setsockopt(getattr(zmq, k), v)
    if isinstance(curve, CurveServer):
        apply_server(sock, curve)
    elif isinstance(curve, CurveClient):
        apply_client(sock, curve)
    try:
        if bind:
            _ipc_dir_ready(endpoint)
            sock.bind(endpoint)
        else:
            sock.connect(endpoint)
    except zmq.ZMQError as e:
        sock.close(0)
        raise OSError(f"cannot {'bind' if bind else 'connect'} {endpoint}: {e}") from None
    return sock


class _Sequencer:
    def __init__(self, source: str):
        self.source = source
        self._seq: dict[str, int] = collections.defaultdict(int)

    def stamp(self, topic: str, msg: Message) -> None:
        msg.seq = self._seq[topic]
        self._seq[topic] += 1
        msg.source = self.source
        if msg.stamp_ns == 0:
            msg.stamp_ns = now_ns()


SHM_MIN_BYTES = 256 * 1024


_SHM_NOTED = False


def _shm_allowed() -> bool:
    """The shared-memory ring runs only on CPUs where it is sound (``shm_ring.ring_supported``)."""
    global _SHM_NOTED
    import platform

    from robot_stack.comm.shm_ring import ring_supported

    if ring_supported():
        return True
    if not _SHM_NOTED:
        _SHM_NOTED = True
        log.warning(
            "shared-memory ring off on %s (it relies on x86's store ordering): frames go over plain ipc",
            platform.machine(),
        )
    return False


class Publisher:
    """PUB socket for sensor streams; never blocks.

    On an ``ipc://`` endpoint, messages whose arrays total at least ``SHM_MIN_BYTES`` (camera
    frames) put their buffers in a shared-memory ring (``robot_stack.comm.shm_ring``) and send only the
    header: one copy in, one copy out per subscriber, no bulk data through sockets. Over TCP the
    buffers travel as frames.

    Args:
        endpoint: where to bind (``ipc://PATH`` or ``tcp://HOST:PORT``).
        source: node name written into every header.
        hwm: send high-water mark per subscriber, messages.
        curve: CURVE server settings (required for non-local TCP).
        shm: use the shared-memory ring for large messages on ipc endpoints.
        shm_slots: ring slots; a subscriber whose drain thread falls more than this many large
            messages behind loses (and counts) samples.
    """

    def __init__(
        self,
        endpoint: str,
        source: str,
        *,
        hwm: int = 64,
        curve: CurveServer | None = None,
        shm: bool = True,
        shm_slots: int = 8,
    ):
        self.endpoint = endpoint
        self.source = source
        self._sock = _open(zmq.PUB, endpoint, True, curve, SNDHWM=hwm)
        self._seq = _Sequencer(source)
        self._use_shm = shm and endpoint.startswith("ipc://") and _shm_allowed()
        self._shm_slots = shm_slots
        self._rings: dict[str, ShmRingWriter] = {}
        self.stats = TransportStats()
        # a ZeroMQ socket is not thread-safe: a node's loop (heartbeats) and its worker threads
        # (the controller's inference thread publishing executed actions) share this one, and
        # interleaved multipart frames would reach subscribers as malformed messages
        self._lock = threading.Lock()

    def _ring_for(self, topic: str, msg: Message) -> ShmRingWriter | None:
        if not self._use_shm:
            return None
        sizes = buffer_sizes(msg)
        if sum(sizes) < SHM_MIN_BYTES:
            return None
        ring = self._rings.get(topic)
        if ring is None or not ring.fits(sizes):
            if ring is not None:
                ring.close()  # readers re-map the new segment by name
            ring = self._rings[topic] = ShmRingWriter(
                f"{self.source}_{topic}", int(sum(sizes) * 1.25) + 4096, self._shm_slots
            )
        return ring

    def publish(self, topic: str, msg: Message) -> None:
        """Encode and send ``msg`` on ``topic`` (sets seq/source; stamp_ns defaults to now).
        Safe to call from several threads."""
        with self._lock:
            self._seq.stamp(topic, msg)
            # a shared-memory header leaves before its data is copied: delivery overlaps the copy
            frames, commit = encode_deferred(topic, msg, ring=self._ring_for(topic, msg))
            try:
                self._sock.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
                self.stats.sent += 1
            except zmq.Again:
                self.stats.dropped += 1
            finally:
                commit()

    def close(self) -> None:
        self._sock.close(0)
        for ring in self._rings.values():
            ring.close()
        self._rings.clear()


class Subscriber:
    """SUB socket drained by a background thread into per-topic histories.

    Args:
        endpoints: publisher endpoints to connect to.
        topics: topic prefixes to subscribe to (``""`` for all).
        history: samples kept per topic (e.g. the observation horizon To).
        queue_size: if > 0, every sample is also put in a bounded FIFO read by :meth:`get`;
            samples that do not fit are counted in ``stats.dropped``.
        curve: CURVE client settings (required for non-local TCP).
        name: label for logs.
        on_message: ``on_message(topic, msg)``, called in the receive thread after each sample is
            stored (keep it short: post to a queue); its exceptions are counted, never raised.
    """

    def __init__(
        self,
        endpoints: Iterable[str],
        topics: Iterable[str] = ("",),
        *,
        history: int = 1,
        queue_size: int = 0,
        curve: CurveClient | None = None,
        name: str = "subscriber",
        hwm: int = 1000,
        on_message: Callable[[str, Message], None] | None = None,
    ):
        self.endpoints = list(endpoints)
        self.on_message = on_message
        self.name = name
        self.stats = TransportStats()
        self._history = history
        self._hist: dict[str, collections.deque] = {}
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._queue: queue.Queue | None = queue.Queue(queue_size) if queue_size > 0 else None
        self._stop = threading.Event()
        self._shm = ShmRingReader()
        self._sock = context().socket(zmq.SUB)
        self._sock.linger = 0
        self._sock.rcvhwm = hwm
        if curve is not None:
            apply_client(self._sock, curve)
        for ep in self.endpoints:
            check_endpoint(ep, curve)
            self._sock.connect(ep)
        for t in topics:
            self._sock.setsockopt(zmq.SUBSCRIBE, t.encode())
        self._thread = threading.Thread(target=self._run, name=f"sub-{name}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        poller.register(self._sock, zmq.POLLIN)
        while not self._stop.is_set():
            try:
                if not poller.poll(50):
                    continue
                while True:
                    try:
                        frames = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._ingest(frames)
            except zmq.ZMQError:
                if self._stop.is_set():
                    break
                raise
        self._sock.close(0)
        self._shm.close()

    def _ingest(self, frames: list) -> None:
        try:
            topic_b, msg = decode(frames, shm=self._shm)
        except DecodeError as e:
            self.stats.record_decode_error(e, self.name)
            return
        except Exception as e:  # a codec bug must not end the receive thread: count it as malformed
            self.stats.record_decode_error(DecodeError(f"decoder failed: {type(e).__name__}: {e}"), self.name)
            return
        topic = topic_b.decode(errors="replace")
        with self._cond:
            h = self._hist.get(topic)
            if h is None:
                h = self._hist[topic] = collections.deque(maxlen=self._history)
            h.append(msg)
            self.stats.received += 1
            self._cond.notify_all()
        if self._queue is not None:
            try:
                self._queue.put_nowait((topic, msg))
            except queue.Full:
                self.stats.dropped += 1
        if self.on_message is not None:
            try:
                self.on_message(topic, msg)
            except Exception as e:  # a reader's callback must not end the receive thread
                self.stats.record_decode_error(DecodeError(f"on_message failed: {type(e).__name__}: {e}"), self.name)

    def latest(self, topic: str) -> Message | None:
        """Newest sample on ``topic``, or None if none arrived yet."""
        with self._lock:
            h = self._hist.get(topic)
            return h[-1] if h else None

    def history(self, topic: str) -> list[Message]:
        """Up to ``history`` newest samples on ``topic``, oldest first."""
        with self._lock:
            return list(self._hist.get(topic, ()))

    def topics(self) -> list[str]:
        with self._lock:
            return list(self._hist)

    def wait_for(self, topic: str, timeout_s: float, newer_than_seq: int = -1) -> Message | None:
        """Block until a sample on ``topic`` with seq > ``newer_than_seq`` arrives; None on timeout."""
        deadline = now_ns() + int(timeout_s * 1e9)
        with self._cond:
            while True:
                h = self._hist.get(topic)
                if h and h[-1].seq > newer_than_seq:
                    return h[-1]
                remaining = (deadline - now_ns()) / 1e9
                if remaining <= 0:
                    return None
                self._cond.wait(min(remaining, 0.05))

    def get(self, timeout_s: float | None = None) -> tuple[str, Message] | None:
        """Next queued sample in arrival order (requires ``queue_size > 0``); None on timeout."""
        if self._queue is None:
            raise RuntimeError("Subscriber was created without queue_size; use latest()/history()")
        try:
            return self._queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


class Sender:
    """PUSH socket for lossless, ordered traffic (waypoints, episode events).

    Args:
        endpoint: the receiver's endpoint (connect).
        source: node name written into every header.
        timeout_s: how long :meth:`send` may wait for a peer before raising.
        flush_s: how long :meth:`close` lets queued messages leave.
    """

    def __init__(
        self,
        endpoint: str,
        source: str,
        *,
        timeout_s: float = 1.0,
        curve: CurveClient | None = None,
        flush_s: float = 1.0,
    ):
        self.endpoint = endpoint
        self._sock = _open(zmq.PUSH, endpoint, False, curve, IMMEDIATE=1, SNDHWM=10_000, SNDTIMEO=int(timeout_s * 1000))
        self._flush_ms = int(flush_s * 1000)
        self._seq = _Sequencer(source)
        self.stats = TransportStats()

    def send(self, topic: str, msg: Message) -> None:
        """Send ``msg``; raises :class:`TransportTimeout` if no receiver takes it in time."""
        self._seq.stamp(topic, msg)
        frames = encode(topic, msg)
        try:
            self._sock.send_multipart(frames, copy=False)
        except zmq.Again:
            self.stats.dropped += 1
            raise TransportTimeout(f"no receiver accepted {topic!r} on {self.endpoint}") from None
        self.stats.sent += 1

    def close(self) -> None:
        """Close, giving queued messages up to ``flush_s`` to leave (a lossless channel must not
        drop an e-stop sent just before closing)."""
        self._sock.close(linger=self._flush_ms)


class Receiver:
    """PULL socket (binds) for lossless ordered traffic; checks per-source sequence numbers."""

    def __init__(self, endpoint: str, *, name: str = "receiver", curve: CurveServer | None = None):
        self.endpoint = endpoint
        self.name = name
        self._sock = _open(zmq.PULL, endpoint, True, curve, RCVHWM=10_000)
        self._expect: dict[tuple[str, str], int] = {}
        self.stats = TransportStats()

    def recv(self, timeout_s: float = 0.0) -> tuple[str, Message] | None:
        """Next valid message, or None if none within ``timeout_s``. Malformed ones are skipped."""
        deadline = now_ns() + int(timeout_s * 1e9)
        while True:
            remaining_ms = max(0, (deadline - now_ns()) // 1_000_000)
            if not self._sock.poll(remaining_ms):
                return None
            frames = self._sock.recv_multipart(copy=False)
            try:
                topic_b, msg = decode(frames)
            except DecodeError as e:
                self.stats.record_decode_error(e, self.name)
                continue
            except Exception as e:  # a codec bug rejects the message, not the node
                self.stats.record_decode_error(DecodeError(f"decoder failed: {type(e).__name__}: {e}"), self.name)
                continue
            topic = topic_b.decode(errors="replace")
            key = (msg.source, topic)
            exp = self._expect.get(key)
            if exp is not None and msg.seq != exp:
                self.stats.seq_gaps += 1
                log.warning(
                    "%s: sequence gap on %s from %s: expected %d, got %d", self.name, topic, msg.source, exp, msg.seq
                )
            self._expect[key] = msg.seq + 1
            self.stats.received += 1
            return topic, msg

    def close(self) -> None:
        self._sock.close(0)


class RequestClient:
    """REQ client with timeouts and automatic reconnect (lazy pirate).

    Args:
        endpoint: the server endpoint.
        source: node name written into every header.
        timeout_s: default reply timeout, s.
        curve: CURVE client settings (required for non-local TCP).
    """

    def __init__(self, endpoint: str, source: str, *, timeout_s: float = 2.0, curve: CurveClient | None = None):
        check_endpoint(endpoint, curve)
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._curve = curve
        self._seq = _Sequencer(source)
        self.stats = TransportStats()
        self.reconnects = 0
        self._sock = self._connect()

    def _connect(self) -> zmq.Socket:
        return _open(zmq.REQ, self.endpoint, False, self._curve)

    def request(self, topic: str, msg: Message, timeout_s: float | None = None) -> Message:
        """Send ``msg`` and wait for the reply.

        Raises:
            TransportTimeout: no valid reply within the timeout (the socket is then re-opened, so
                the next request goes to a fresh connection).
            RemoteError: the server replied with an :class:`ErrorReply`.
        """
        timeout = self.timeout_s if timeout_s is None else timeout_s
        self._seq.stamp(topic, msg)
        frames = encode(topic, msg)
        self._sock.send_multipart(frames, copy=False)
        self.stats.sent += 1
        if self._sock.poll(int(timeout * 1000)):
            reply_frames = self._sock.recv_multipart(copy=False)
            try:
                _, reply = decode(reply_frames)
            except DecodeError as e:
                self.stats.record_decode_error(e, f"client {self.endpoint}")
                self._reset()
                raise TransportTimeout(f"malformed reply from {self.endpoint}: {e.reason}") from None
            self.stats.received += 1
            if isinstance(reply, ErrorReply):
                raise RemoteError(reply)
            return reply
        self._reset()
        raise TransportTimeout(f"no reply from {self.endpoint} within {timeout:.3f} s")

    def _reset(self) -> None:
        self._sock.close(0)
        self._sock = self._connect()
        self.reconnects += 1

    def close(self) -> None:
        self._sock.close(0)


Handler = Callable[[str, Message], Message]


class ReplyServer:
    """REP server. Malformed requests and handler exceptions become :class:`ErrorReply` answers.

    Args:
        endpoint: where to bind.
        source: node name written into every header.
        curve: CURVE server settings (required for non-local TCP).
    """

    def __init__(self, endpoint: str, source: str, *, curve: CurveServer | None = None):
        self.endpoint = endpoint
        self._sock = _open(zmq.REP, endpoint, True, curve)
        self._seq = _Sequencer(source)
        self.stats = TransportStats()

    def serve_once(self, handler: Handler, timeout_s: float = 0.1) -> bool:
        """Answer at most one request; returns True if one was answered."""
        if not self._sock.poll(int(timeout_s * 1000)):
            return False
        frames = self._sock.recv_multipart(copy=False)
        request_id = 0
        try:
            topic_b, msg = decode(frames)
            request_id = getattr(msg, "request_id", 0)
            reply = handler(topic_b.decode(errors="replace"), msg)
        except DecodeError as e:
            self.stats.record_decode_error(e, f"server {self.endpoint}")
            reply = ErrorReply(code="malformed", reason=e.reason)
        except Exception as e:  # the handler failed: answer, log, stay up
            log.exception("request handler failed")
            reply = ErrorReply(request_id=request_id, code="handler_error", reason=f"{type(e).__name__}: {e}")
        else:
            self.stats.received += 1
        self._seq.stamp("reply", reply)
        self._sock.send_multipart(encode("reply", reply), copy=False)
        self.stats.sent += 1
        return True

    def close(self) -> None:
        self._sock.close(0)


@dataclass
class PendingRequest:
    """One decoded request held by a :class:`BatchReplyServer` until :meth:`BatchReplyServer.reply`.

    Attributes:
        envelope: the ROUTER routing frames (peer identity ... empty delimiter) of the requester.
        topic: the request's topic.
        msg: the decoded request.
        received_ns: arrival time (``now_ns``, ns).
    """

    envelope: list
    topic: str
    msg: Message
    received_ns: int


class BatchReplyServer:
    """ROUTER server for REQ clients: :meth:`collect` gathers the requests that arrive within a
    batching window, :meth:`reply` answers each one. Malformed requests are answered at once with an
    :class:`ErrorReply` (``malformed``) and never join a batch; a reply to a client that has gone
    (a REQ that timed out and reconnected) is dropped by ZeroMQ, never delivered to the wrong one.

    Args:
        endpoint: where to bind.
        source: node name written into every header.
        curve: CURVE server settings (required for non-local TCP).
        max_msg_bytes: a request frame larger than this is refused before it is read (ZeroMQ's
            ``ZMQ_MAXMSGSIZE``: the sending peer is disconnected, its REQ times out); None: no cap.
    """

    def __init__(
        self, endpoint: str, source: str, *, curve: CurveServer | None = None, max_msg_bytes: int | None = None
    ):
        self.endpoint = endpoint
        opts = {} if max_msg_bytes is None else {"MAXMSGSIZE": int(max_msg_bytes)}
        self._sock = _open(zmq.ROUTER, endpoint, True, curve, **opts)
        self._seq = _Sequencer(source)
        self.stats = TransportStats()

    def _receive(self) -> PendingRequest | None:
        frames = self._sock.recv_multipart(copy=False)
        try:
            split = next(i for i, f in enumerate(frames) if len(f.bytes) == 0) + 1
        except StopIteration:  # not a REQ peer (no delimiter): nobody to answer
            self.stats.record_decode_error(DecodeError("request without a REQ envelope"), f"server {self.endpoint}")
            return None
        envelope, payload = [f.bytes for f in frames[:split]], frames[split:]
        try:
            topic_b, msg = decode(payload)
        except DecodeError as e:
            self.stats.record_decode_error(e, f"server {self.endpoint}")
            self._send(envelope, ErrorReply(code="malformed", reason=e.reason))
            return None
        self.stats.received += 1
        return PendingRequest(envelope, topic_b.decode(errors="replace"), msg, now_ns())

    def collect(self, window_s: float, max_batch: int, timeout_s: float = 0.1) -> list[PendingRequest]:
        """Wait up to ``timeout_s`` for a first request, then keep gathering until ``window_s`` after
        it or until ``max_batch`` requests are held (``max_batch`` 1: one request, no wait). Returns
        the batch in arrival order, possibly empty."""
        from robot_stack.comm.batching import BatchWindow

        out: list[PendingRequest] = []
        win = BatchWindow(window_s, max_batch)
        first_by = now_ns() + int(timeout_s * 1e9)
        while True:
            t = now_ns()
            if out:
                if win.closed(t, len(out)):
                    return out
                wait_s = win.remaining_s(t)
            else:  # (timeout 0: one look at the socket)
                wait_s = max(0.0, (first_by - t) / 1e9)
            if not self._sock.poll(int(np.ceil(wait_s * 1000))):
                if not out:
                    return out
                continue
            req = self._receive()
            if req is None and not out and now_ns() >= first_by:
                return out
            if req is not None:
                if not out:
                    win.open(req.received_ns)
                out.append(req)

    def _send(self, envelope: list, reply: Message) -> None:
        self._seq.stamp("reply", reply)
        self._sock.send_multipart([*envelope, *encode("reply", reply)], copy=False)
        self.stats.sent += 1

    def reply(self, req: PendingRequest, reply: Message) -> None:
        """Answer ``req`` (its requester only)."""
        self._send(req.envelope, reply)

    def close(self) -> None:
        self._sock.close(0)
