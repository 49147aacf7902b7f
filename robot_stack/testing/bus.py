"""An in-memory transport with the interfaces of ``robot_stack.comm.transport``.

:class:`FakeBus` stands for the sockets of one stack: publishers and subscribers by node name,
lossless inputs (receiver and senders) by node name, and request handlers by endpoint. Every message
goes through the real codec: encoded to bytes and decoded again on the way, so a reader gets
read-only arrays and a malformed message is rejected (and counted) as on a socket. Delivery is
synchronous and in order, in the caller's thread: a test that publishes a frame and then steps a
node knows the node sees it.
"""

from __future__ import annotations

import collections
import threading
from typing import Any
from collections.abc import Callable, Iterable

from robot_stack.comm.codec import DecodeError, decode, encode
from robot_stack.comm.messages import ErrorReply, Message
from robot_stack.runtime import clock
from robot_stack.comm.transport import RemoteError, TransportStats, TransportTimeout, _Sequencer


def _wire(topic: str, msg: Message) -> list[bytes]:
    """``msg`` as the bytes a socket would carry (copied: the sender may reuse its arrays)."""
    return [bytes(memoryview(getattr(f, "buffer", f))) for f in encode(topic, msg)]


class FakeBus:
    """The in-memory "network" of one stack.

    Attributes:
        handlers: endpoint or node name -> ``handler(topic, msg) -> Message`` answering requests
            (a fake policy server, say); a request to a name without one times out.
        sent: node name -> every (topic, message) that reached its input, in order (for asserts).
        published: node name -> every (topic, message) it published, in order.
    """

    def __init__(self) -> None:
        self._subs: list[FakeSubscriber] = []
        self._inputs: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._bound: set[str] = set()
        self.handlers: dict[str, Callable[[str, Message], Message]] = {}
        self.sent: dict[str, list[tuple[str, Message]]] = collections.defaultdict(list)
        self.published: dict[str, list[tuple[str, Message]]] = collections.defaultdict(list)
        self.lock = threading.RLock()

    # the socket-like objects
    def publisher(self, node: str) -> FakePublisher:
        return FakePublisher(self, node)

    def subscriber(self, nodes: Iterable[str], topics: Iterable[str] = ("",), **kw: Any) -> FakeSubscriber:
        return FakeSubscriber(self, nodes, topics, **kw)

    def receiver(self, node: str) -> FakeReceiver:
        return FakeReceiver(self, node)

    def sender(self, node: str, source: str) -> FakeSender:
        return FakeSender(self, node, source)

    def request_client(self, endpoint: str, source: str, timeout_s: float = 2.0) -> FakeRequestClient:
        return FakeRequestClient(self, endpoint, source, timeout_s)

    # delivery
    def _publish(self, node: str, topic: str, frames: list[bytes]) -> None:
        with self.lock:
            _, msg = decode(frames)
            self.published[node].append((topic, msg))
            for s in list(self._subs):
                if node in s.nodes and any(topic.startswith(t) for t in s.topics):
                    s._ingest(frames)

    def _push(self, node: str, frames: list[bytes]) -> None:
        with self.lock:
            if node not in self._bound:
                raise TransportTimeout(f"no receiver accepted a message for {node!r} (no such input)")
            self._inputs[node].append(frames)
            t, msg = decode(frames)
            self.sent[node].append((t.decode(), msg))

    def inject(self, node: str, frames: list[bytes]) -> None:
        """Put raw frames on ``node``'s input as they are (fault injection: a malformed message)."""
        with self.lock:
            self._inputs[node].append(list(frames))

    def inject_published(self, node: str, topic: str, frames: list[bytes]) -> None:
        """Deliver raw frames as if ``node`` had published them on ``topic`` (fault injection)."""
        with self.lock:
            for s in list(self._subs):
                if node in s.nodes and any(topic.startswith(t) for t in s.topics):
                    s._ingest(frames)


class FakePublisher:
    """In-memory :class:`~robot_stack.comm.transport.Publisher`: never blocks, never drops."""

    def __init__(self, bus: FakeBus, node: str):
        self.bus, self.node = bus, node
        self._seq = _Sequencer(node)
        self.stats = TransportStats()

    def publish(self, topic: str, msg: Message) -> None:
        self._seq.stamp(topic, msg)
        self.bus._publish(self.node, topic, _wire(topic, msg))
        self.stats.sent += 1

    def close(self) -> None:
        pass


class FakeSubscriber:
    """In-memory :class:`~robot_stack.comm.transport.Subscriber` (per-topic histories, optional queue)."""

    def __init__(
        self,
        bus: FakeBus,
        nodes: Iterable[str],
        topics: Iterable[str] = ("",),
        *,
        history: int = 1,
        queue_size: int = 0,
        name: str = "subscriber",
        on_message=None,
        **_: Any,
    ):
        self.bus, self.nodes, self.topics, self.name = bus, set(nodes), tuple(topics), name
        self.on_message = on_message
        self._history = history
        self._hist: dict[str, collections.deque] = {}
        self._queue: collections.deque | None = collections.deque() if queue_size > 0 else None
        self._queue_size = queue_size
        self.stats = TransportStats()
        with bus.lock:
            bus._subs.append(self)

    def _ingest(self, frames: list[bytes]) -> None:
        try:
            topic_b, msg = decode(frames)
        except DecodeError as e:
            self.stats.record_decode_error(e, self.name)
            return
        topic = topic_b.decode(errors="replace")
        self._hist.setdefault(topic, collections.deque(maxlen=self._history)).append(msg)
        self.stats.received += 1
        if self._queue is not None:
            if len(self._queue) >= self._queue_size:
                self.stats.dropped += 1
            else:
                self._queue.append((topic, msg))
        if self.on_message is not None:
            self.on_message(topic, msg)

    def latest(self, topic: str) -> Message | None:
        h = self._hist.get(topic)
        return h[-1] if h else None

    def history(self, topic: str) -> list[Message]:
        return list(self._hist.get(topic, ()))

    def topics(self) -> list[str]:
        return list(self._hist)

    def wait_for(self, topic: str, timeout_s: float, newer_than_seq: int = -1) -> Message | None:
        """No waiting in process: the newest sample if it is newer than ``newer_than_seq``, else None."""
        h = self._hist.get(topic)
        return h[-1] if h and h[-1].seq > newer_than_seq else None

    def get(self, timeout_s: float | None = None) -> tuple[str, Message] | None:
        if self._queue is None:
            raise RuntimeError("Subscriber was created without queue_size; use latest()/history()")
        return self._queue.popleft() if self._queue else None

    def close(self) -> None:
        with self.bus.lock:
            if self in self.bus._subs:
                self.bus._subs.remove(self)


class FakeReceiver:
    """In-memory :class:`~robot_stack.comm.transport.Receiver`: a node's lossless input."""

    def __init__(self, bus: FakeBus, node: str):
        self.bus, self.node, self.name = bus, node, node
        self.stats = TransportStats()
        with bus.lock:
            bus._bound.add(node)

    def recv(self, timeout_s: float = 0.0) -> tuple[str, Message] | None:
        q = self.bus._inputs[self.node]
        while q:
            frames = q.popleft()
            try:
                topic_b, msg = decode(frames)
            except DecodeError as e:
                self.stats.record_decode_error(e, self.name)
                continue
            self.stats.received += 1
            return topic_b.decode(errors="replace"), msg
        return None

    def pending(self) -> int:
        """Messages waiting on this input."""
        return len(self.bus._inputs[self.node])

    def close(self) -> None:
        with self.bus.lock:
            self.bus._bound.discard(self.node)


class FakeSender:
    """In-memory :class:`~robot_stack.comm.transport.Sender` to one node's input."""

    def __init__(self, bus: FakeBus, node: str, source: str):
        self.bus, self.node = bus, node
        self.endpoint = f"fake://{node}"
        self._seq = _Sequencer(source)
        self.stats = TransportStats()

    def send(self, topic: str, msg: Message) -> None:
        self._seq.stamp(topic, msg)
        self.bus._push(self.node, _wire(topic, msg))
        self.stats.sent += 1

    def close(self) -> None:
        pass


class FakeRequestClient:
    """In-memory :class:`~robot_stack.comm.transport.RequestClient`: the request goes to
    ``bus.handlers[endpoint]`` (encoded and decoded both ways); none there: a timeout."""

    def __init__(self, bus: FakeBus, endpoint: str, source: str, timeout_s: float = 2.0):
        self.bus, self.endpoint, self.timeout_s = bus, endpoint, timeout_s
        self._seq = _Sequencer(source)
        self._reply_seq = _Sequencer(endpoint)
        self.stats = TransportStats()
        self.reconnects = 0

    def request(self, topic: str, msg: Message, timeout_s: float | None = None) -> Message:
        self._seq.stamp(topic, msg)
        handler = self.bus.handlers.get(self.endpoint)
        if handler is None:  # as a socket would: the caller's timeout passes (on the stack's clock)
            timeout = self.timeout_s if timeout_s is None else timeout_s
            clock.sleep(timeout)
            self.reconnects += 1
            raise TransportTimeout(f"no reply from {self.endpoint} within {timeout:.3f} s")
        t, req = decode(_wire(topic, msg))
        self.stats.sent += 1
        try:
            reply = handler(t.decode(), req)
        except TransportTimeout:
            self.reconnects += 1
            raise
        except Exception as e:  # as the reply server does: the handler failed, the client hears why
            reply = ErrorReply(
                request_id=getattr(req, "request_id", 0), code="handler_error", reason=f"{type(e).__name__}: {e}"
            )
        self._reply_seq.stamp("reply", reply)
        _, reply = decode(_wire("reply", reply))
        self.stats.received += 1
        if isinstance(reply, ErrorReply):
            raise RemoteError(reply)
        return reply

    def close(self) -> None:
        pass
