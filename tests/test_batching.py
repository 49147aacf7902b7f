"""Dynamic batching (robot_stack.policies.batching, GenerativePolicy.predict_batch, BatchReplyServer):
a batch answers every request exactly as it would be answered alone, and one client's bad request
never reaches another's reply."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from robot_stack.testing.setups import node, setup, write_setup
import torch
import zmq

from robot_stack.comm.codec import encode
from robot_stack.comm.messages import ActionChunk, ErrorReply, ObservationWindow
from robot_stack.comm.transport import BatchReplyServer, RemoteError, RequestClient
from robot_stack.comm.batching import BatchWindow
from robot_stack.policies.generative import (
    GenerativePolicy,
    GenerativePolicyModel,
    ModelConfig,
    OnnxDenoiser,
    TorchDenoiser,
    export_onnx,
)

MS = 1_000_000


# --------------------------------------------------------------------------- the window (fake clock)
def test_the_window_closes_at_its_time_or_its_size():
    w = BatchWindow(window_s=0.002, max_batch=4)
    assert not w.closed(0, 0) and w.remaining_s(0) == 0.0  # not opened: nothing to wait for
    w.open(10 * MS)
    assert not w.closed(11 * MS, 3) and w.remaining_s(11 * MS) == pytest.approx(0.001)
    assert w.closed(12 * MS, 1)  # 2 ms after the first request
    assert w.closed(10 * MS, 4)  # full at once
    assert BatchWindow(0.5, 1).closed(0, 1)  # max_batch 1: no batching, no wait
    with pytest.raises(ValueError, match="max_batch"):
        BatchWindow(0.001, 0)
    with pytest.raises(ValueError, match="window_s"):
        BatchWindow(-0.001, 2)


# --------------------------------------------------------------------------- the policy
def _model(kind: str, steps: int, rtc_max_prefix: int = 0) -> GenerativePolicyModel:
    torch.manual_seed(0)
    cfg = ModelConfig(
        cameras={"scene": "rgbd"},
        image_hw=(64, 64),
        horizon=8,
        kind=kind,
        sample_steps=steps,
        widths=(32, 64),
        rtc_max_prefix=rtc_max_prefix,
    )
    m = GenerativePolicyModel(cfg).eval()
    with torch.no_grad():  # a spread action range, so chunks differ visibly between requests
        m.a_min.copy_(torch.full_like(m.a_min, -0.5))
        m.a_max.copy_(torch.full_like(m.a_max, 0.5))
    return m


def _obs(rng, n: int) -> list[dict]:
    return [
        {
            "scene.color": rng.integers(0, 255, (2, 64, 64, 3), dtype=np.uint8),
            "scene.depth": rng.integers(300, 1500, (2, 64, 64), dtype=np.uint16),
            "state": rng.standard_normal((2, 8)).astype(np.float32),
        }
        for _ in range(n)
    ]


def _prefixes(rng, n: int):
    """Mixed requests: no prefix, a 3-action prefix with d = 2, a 5-action one with all committed."""
    choices = [
        (None, None),
        (rng.uniform(-0.3, 0.3, (3, 8)).astype(np.float32), 2),
        (rng.uniform(-0.3, 0.3, (5, 8)).astype(np.float32), None),
    ]
    return [choices[i % 3][0] for i in range(n)], [choices[i % 3][1] for i in range(n)]


def _assert_batch_equals_alone(policy: GenerativePolicy, n: int = 5, atol: float = 2e-5):
    rng = np.random.default_rng(1)
    obs = _obs(rng, n)
    pres, frs = _prefixes(rng, n)
    noise = rng.standard_normal((n, policy.metadata.horizon, 8)).astype(np.float32)
    batch = policy.predict_batch(obs, pres, frs, noise=noise)
    alone = []
    for i in range(n):
        a = policy.predict(obs[i], pres[i], frs[i], noise=noise[i : i + 1])
        alone.append((a, policy.last_frozen))
    for i in range(n):
        np.testing.assert_allclose(batch[i][0], alone[i][0], atol=atol, err_msg=f"request {i}")
        assert batch[i][1] == alone[i][1]
    # the requests' chunks differ from each other, so a mix-up could not pass the check above
    assert min(np.abs(batch[i][0] - batch[j][0]).max() for i in range(n) for j in range(n) if i != j) > 100 * atol
    return batch


@pytest.mark.parametrize("kind,steps", [("flow", 1), ("ddim", 4)])
def test_a_batch_answers_each_request_as_alone_torch(kind, steps):
    """Flow one step: Jacobian-free RTC per request; DDIM 4 steps: exact (VJP) guidance per request."""
    m = _model(kind, steps)
    out = _assert_batch_equals_alone(GenerativePolicy(m, TorchDenoiser(m, device="cpu"), seed=0))
    assert [d for _, d in out] == [-1, 2, 5, -1, 2]


def test_a_batch_answers_each_request_as_alone_training_time_rtc():
    m = _model("flow", 2, rtc_max_prefix=4)
    out = _assert_batch_equals_alone(GenerativePolicy(m, TorchDenoiser(m, device="cpu"), seed=0))
    assert [d for _, d in out] == [-1, 2, 4, -1, 2]  # d is capped at the trained maximum


def test_a_batch_answers_each_request_as_alone_onnx(tmp_path):
    m = _model("flow", 1)
    path = export_onnx(m, tmp_path / "p.onnx")
    backend = OnnxDenoiser(path, providers=["CPUExecutionProvider"])
    assert backend.max_batch > 1000  # the export's batch axis is dynamic
    _assert_batch_equals_alone(GenerativePolicy(m, backend, seed=0), atol=1e-4)


def test_a_batch_draws_the_noise_that_single_calls_would():
    m = _model("flow", 1)
    rng = np.random.default_rng(2)
    obs = _obs(rng, 3)
    a = GenerativePolicy(m, TorchDenoiser(m, device="cpu"), seed=5).predict_batch(obs)
    p = GenerativePolicy(m, TorchDenoiser(m, device="cpu"), seed=5)
    for i in range(3):
        np.testing.assert_allclose(a[i][0], p.predict(obs[i]), atol=2e-5)


# --------------------------------------------------------------------------- the server
def test_the_batch_server_routes_each_reply_to_its_requester(tmp_path):
    ep = f"ipc://{tmp_path}/b.sock"
    server = BatchReplyServer(ep, "policy")
    n = 6
    clients = [RequestClient(ep, f"c{i}", timeout_s=5.0) for i in range(n)]
    results: dict[int, object] = {}

    def ask(i: int) -> None:
        msg = ObservationWindow(
            request_id=100 + i, obs={"state": np.full((2, 8), i, np.float32)}, obs_age_ns=np.zeros(1, np.int64)
        )
        try:
            results[i] = clients[i].request("infer", msg)
        except RemoteError as e:
            results[i] = e.reply

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    # a peer that sends garbage is answered at once and never joins the batch
    raw = zmq.Context.instance().socket(zmq.REQ)
    raw.connect(ep)
    raw.send_multipart([b"not a message"])
    batch, deadline = [], 0
    while len(batch) < n and deadline < 50:
        batch += server.collect(window_s=0.05, max_batch=n, timeout_s=0.1)
        deadline += 1
    assert len(batch) == n and sorted(r.msg.request_id for r in batch) == [100 + i for i in range(n)]
    assert server.collect(window_s=0.05, max_batch=n, timeout_s=0.3) == []  # the garbage joins no batch
    assert raw.poll(2000), "the malformed request got no answer"
    bad = raw.recv_multipart()
    assert b"malformed" in b"".join(bad)
    for r in reversed(batch):  # answered out of arrival order: the envelope routes them
        i = r.msg.request_id - 100
        assert float(r.msg.obs["state"][0, 0]) == i
        if i == 3:
            server.reply(r, ErrorReply(request_id=r.msg.request_id, code="bad_observation", reason="client 3 only"))
        else:
            server.reply(
                r,
                ActionChunk(
                    request_id=r.msg.request_id,
                    actions=np.full((4, 8), i, np.float32),
                    dt=0.1,
                    offset=0,
                    inference_ns=1,
                    prefix_frozen=-1,
                ),
            )
    for t in threads:
        t.join(5)
    for i in range(n):
        if i == 3:
            assert isinstance(results[i], ErrorReply) and results[i].reason == "client 3 only"
        else:
            assert isinstance(results[i], ActionChunk) and results[i].request_id == 100 + i
            assert np.all(results[i].actions == i)
    raw.close(0)
    for c in clients:
        c.close()
    server.close()


def test_the_batch_server_with_max_batch_one_takes_one_request():
    import tempfile

    d = tempfile.mkdtemp()
    ep = f"ipc://{d}/one.sock"
    server = BatchReplyServer(ep, "policy")
    socks = []
    for i in range(3):
        s = zmq.Context.instance().socket(zmq.REQ)
        s.connect(ep)
        s.send_multipart(
            encode("infer", ObservationWindow(request_id=i, obs={}, obs_age_ns=np.zeros(0, np.int64))), copy=False
        )
        socks.append(s)
    got = []
    for _ in range(20):
        b = server.collect(window_s=1.0, max_batch=1, timeout_s=0.1)
        assert len(b) <= 1
        got += b
        if len(got) == 3:
            break
    assert len(got) == 3
    for s in socks:
        s.close(0)
    server.close()


# --------------------------------------------------------------------------- the node (real process)
def test_the_policy_node_batches_controllers_and_answers_a_bad_one_alone(tmp_path, run_dir):
    """Six clients at once against the node in its own process (scripted goto policy, whose chunk
    starts at the requester's own TCP): the good ones are answered from their own observation in
    shared batches; the one with a malformed window gets its error, and the batch is not failed."""
    from conftest import launched
    from robot_stack.runtime.config import load_config

    cfg_path = tmp_path / "batch.yaml"
    write_setup(
        cfg_path,
        setup(
            "batch",
            run_dir,
            policy=node(
                "policy",
                backend={"type": "goto", "goal": [0.5, 0.0, 0.2], "speed": 0.05},
                delay_s=0.05,
                batch={"max_batch": 8, "window_ms": 30},
            ),
        ),
    )
    n, bad = 6, 3
    with launched(cfg_path):
        ep = load_config(cfg_path).in_endpoint("policy", run_dir)
        clients = [RequestClient(ep, f"ctl{i}", timeout_s=10.0) for i in range(n)]
        clients[0].request(
            "infer",
            ObservationWindow(
                request_id=0,
                obs={"ee_pose": np.tile(np.array([0.3, 0, 0.4, 0, 0, 0, 1], np.float32), (2, 1))},
                obs_age_ns=np.zeros(2, np.int64),
            ),
        )
        results: dict[int, object] = {}
        barrier = threading.Barrier(n)

        def ask(i: int) -> None:
            ee = np.array([0.3 + 0.01 * i, -0.1 + 0.02 * i, 0.4, 0, 0, 0, 1], np.float32)
            o = {"ee_pose": np.tile(ee, (2, 1))}
            if i == bad:
                o = {"ee_pose": np.zeros((2, 5), np.float32)}
            barrier.wait()
            try:
                results[i] = clients[i].request(
                    "infer", ObservationWindow(request_id=10 + i, obs=o, obs_age_ns=np.zeros(2, np.int64))
                )
            except RemoteError as e:
                results[i] = e.reply

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(20)
        for c in clients:
            c.close()
    assert isinstance(results[bad], ErrorReply) and "ee_pose: shape" in results[bad].reason
    good = [i for i in range(n) if i != bad]
    for i in good:
        r = results[i]
        assert isinstance(r, ActionChunk) and r.request_id == 10 + i
        ee = np.array([0.3 + 0.01 * i, -0.1 + 0.02 * i, 0.4])
        assert np.linalg.norm(r.actions[0, :3] - ee) < 0.0051  # its own TCP + one step at 0.05 m/s
    # replies of one batch carry the batch's inference time: the five good requests shared batches
    shared = max(sum(results[i].inference_ns == results[j].inference_ns for j in good) for i in good)
    assert shared >= 2, [results[i].inference_ns for i in good]
