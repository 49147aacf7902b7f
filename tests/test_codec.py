"""Codec: round trips, zero-copy, strict validation, property and fuzz tests."""

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from robot_stack.comm.codec import DecodeError, EncodeError, decode, encode
from robot_stack.comm.messages import (
    ActionChunk,
    CameraFrame,
    EpisodeEvent,
    ErrorReply,
    Heartbeat,
    ObservationWindow,
    RobotState,
    TeleopCommand,
    WaypointSchedule,
)


def camera_frame(h=48, w=64):
    rng = np.random.default_rng(0)
    return CameraFrame(
        stamp_ns=123,
        camera_id="scene",
        frame_index=7,
        color=rng.integers(0, 255, (h, w, 3), dtype=np.uint8),
        depth=rng.integers(0, 5000, (h, w), dtype=np.uint16),
        depth_scale=0.001,
        K=np.array([[600.0, 0, 320], [0, 600, 240], [0, 0, 1]]),
    )


def all_messages():
    return [
        camera_frame(),
        RobotState(
            q=np.arange(7.0),
            dq=np.zeros(7),
            ee_pose=np.array([0.5, 0, 0.4, 0, 0, 0, 1.0]),
            gripper_width=0.04,
            mode="track",
            safety_events=2,
        ),
        TeleopCommand(kind="ee_delta", value=np.arange(6.0), gripper=0.5, buttons=["episode_start"]),
        ObservationWindow(
            request_id=5,
            obs={"scene.color": np.zeros((2, 8, 8, 3), np.uint8), "state": np.ones((2, 8), np.float32)},
            obs_age_ns=np.array([40_000_000, 7_000_000], np.int64),
            committed_prefix=np.ones((3, 8), np.float32),
        ),
        ActionChunk(request_id=5, actions=np.ones((16, 8), np.float32), dt=0.1, offset=0, inference_ns=12345),
        WaypointSchedule(
            stamps_ns=np.array([1, 2, 3], np.int64), positions=np.zeros((3, 7)), gripper=np.ones(3), origin="policy"
        ),
        EpisodeEvent(kind="stop", episode=3, task="push the cube"),
        Heartbeat(node="arm", state="running", metrics={"loop.jitter_p99_s": 1e-4}),
        ErrorReply(request_id=1, code="bad_request", reason="wrong keys"),
    ]


def assert_same(a, b):
    assert type(a) is type(b)
    for name in type(a).specs():
        va, vb = getattr(a, name), getattr(b, name)
        if isinstance(va, np.ndarray):
            assert va.dtype == vb.dtype and np.array_equal(va, vb), name
        elif isinstance(va, dict) and va and isinstance(next(iter(va.values())), np.ndarray):
            assert va.keys() == vb.keys()
            for k in va:
                assert np.array_equal(va[k], vb[k]) and va[k].dtype == vb[k].dtype
        else:
            assert va == vb, name


@pytest.mark.parametrize("msg", all_messages(), ids=lambda m: m.SCHEMA)
def test_round_trip_every_schema(msg):
    topic, out = decode(encode("t/x", msg))
    assert topic == b"t/x"
    assert_same(msg, out)


def test_zero_copy_both_ways():
    msg = camera_frame()
    frames = encode("cam", msg)
    # encode: the buffer is a view of the original array
    assert np.shares_memory(np.frombuffer(frames[2], np.uint8), msg.color)
    # decode: arrays are read-only views of the received buffers
    received = [bytes(frames[0]), bytes(frames[1])] + [bytearray(f) for f in frames[2:]]
    _, out = decode(received)
    assert np.shares_memory(out.color, np.frombuffer(received[2], np.uint8))
    assert not out.color.flags.writeable
    with pytest.raises(ValueError):
        out.color[0, 0, 0] = 1


def test_non_contiguous_array_is_sent_correctly():
    big = np.arange(100.0).reshape(10, 10)
    msg = WaypointSchedule(stamps_ns=np.arange(10, dtype=np.int64) + 1, positions=big[:, ::2])
    _, out = decode(encode("w", msg))
    assert np.array_equal(out.positions, big[:, ::2])


def _with_header(frames, **changes):
    h = msgpack.unpackb(frames[1])
    for k, v in changes.items():
        if v is ...:
            del h[k]
        else:
            h[k] = v
    return [frames[0], msgpack.packb(h), *frames[2:]]


def test_rejections_name_the_reason():
    good = encode("cam", camera_frame())
    h = msgpack.unpackb(good[1])
    cases = {
        "at least 2 frames": [b"cam"],
        "not valid msgpack": [b"cam", b"\xc1\xc1"],
        "header is not a map": [b"cam", msgpack.packb([1, 2])],
        "lacks keys": _with_header(good, seq=...),
        "unknown schema": _with_header(good, schema="nope"),
        "version 99 not supported": _with_header(good, v=99),
        "describes 3 arrays but 1 buffers": good[:3],
        "dtype '<f2' not allowed": _with_header(good, a=[["color", "<f2", [48, 64, 3], 0], h["a"][1], h["a"][2]]),
        "buffer has": _with_header(good, a=[["color", "|u1", [48, 64, 4], 0], h["a"][1], h["a"][2]]),
        "exceeds cap": _with_header(good, a=[["color", "|u1", [100000, 100000, 3], 0], h["a"][1], h["a"][2]]),
        "bad or repeated buffer index": _with_header(good, a=[h["a"][0], ["depth", "<u2", [48, 64], 0], h["a"][2]]),
        "unexpected scalar field": _with_header(good, f={**h["f"], "evil": 1}),
        "expected str": _with_header(good, f={**h["f"], "camera_id": 5}),
        "non-finite float": _with_header(good, f={**h["f"], "depth_scale": float("nan")}),
        "expected int": _with_header(good, seq=True),
    }
    for reason, frames in cases.items():
        with pytest.raises(DecodeError) as ei:
            decode(frames)
        assert reason in ei.value.reason, (reason, ei.value.reason)


def test_schema_cross_checks_on_decode():
    wp = WaypointSchedule(stamps_ns=np.array([1, 2], np.int64), positions=np.zeros((2, 7)))
    frames = encode("w", wp)
    bad_stamps = np.array([2, 1], np.int64)
    frames[2] = memoryview(bad_stamps).cast("B")
    with pytest.raises(DecodeError, match="strictly increasing"):
        decode(frames)


def test_encode_refuses_invalid_messages():
    with pytest.raises(EncodeError, match="dtype"):
        encode("x", RobotState(q=np.zeros(7, np.float32), dq=np.zeros(7), ee_pose=np.zeros(7)))
    with pytest.raises(EncodeError, match="not one of"):
        encode("x", RobotState(q=np.zeros(7), dq=np.zeros(7), ee_pose=np.zeros(7), mode="fly"))
    with pytest.raises(EncodeError, match="depth shape"):
        encode(
            "x",
            CameraFrame(
                color=np.zeros((4, 4, 3), np.uint8), depth=np.zeros((4, 5), np.uint16), depth_scale=0.001, K=np.eye(3)
            ),
        )


WIRE_DTYPES = st.sampled_from([np.uint8, np.uint16, np.int32, np.int64, np.float32, np.float64, np.bool_])


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data(), dtype=WIRE_DTYPES)
def test_property_observation_window_round_trip(data, dtype):
    keys = data.draw(st.lists(st.text("abcdefgh._", min_size=1, max_size=12), min_size=0, max_size=5, unique=True))
    obs = {k: data.draw(hnp.arrays(dtype, hnp.array_shapes(min_dims=0, max_dims=4, max_side=6))) for k in keys}
    ages = data.draw(hnp.arrays(np.int64, st.integers(0, 5)))
    msg = ObservationWindow(
        request_id=data.draw(st.integers(0, 2**62)), obs=obs, obs_age_ns=ages, stamp_ns=data.draw(st.integers(0, 2**62))
    )
    _, out = decode(encode("obs", msg))
    assert out.request_id == msg.request_id and out.stamp_ns == msg.stamp_ns
    assert out.obs.keys() == obs.keys()
    for k in obs:
        assert out.obs[k].shape == obs[k].shape and out.obs[k].dtype == obs[k].dtype
        assert np.array_equal(out.obs[k], obs[k], equal_nan=dtype in (np.float32, np.float64))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=0, max_size=6))
def test_fuzz_random_frames_only_raise_decode_error(frames):
    try:
        decode(frames)
    except DecodeError:
        pass


@settings(max_examples=800, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_fuzz_mutated_valid_messages(data):
    msg = data.draw(st.sampled_from(all_messages()))
    frames = [bytearray(bytes(f)) for f in encode("topic", msg)]
    op = data.draw(st.sampled_from(["flip", "truncate", "drop", "dup", "swap", "extend"]))
    i = data.draw(st.integers(0, len(frames) - 1))
    if op == "flip" and len(frames[i]):
        j = data.draw(st.integers(0, len(frames[i]) - 1))
        frames[i][j] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        frames[i] = frames[i][: data.draw(st.integers(0, max(0, len(frames[i]) - 1)))]
    elif op == "drop":
        del frames[i]
    elif op == "dup":
        frames.insert(i, frames[i])
    elif op == "swap" and len(frames) > 2:
        j = data.draw(st.integers(0, len(frames) - 1))
        frames[i], frames[j] = frames[j], frames[i]
    elif op == "extend":
        frames[i] += data.draw(st.binary(min_size=1, max_size=16))
    try:
        topic, out = decode(frames)
    except DecodeError:
        return
    # a mutation that still decodes must yield a fully valid message of a known schema
    out.check()
    assert out.SCHEMA


@settings(max_examples=300, deadline=None)
@given(
    ref=st.dictionaries(
        st.sampled_from(["name", "slots", "cap", "slot", "gen", "spans", "x"]),
        st.one_of(
            st.integers(-5, 10**7),
            st.text(max_size=20),
            st.none(),
            st.lists(st.lists(st.integers(-1, 10**6), max_size=3), max_size=3),
        ),
    )
)
def test_fuzz_shared_memory_references(ref):
    from robot_stack.comm.shm_ring import ShmRingReader

    frames = encode("c", camera_frame(4, 4))
    h = msgpack.unpackb(frames[1])
    h["a"] = h["a"]
    h["shm"] = ref
    reader = ShmRingReader()
    with pytest.raises(DecodeError):
        decode([frames[0], msgpack.packb(h)], shm=reader)
    reader.close()


def test_topics_live_with_their_schemas():
    from robot_stack.comm.messages import REGISTRY, ArmControl
    from robot_stack.drivers import sim_messages

    assert CameraFrame.topic("wrist") == "camera/wrist" and Heartbeat.topic("arm") == "heartbeat/arm"
    assert RobotState.topic() == "robot/state" and TeleopCommand.TOPIC == "teleop/command"
    assert (WaypointSchedule.TOPIC, ArmControl.TOPIC, EpisodeEvent.TOPIC) == ("waypoints", "control", "event")
    with pytest.raises(ValueError, match="needs a name"):
        CameraFrame.topic()
    with pytest.raises(ValueError, match="takes no name"):
        RobotState.topic("x")
    # every streamed or sent schema has a topic; only request/reply payloads have none
    no_topic = {name for name, cls in REGISTRY.items() if not cls.TOPIC}
    assert no_topic == {"observation_window", "action_chunk", "error_reply", "spec_request", "policy_spec"}
    # the sim world's protocol is defined next to the sim, under sim/ topics
    sim = {
        cls.SCHEMA: cls.TOPIC
        for cls in vars(sim_messages).values()
        if isinstance(cls, type) and cls.__module__ == sim_messages.__name__
    }
    assert sim == {
        "joint_state": "sim/joint_state",
        "joint_target": "sim/joint_target",
        "sim_command": "sim/command",
        "sim_state": "sim/state",
        "object_state": "sim/objects",
    }
    assert not any(cls.TOPIC.startswith("sim/") for name, cls in REGISTRY.items() if name not in sim)


def test_observation_window_prefix_frozen_is_checked():
    ok = ObservationWindow(
        request_id=1,
        obs={"state": np.ones((2, 8), np.float32)},
        obs_age_ns=np.zeros(2, np.int64),
        committed_prefix=np.ones((5, 8), np.float32),
        prefix_frozen=3,
    )
    assert decode(encode("infer", ok))[1].prefix_frozen == 3
    bad = ObservationWindow(
        request_id=1,
        obs={"state": np.ones((2, 8), np.float32)},
        obs_age_ns=np.zeros(2, np.int64),
        committed_prefix=np.ones((2, 8), np.float32),
        prefix_frozen=3,
    )
    with pytest.raises(EncodeError, match="prefix_frozen 3 outside -1..2"):
        encode("infer", bad)
