"""openpi's websocket policy protocol, both directions.

The wire format, as openpi-client 0.1.x speaks it (``openpi_client.websocket_client_policy`` and
``openpi_client.msgpack_numpy``; openpi's ``serving/websocket_policy_server``):

- the client connects (``Authorization: Api-Key <key>`` header when it has a key); the server's first
  message is one binary frame: the msgpack of its metadata dict;
- each request is one binary frame, the msgpack of the observation dict; numpy arrays travel as maps
  ``{b"__ndarray__": True, b"data": <raw bytes>, b"dtype": <numpy dtype str>, b"shape": [...]}`` and
  numpy scalars as ``{b"__npgeneric__": True, b"data": <item>, b"dtype": <str>}``;
- the reply is one binary frame ``{"actions": (H, D), "server_timing": {"infer_ms": ...}, ...}``;
- an error is one text frame carrying the message, after which the server closes with code 1011;
- ``GET /healthz`` answers 200 ``OK``.

Security: the websocket carries no CURVE, so a server binds loopback only (refused otherwise, as a
non-local ZeroMQ bind without CURVE is); a remote user reaches it through an SSH tunnel
(``ssh -N -L 8000:localhost:8000 robot-pc``). An ``api_key`` is checked when set. The client
likewise talks plain ``ws://`` to loopback only (a tunnel's local end), or ``wss://`` (TLS) to a
remote server such as a hosted openpi deployment, with its API key.

Observation keys are mapped by configuration (:class:`OpenpiKeys`), never hard-coded: openpi's
``observation/image`` may be our ``scene.color``. openpi clients send single frames; a policy with
observation horizon To > 1 gets a single frame repeated To times (a stateless server has no
history), or the client sends (To, ...) arrays itself.

Numpy arrays are decoded with explicit dtype and shape checks; object dtypes are refused both
ways (no pickle, ever).
"""

from __future__ import annotations

from robot_stack.errors import RobotStackError

import contextlib
import ipaddress
import logging
import threading
import time
import urllib.parse
from typing import Any
from collections.abc import Callable

import msgpack
import numpy as np
from pydantic import BaseModel, Field

from robot_stack.comm.security import SecurityError
from robot_stack.comm.transport import RemoteError, TransportTimeout

log = logging.getLogger(__name__)

#: keys this stack adds to a request for its own policy server (others ignore unknown keys)
PREFIX_KEY = "robot_stack/committed_prefix"
FROZEN_KEY = "robot_stack/prefix_frozen"


class OpenpiProtocolError(RobotStackError, ValueError):
    """A message that is not valid openpi msgpack (bad array map, object dtype, size mismatch)."""


# ----------------------------------------------------------------------------- msgpack + numpy
def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "VOc":
            raise OpenpiProtocolError(f"cannot send an array of dtype {obj.dtype}")
        a = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": a.tobytes(), b"dtype": a.dtype.str, b"shape": list(a.shape)}
    if isinstance(obj, np.generic):
        if obj.dtype.kind in "VOc":
            raise OpenpiProtocolError(f"cannot send a scalar of dtype {obj.dtype}")
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise OpenpiProtocolError(f"cannot send a {type(obj).__name__}")


def _unpack_hook(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
            shape = tuple(int(n) for n in obj[b"shape"])
            data = obj[b"data"]
        except (KeyError, TypeError, ValueError) as e:
            raise OpenpiProtocolError(f"bad array map: {e}") from None
        if dtype.kind in "VOc" or dtype.hasobject:
            raise OpenpiProtocolError(f"array of dtype {dtype} refused")
        if any(n < 0 for n in shape) or int(np.prod(shape, dtype=np.int64)) * dtype.itemsize != len(data):
            raise OpenpiProtocolError(f"array of shape {shape} and dtype {dtype} does not match {len(data)} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape)
    if b"__npgeneric__" in obj:
        try:
            dtype = np.dtype(obj[b"dtype"])
        except (KeyError, TypeError) as e:
            raise OpenpiProtocolError(f"bad scalar map: {e}") from None
        if dtype.kind in "VOc":
            raise OpenpiProtocolError(f"scalar of dtype {dtype} refused")
        return dtype.type(obj[b"data"])
    return obj


def packb(obj: Any) -> bytes:
    """openpi msgpack: dicts, lists, str, numbers, numpy arrays and scalars."""
    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def unpackb(data: bytes) -> Any:
    """Decode openpi msgpack.

    Raises:
        OpenpiProtocolError: not msgpack, or a malformed array map.
    """
    try:
        return msgpack.unpackb(data, object_hook=_unpack_hook, raw=False, strict_map_key=False)
    except OpenpiProtocolError:
        raise
    except Exception as e:  # msgpack raises several types for garbage
        raise OpenpiProtocolError(f"not openpi msgpack: {type(e).__name__}: {e}") from None


# ----------------------------------------------------------------------------- configuration
class OpenpiKeys(BaseModel):
    """Which openpi observation key carries which of our observation keys.

    ``keys`` maps openpi key -> our key, e.g. ``{"observation/image": "scene.color",
    "observation/wrist_image": "wrist.color", "observation/state": "state"}``. Keys of a request
    that are not mapped (``prompt``, a client's extras) are ignored.
    """

    model_config = {"extra": "forbid"}
    keys: dict[str, str] = Field(
        default_factory=lambda: {"observation/state": "state"},
        description="openpi observation key -> our observation key",
    )

    def to_ours(self, obs: dict) -> dict[str, np.ndarray]:
        """openpi observation dict -> our keys (missing openpi keys are simply absent)."""
        return {ours: obs[theirs] for theirs, ours in self.keys.items() if theirs in obs}

    def to_theirs(self, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Our observation arrays -> openpi keys (keys without a mapping are not sent)."""
        inv = {ours: theirs for theirs, ours in self.keys.items()}
        return {inv[k]: v for k, v in arrays.items() if k in inv}


class OpenpiServerConfig(OpenpiKeys):
    """A policy node's openpi websocket endpoint.

    Attributes:
        host: bind address; loopback only (see module doc).
        port: TCP port (openpi's default is 8000).
        api_key_env: name of an environment variable holding the API key clients must send
            (``Authorization: Api-Key ...``); None: no key (loopback only anyway).
    """

    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    api_key_env: str | None = None


def _remote(code: str, reason: str) -> RemoteError:
    from robot_stack.comm.messages import ErrorReply

    return RemoteError(ErrorReply(code=code, reason=reason))


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# ----------------------------------------------------------------------------- server
class OpenpiServer:
    """Serves ``infer(obs: dict) -> (reply dict | None, error str | None)`` over openpi's websocket
    protocol on a thread (``websockets.sync.server``).

    Args:
        host, port: bind address (loopback only).
        metadata: sent to each client on connect (msgpack-able).
        infer: called per request with the decoded observation dict; returns the reply dict
            (``actions`` and ``server_timing`` at least) or an error string.
        api_key: required ``Api-Key`` when set.
        max_size: a message larger than this (bytes) is refused as it arrives, before it is read
            whole (the websockets library closes that connection with code 1009); None: no cap.

    Raises:
        SecurityError: a non-loopback bind address.
        OSError: the port cannot be bound.
    """

    def __init__(
        self,
        host: str,
        port: int,
        metadata: dict,
        infer: Callable[[dict], tuple[dict | None, str | None]],
        api_key: str | None = None,
        max_size: int | None = None,
    ):
        from websockets.sync.server import serve

        if not _is_loopback(host):
            raise SecurityError(
                f"openpi websocket server on {host}: the protocol has no authentication of its "
                f"own; bind 127.0.0.1 and reach it through an SSH tunnel (ssh -N -L "
                f"{port}:localhost:{port} <this host>)"
            )
        self.metadata, self._infer, self._api_key = metadata, infer, api_key
        self.requests = self.errors = self.unauthorized = 0
        self._server = serve(
            self._handler, host, port, compression=None, max_size=max_size, process_request=self._process_request
        )
        self.port = self._server.socket.getsockname()[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="openpi-ws", daemon=True)
        self._thread.start()

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(200, "OK\n")
        if self._api_key is not None:
            got = request.headers.get("Authorization", "")
            if got != f"Api-Key {self._api_key}":
                self.unauthorized += 1
                return connection.respond(401, "missing or wrong API key\n")
        return None

    def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        try:
            ws.send(packb(self.metadata))
            while True:
                data = ws.recv()
                self.requests += 1
                if isinstance(data, str):
                    reply, err = None, "expected a binary msgpack frame, got text"
                else:
                    try:
                        obs = unpackb(data)
                        if not isinstance(obs, dict):
                            raise OpenpiProtocolError(f"expected an observation map, got {type(obs).__name__}")
                        reply, err = self._infer(obs)
                    except OpenpiProtocolError as e:
                        reply, err = None, str(e)
                if err is not None:
                    self.errors += 1
                    ws.send(err)
                    ws.close(1011, err[:120])
                    return
                ws.send(packb(reply))
        except ConnectionClosed:
            return

    def close(self) -> None:
        """Stop serving and close open connections."""
        self._server.shutdown()
        self._thread.join(timeout=3)


# ----------------------------------------------------------------------------- client
class OpenpiClient:
    """The controller's policy client for an openpi-protocol server (``policy_endpoint: ws://...``).

    Same surface as :class:`~robot_stack.comm.transport.RequestClient`: ``request("infer",
    ObservationWindow) -> ActionChunk``. Sends the newest frame of each mapped key (or the whole
    (To, ...) window with ``send_window``), and an RTC prefix under :data:`PREFIX_KEY` (this stack's
    own server follows it; other servers ignore it). The chunk's dt and offset come from the
    server's metadata (``dt``, ``offset``) when it gives them, else from ``dt``/``offset``.

    Args:
        endpoint: ``ws://127.0.0.1:PORT`` (loopback: an SSH tunnel's local end) or ``wss://...``.
        keys: the openpi <-> our key mapping.
        timeout_s: reply timeout, s.
        api_key: sent as ``Authorization: Api-Key``.

    Raises:
        SecurityError: plain ``ws://`` to a non-loopback host.
        ValueError: not a ws:// or wss:// URL.
    """

    def __init__(
        self,
        endpoint: str,
        keys: OpenpiKeys,
        *,
        timeout_s: float = 2.0,
        api_key: str | None = None,
        dt: float = 0.1,
        offset: int = 0,
        send_window: bool = False,
    ):
        u = urllib.parse.urlparse(endpoint)
        if u.scheme not in ("ws", "wss") or not u.hostname:
            raise ValueError(f"openpi endpoint {endpoint!r}: expected ws://host:port or wss://host:port")
        if u.scheme == "ws" and not _is_loopback(u.hostname):
            raise SecurityError(
                f"openpi endpoint {endpoint}: plain ws:// leaves this host unauthenticated and "
                f"unencrypted; use an SSH tunnel (ws://127.0.0.1:PORT) or wss://"
            )
        self.endpoint, self.keys, self.timeout_s, self.api_key = endpoint, keys, timeout_s, api_key
        self.dt, self.offset, self.send_window = dt, offset, send_window
        self._ws = self._stack = None
        self.metadata: dict = {}

    def _connect(self) -> None:
        from websockets.sync.client import connect

        headers = {"Authorization": f"Api-Key {self.api_key}"} if self.api_key else None
        try:
            self._stack = contextlib.ExitStack()  # websockets >= 17 wants connect() as a context manager
            self._ws = self._stack.enter_context(
                connect(
                    self.endpoint,
                    compression=None,
                    max_size=None,
                    additional_headers=headers,
                    open_timeout=self.timeout_s,
                    # a hung server never answers the closing handshake: give up on it after 0.5 s
                    # (the library's 10 s default made a hang known 12 s after the request)
                    close_timeout=min(0.5, self.timeout_s),
                )
            )
            self.metadata = unpackb(self._ws.recv(timeout=self.timeout_s))
        except TimeoutError:
            self.close()
            raise TransportTimeout(f"no openpi metadata from {self.endpoint} within {self.timeout_s:.1f} s") from None
        except (OSError, OpenpiProtocolError) as e:
            self.close()
            raise TransportTimeout(f"cannot connect to {self.endpoint}: {e}") from None
        except Exception as e:  # websockets' handshake errors (401 from a wrong key, ...)
            self.close()
            raise _remote("refused", f"{self.endpoint} refused the connection: {e}") from None

    def request(self, topic: str, msg, timeout_s: float | None = None):
        """Send an :class:`ObservationWindow`, return an :class:`ActionChunk`.

        Raises:
            TransportTimeout: no connection or no reply in time (the connection is re-opened next time).
            RemoteError: the server answered with an error (text frame) or a reply without actions.
        """
        from robot_stack.comm.messages import ActionChunk
        from websockets.exceptions import ConnectionClosed

        if self._ws is None:
            self._connect()
        obs = {k: (v if self.send_window else v[-1]) for k, v in msg.obs.items()}
        out: dict[str, Any] = self.keys.to_theirs(obs)
        if msg.committed_prefix is not None and len(msg.committed_prefix):
            out[PREFIX_KEY] = np.asarray(msg.committed_prefix, np.float32)
            out[FROZEN_KEY] = int(msg.prefix_frozen)
        if msg.prompt:  # a language-conditioned policy's instruction (openpi's key)
            out["prompt"] = msg.prompt
        t0 = time.perf_counter_ns()
        try:
            self._ws.send(packb(out))
            reply = self._ws.recv(timeout=self.timeout_s if timeout_s is None else timeout_s)
        except TimeoutError:
            self.close()
            raise TransportTimeout(f"no reply from {self.endpoint} within {self.timeout_s:.1f} s") from None
        except ConnectionClosed as e:
            self.close()
            raise TransportTimeout(f"{self.endpoint} closed the connection: {e}") from None
        if isinstance(reply, str):
            self.close()
            raise _remote("openpi_error", reply)
        try:
            r = unpackb(reply)
            actions = np.asarray(r["actions"], np.float32)
        except (OpenpiProtocolError, KeyError, TypeError) as e:
            raise _remote("bad_reply", f"openpi reply without usable actions: {e}") from None
        infer_ms = float((r.get("server_timing") or {}).get("infer_ms", (time.perf_counter_ns() - t0) / 1e6))
        frozen = int(r.get(FROZEN_KEY, -1))
        return ActionChunk(
            request_id=msg.request_id,
            actions=actions.reshape(len(actions), -1),
            dt=float(self.metadata.get("dt", self.dt)),
            offset=int(self.metadata.get("offset", self.offset)),
            inference_ns=int(infer_ms * 1e6),
            prefix_frozen=frozen,
        )

    def close(self) -> None:
        if self._stack is not None:
            try:
                self._stack.close()
            except Exception:  # already gone
                pass
        self._ws = self._stack = None
