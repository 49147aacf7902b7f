"""Message codec: ``[topic, msgpack header, raw buffer 0, raw buffer 1, ...]``.

Header (msgpack map)::

    {"schema": str, "v": int, "seq": int, "stamp_ns": int, "src": str,
     "f": {scalar field: value},
     "a": [[field name, dtype str, shape list, buffer index], ...]}

Arrays travel as raw buffers (C-contiguous, little-endian); encoding never copies a contiguous
array, decoding wraps the received buffer with ``np.frombuffer`` (read-only, zero-copy).

:func:`decode` validates everything before use (frame count, header size and structure, schema
name and version, dtype whitelist, shape x itemsize == buffer length, size caps, field types and
cross-field checks) and raises a single error type, :class:`DecodeError`, for anything wrong.
No pickle anywhere.
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import math
from typing import Any
from collections.abc import Callable, Sequence

import msgpack
import numpy as np

from robot_stack.comm.shm_ring import ShmError, ShmRingReader, ShmRingWriter
from robot_stack.comm.messages import (
    DTYPE_WHITELIST,
    MAX_DICT_ARRAYS,
    REGISTRY,
    ArrayDictSpec,
    ArraySpec,
    Message,
    ScalarSpec,
    SchemaError,
    validate_array,
    validate_scalar,
)

MAX_TOPIC_BYTES = 128
MAX_HEADER_BYTES = 64 * 1024
MAX_BUFFERS = 64
MAX_BUFFER_BYTES = 64 * 1024 * 1024
MAX_TOTAL_BYTES = 256 * 1024 * 1024
MAX_NDIM = 6

_UNPACK_LIMITS = dict(
    raw=False,
    strict_map_key=True,
    max_str_len=MAX_HEADER_BYTES,
    max_bin_len=0,  # no binary blobs in headers: arrays go in buffers
    max_array_len=4096,
    max_map_len=1024,
    max_ext_len=0,
)


class DecodeError(RobotStackError, ValueError):
    """A received message is malformed. ``reason`` says why; the message must be dropped."""

    def __init__(self, reason: str, topic: bytes | None = None):
        super().__init__(reason)
        self.reason = reason
        self.topic = topic


class EncodeError(RobotStackError, ValueError):
    """A message to send does not satisfy its schema (a bug in the sender)."""


def _as_wire_array(name: str, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.byteorder == ">":
        raise EncodeError(f"field {name!r}: big-endian arrays are not sent; convert to little-endian")
    if not arr.flags.c_contiguous:
        arr = np.ascontiguousarray(arr)
    return arr


def encode(topic: str | bytes, msg: Message, ring: ShmRingWriter | None = None) -> list[Any]:
    """Encode ``msg`` for ``topic`` into multipart frames.

    Args:
        topic: routing topic (ASCII, at most 128 bytes).
        msg: a registered :class:`Message`.
        ring: if given, the array buffers are copied into the next slot of this same-host
            shared-memory ring and the header references them (``"shm"`` key) instead of carrying
            them as frames. The caller checks ``ring.fits`` first (``reserve`` raises ValueError
            for buffers that do not fit a slot).

    Returns:
        ``[topic bytes, header bytes, buffer...]``; buffers are memoryviews of the arrays (no copy
        for C-contiguous input). Send with ``send_multipart(frames, copy=False)``. With ``ring``,
        just ``[topic, header]``.

    Raises:
        EncodeError: unknown schema, a field violating its declared spec, or failed cross-checks.
    """
    frames, commit = encode_deferred(topic, msg, ring)
    commit()
    return frames


def encode_deferred(
    topic: str | bytes, msg: Message, ring: ShmRingWriter | None = None
) -> tuple[list[Any], Callable[[], None]]:
    """:func:`encode`, with the shared-memory copy left to the returned ``commit()``.

    With ``ring``, the slot is reserved and the header is ready before the array data is copied, so
    the caller can send the header first and copy while ZeroMQ delivers it; ``commit()`` must be
    called in every case (after a failed send too), or the slot stays marked as being written and
    its reader drops the sample after waiting. Without ``ring``, ``commit`` does nothing.

    Returns:
        ``(frames, commit)``.

    Raises:
        EncodeError: as :func:`encode`.
    """
    t = topic.encode() if isinstance(topic, str) else bytes(topic)
    if len(t) > MAX_TOPIC_BYTES:
        raise EncodeError(f"topic longer than {MAX_TOPIC_BYTES} bytes")
    cls = type(msg)
    if REGISTRY.get(cls.SCHEMA) is not cls:
        raise EncodeError(f"message type {cls.__name__} is not a registered schema")
    scalars: dict[str, Any] = {}
    arrays: list[list[Any]] = []
    buffers: list[Any] = []
    try:
        for name, spec in cls.specs().items():
            value = getattr(msg, name)
            if isinstance(spec, ScalarSpec):
                if name in ("stamp_ns", "seq", "source"):
                    validate_scalar(name, spec, value)
                    continue
                scalars[name] = validate_scalar(name, spec, value)
            elif isinstance(spec, ArraySpec):
                arr = validate_array(name, spec, value)
                if arr is None:
                    continue
                arr = _as_wire_array(name, arr)
                arrays.append([name, arr.dtype.str, list(arr.shape), len(buffers)])
                buffers.append(memoryview(arr).cast("B") if arr.size else b"")
            else:
                if not isinstance(value, dict) or len(value) > MAX_DICT_ARRAYS:
                    raise SchemaError(f"field {name!r}: expected dict of at most {MAX_DICT_ARRAYS} arrays")
                for key, arr in value.items():
                    if not isinstance(key, str) or not isinstance(arr, np.ndarray):
                        raise SchemaError(f"field {name!r}: entries must be str -> ndarray")
                    if arr.dtype.str not in DTYPE_WHITELIST or arr.ndim > spec.max_ndim:
                        raise SchemaError(f"field {name!r}[{key!r}]: dtype/ndim not allowed")
                    arr = _as_wire_array(name, arr)
                    arrays.append([f"{name}/{key}", arr.dtype.str, list(arr.shape), len(buffers)])
                    buffers.append(memoryview(arr).cast("B") if arr.size else b"")
        msg.check()
    except SchemaError as e:
        raise EncodeError(f"{cls.SCHEMA}: {e}") from None
    header = {
        "schema": cls.SCHEMA,
        "v": cls.VERSION,
        "seq": int(msg.seq),
        "stamp_ns": int(msg.stamp_ns),
        "src": msg.source,
        "f": scalars,
        "a": arrays,
    }
    if ring is not None:
        header["shm"], commit = ring.reserve([memoryview(b).nbytes for b in buffers])
        try:
            packed = msgpack.packb(header, use_bin_type=True)
        except BaseException:
            commit(buffers)
            raise
        return [t, packed], lambda: commit(buffers)
    return [t, msgpack.packb(header, use_bin_type=True), *buffers], _nothing


def _nothing() -> None:
    return None


def buffer_sizes(msg: Message) -> list[int]:
    """Byte sizes of the array buffers ``encode`` would send for ``msg`` (no validation)."""
    sizes = []
    for name, spec in type(msg).specs().items():
        v = getattr(msg, name)
        if isinstance(spec, ArraySpec) and isinstance(v, np.ndarray):
            sizes.append(v.nbytes)
        elif isinstance(spec, ArrayDictSpec) and isinstance(v, dict):
            sizes.extend(a.nbytes for a in v.values() if isinstance(a, np.ndarray))
    return sizes


def _buf(frame: Any) -> memoryview:
    """Memoryview of a frame (bytes, memoryview, or zmq.Frame) without copying."""
    b = getattr(frame, "buffer", frame)
    return memoryview(b)


def decode(frames: Sequence[Any], shm: ShmRingReader | None = None) -> tuple[bytes, Message]:
    """Decode and validate multipart ``frames``.

    Args:
        frames: ``[topic, header, buffers...]`` as bytes, memoryviews or ``zmq.Frame`` objects.
        shm: reader for headers that reference a same-host shared-memory ring; without it such
            messages are rejected.

    Returns:
        ``(topic, message)``; message arrays are read-only views on the received buffers.

    Raises:
        DecodeError: with a readable reason, for any malformed input. Nothing else is raised for
            bad input.
    """
    topic = None
    try:
        if not isinstance(frames, (list, tuple)):
            raise DecodeError("frames must be a list")
        if len(frames) < 2:
            raise DecodeError(f"expected at least 2 frames (topic, header), got {len(frames)}")
        if len(frames) - 2 > MAX_BUFFERS:
            raise DecodeError(f"too many buffers: {len(frames) - 2} > {MAX_BUFFERS}")
        tv = _buf(frames[0])
        if tv.nbytes > MAX_TOPIC_BYTES:
            raise DecodeError(f"topic longer than {MAX_TOPIC_BYTES} bytes")
        topic = tv.tobytes()
        hv = _buf(frames[1])
        if hv.nbytes > MAX_HEADER_BYTES:
            raise DecodeError(f"header of {hv.nbytes} bytes exceeds cap {MAX_HEADER_BYTES}")
        try:
            header = msgpack.unpackb(hv, **_UNPACK_LIMITS)
        except Exception as e:  # msgpack raises several types for bad input
            raise DecodeError(f"header is not valid msgpack: {type(e).__name__}: {e}") from None
        if isinstance(header, dict) and "shm" in header:
            if shm is None:
                raise DecodeError("message references shared memory but this reader has none (cross-host?)")
            if len(frames) != 2:
                raise DecodeError("a shared-memory message must have exactly 2 frames")
            try:
                buffers = shm.read(header["shm"])
            except ShmError as e:
                raise DecodeError(f"shared-memory buffers unavailable: {e}") from None
        else:
            buffers = list(frames[2:])
        return topic, _decode_header(header, buffers)
    except DecodeError as e:
        e.topic = topic
        raise
    except (TypeError, ValueError, OverflowError, MemoryError, BufferError) as e:
        # defensive: any unexpected type/value problem is still a DecodeError, never a crash
        raise DecodeError(f"malformed message: {type(e).__name__}: {e}", topic) from None


_HEADER_KEYS = {"schema", "v", "seq", "stamp_ns", "src", "f", "a"}


def _decode_header(header: Any, buffers: Sequence[Any]) -> Message:
    if not isinstance(header, dict):
        raise DecodeError("header is not a map")
    missing = _HEADER_KEYS - header.keys()
    if missing:
        raise DecodeError(f"header lacks keys {sorted(missing)}")
    extra = header.keys() - _HEADER_KEYS - {"shm"}
    if extra:
        raise DecodeError(f"header has unknown keys {sorted(map(str, extra))}")
    schema = header["schema"]
    cls = REGISTRY.get(schema) if isinstance(schema, str) else None
    if cls is None:
        raise DecodeError(f"unknown schema {schema!r}")
    if header["v"] != cls.VERSION or isinstance(header["v"], bool):
        raise DecodeError(f"schema {schema!r} version {header['v']!r} not supported (expected {cls.VERSION})")
    fields_in, arrays_in = header["f"], header["a"]
    if not isinstance(fields_in, dict) or not isinstance(arrays_in, list):
        raise DecodeError("header 'f' must be a map and 'a' a list")
    nbuf = len(buffers)
    if len(arrays_in) != nbuf:
        raise DecodeError(f"header describes {len(arrays_in)} arrays but {nbuf} buffers arrived")

    specs = cls.specs()
    values: dict[str, Any] = {}
    try:
        for key in ("stamp_ns", "seq"):
            values[key] = validate_scalar(key, specs[key], header[key])
        values["source"] = validate_scalar("source", specs["source"], header["src"])
        for name, value in fields_in.items():
            spec = specs.get(name)
            if not isinstance(spec, ScalarSpec) or name in ("stamp_ns", "seq", "source"):
                raise DecodeError(f"unexpected scalar field {name!r} for {schema!r}")
            values[name] = validate_scalar(name, spec, value)
    except SchemaError as e:
        raise DecodeError(f"{schema}: {e}") from None

    seen_idx: set[int] = set()
    total = 0
    dict_fields: dict[str, dict[str, np.ndarray]] = {}
    for entry in arrays_in:
        if not (isinstance(entry, list) and len(entry) == 4):
            raise DecodeError("array descriptor must be [name, dtype, shape, index]")
        name, dtype_s, shape, idx = entry
        if not isinstance(name, str) or not isinstance(dtype_s, str):
            raise DecodeError("array name and dtype must be strings")
        if dtype_s not in DTYPE_WHITELIST:
            raise DecodeError(f"array {name!r}: dtype {dtype_s!r} not allowed")
        if not isinstance(shape, list) or len(shape) > MAX_NDIM:
            raise DecodeError(f"array {name!r}: shape must be a list of at most {MAX_NDIM} dims")
        if not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**31 for s in shape):
            raise DecodeError(f"array {name!r}: shape {shape!r} has invalid dimensions")
        if not isinstance(idx, int) or isinstance(idx, bool) or not 0 <= idx < nbuf or idx in seen_idx:
            raise DecodeError(f"array {name!r}: bad or repeated buffer index {idx!r}")
        seen_idx.add(idx)
        dtype = np.dtype(dtype_s)
        expected = math.prod(shape) * dtype.itemsize
        if expected > MAX_BUFFER_BYTES:
            raise DecodeError(f"array {name!r}: {expected} bytes exceeds cap {MAX_BUFFER_BYTES}")
        buf = _buf(buffers[idx])
        if buf.nbytes != expected:
            raise DecodeError(
                f"array {name!r}: buffer has {buf.nbytes} bytes, shape {shape} x {dtype.itemsize} needs {expected}"
            )
        total += expected
        if total > MAX_TOTAL_BYTES:
            raise DecodeError(f"message exceeds total size cap {MAX_TOTAL_BYTES}")
        arr = np.frombuffer(buf, dtype=dtype).reshape(shape) if expected else np.zeros(shape, dtype)
        arr.flags.writeable = False  # received data is never modified in place
        if "/" in name:
            field, key = name.split("/", 1)
            if not isinstance(specs.get(field), ArrayDictSpec):
                raise DecodeError(f"unexpected array-dict field {field!r} for {schema!r}")
            if len(key) > 256 or len(shape) > specs[field].max_ndim:
                raise DecodeError(f"array {name!r}: key too long or too many dims")
            d = dict_fields.setdefault(field, {})
            if key in d:
                raise DecodeError(f"array {name!r} repeated")
            d[key] = arr
            continue
        spec = specs.get(name)
        if not isinstance(spec, ArraySpec):
            raise DecodeError(f"unexpected array field {name!r} for {schema!r}")
        if name in values:
            raise DecodeError(f"array {name!r} repeated")
        try:
            values[name] = validate_array(name, spec, arr)
        except SchemaError as e:
            raise DecodeError(f"{schema}: {e}") from None
    for field, d in dict_fields.items():
        if len(d) > MAX_DICT_ARRAYS:
            raise DecodeError(f"field {field!r}: more than {MAX_DICT_ARRAYS} arrays")
        values[field] = d

    for name, spec in specs.items():
        if isinstance(spec, ArraySpec) and not spec.optional and name not in values:
            raise DecodeError(f"{schema}: required array {name!r} missing")
    try:
        msg = cls._from_fields(values)
        msg.check()
    except SchemaError as e:
        raise DecodeError(f"{schema}: {e}") from None
    return msg


__all__ = ["encode", "encode_deferred", "decode", "buffer_sizes", "DecodeError", "EncodeError"]
