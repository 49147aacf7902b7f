"""Malformed messages for fault injection: frames that a socket could carry and the codec must
refuse (named, counted, never reaching a driver), and messages that decode but are wrong.

Each builder returns multipart frames (a list of bytes) for :meth:`FakeBus.inject` /
:meth:`FakeBus.inject_published`, or for a real socket's ``send_multipart``.
"""

from __future__ import annotations

import msgpack
import numpy as np

from robot_stack.comm.codec import encode
from robot_stack.comm.messages import Message, WaypointSchedule


def wire(topic: str, msg: Message) -> list[bytes]:
    """``msg`` encoded as a socket carries it (bytes frames)."""
    return [bytes(memoryview(getattr(f, "buffer", f))) for f in encode(topic, msg)]


def undecodable(topic: str = "heartbeat") -> list[bytes]:
    """A header that is msgpack but not a message header."""
    return [topic.encode(), msgpack.packb({"x": 1})]


def truncated_buffer(topic: str, msg: Message) -> list[bytes]:
    """A valid message whose first array buffer lost its last byte (shape x itemsize != length)."""
    frames = wire(topic, msg)
    if len(frames) < 3:
        raise ValueError("the message has no array buffer to truncate")
    frames[2] = frames[2][:-1]
    return frames


def extra_frame(topic: str, msg: Message) -> list[bytes]:
    """A valid message with one frame too many."""
    return wire(topic, msg) + [b"\x00" * 8]


def wrong_schema_version(topic: str, msg: Message) -> list[bytes]:
    """A valid message whose header claims a schema version this stack does not know."""
    frames = wire(topic, msg)
    header = msgpack.unpackb(frames[1])
    header["v"] = int(header.get("v", 1)) + 99
    frames[1] = msgpack.packb(header)
    return frames


def nan_schedule(stamps_ns: np.ndarray, poses: np.ndarray, at: int = 0) -> WaypointSchedule:
    """A schedule that decodes but holds a NaN (the arm node must refuse it, never command it)."""
    p = np.array(poses, np.float64)
    p[at, 0] = np.nan
    return WaypointSchedule(stamps_ns=np.asarray(stamps_ns, np.int64), positions=p, space="ee")
