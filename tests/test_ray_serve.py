"""The policy on Ray Serve: a local Ray cluster started in the test, two replicas, and a policy node
(backend ray_serve) as the adapter, driven by two controllers at once; every reply is matched to its
request by its content (the scripted goto policy starts each chunk at the requester's own TCP)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from robot_stack.testing.setups import node, setup, write_setup

from robot_stack.comm.codec import decode, encode
from robot_stack.comm.messages import ActionChunk, ErrorReply, ObservationWindow
from robot_stack.policies.ray_serve import PolicyReplica, policy_app

pytestmark = pytest.mark.processes  # a Ray cluster


GOTO = {"type": "goto", "goal": [0.5, 0.0, 0.2], "speed": 0.05}


def _window(rid: int, ee: np.ndarray) -> ObservationWindow:
    return ObservationWindow(
        request_id=rid, obs={"ee_pose": np.tile(ee.astype(np.float32), (2, 1))}, obs_age_ns=np.zeros(2, np.int64)
    )


def _ee(robot: int, k: int) -> np.ndarray:
    return np.array([0.3 + 0.05 * robot, -0.1 + 0.01 * k, 0.4, 0, 0, 0, 1])


def test_a_replica_answers_each_request_of_a_batch_alone():
    rep = PolicyReplica(GOTO)
    good = [[bytes(f) for f in encode("infer", _window(i, _ee(0, i)))] for i in range(3)]
    bad_shape = [
        bytes(f)
        for f in encode(
            "infer",
            ObservationWindow(
                request_id=7, obs={"ee_pose": np.zeros((2, 5), np.float32)}, obs_age_ns=np.zeros(2, np.int64)
            ),
        )
    ]
    out = [decode(r)[1] for r in rep.answer([good[0], [b"garbage"], good[1], bad_shape, good[2]])]
    assert isinstance(out[1], ErrorReply) and out[1].code == "malformed"
    assert isinstance(out[3], ErrorReply) and out[3].code == "bad_observation" and out[3].request_id == 7
    for j, i in ((0, 0), (2, 1), (4, 2)):
        assert isinstance(out[j], ActionChunk) and out[j].request_id == i
        assert np.linalg.norm(out[j].actions[0, :3] - _ee(0, i)[:3]) < 0.0051
    assert rep.stats()["requests"] == 3 and rep.stats()["batches"] == 1
    with pytest.raises(ValueError, match="cannot itself forward"):
        PolicyReplica({"type": "ray_serve"})


@pytest.fixture(scope="module")
def serve_app():
    import ray
    from ray import serve

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(proxy_location="Disabled")
        serve.run(
            policy_app(GOTO, num_replicas=2, max_batch_size=8, batch_wait_timeout_s=0.005, num_cpus=0.5),
            name="rs_test",
            route_prefix=None,
        )
        yield ray.get_runtime_context().gcs_address
    finally:
        serve.shutdown()
        ray.shutdown()


def test_two_controllers_through_the_adapter_on_two_replicas(tmp_path, run_dir, serve_app):
    from ray import serve

    from conftest import launched
    from robot_stack.comm.transport import RequestClient
    from robot_stack.runtime.config import load_config

    cfg_path = tmp_path / "gateway.yaml"
    write_setup(
        cfg_path,
        setup(
            "gateway",
            run_dir,
            policy=node(
                "policy",
                backend={"type": "ray_serve", "address": serve_app, "app": "rs_test", "timeout_s": 10},
                batch={"max_batch": 8, "window_ms": 5},
            ),
        ),
    )
    n_req, results, errors = 25, {0: [], 1: []}, []
    with launched(cfg_path) as (_, out):
        ep = load_config(cfg_path).in_endpoint("policy", run_dir)

        def controller(robot: int) -> None:
            c = RequestClient(ep, f"controller{robot}", timeout_s=60.0)
            try:
                for k in range(n_req):
                    r = c.request("infer", _window(1000 * robot + k, _ee(robot, k)))
                    results[robot].append((k, r))
            except Exception as e:
                errors.append(f"controller {robot}: {type(e).__name__}: {e}")
            finally:
                c.close()

        threads = [threading.Thread(target=controller, args=(r,)) for r in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, f"{errors}\n{out.tail()}"
    for robot in (0, 1):
        assert len(results[robot]) == n_req
        for k, r in results[robot]:
            assert isinstance(r, ActionChunk) and r.request_id == 1000 * robot + k
            assert np.linalg.norm(r.actions[0, :3] - _ee(robot, k)[:3]) < 0.0051, (robot, k)
            assert r.inference_ns > 0
    # both replicas served: ask the deployment's stats until both have answered (power-of-two routing)
    handle = serve.get_app_handle("rs_test")
    seen: dict[str, int] = {}
    for _ in range(40):
        st = handle.stats.remote().result(timeout_s=10)
        seen[st["replica"]] = st["requests"]
        if len(seen) == 2:
            break
    assert len(seen) == 2 and all(v > 0 for v in seen.values()), seen
    assert sum(seen.values()) == 2 * n_req, seen
