"""The policy node in-process (fake context): a request with a non-finite observation or prefix is
refused by name over both protocols, and a policy whose actions are not all finite gets no chunk
out: the reply is an error."""

import numpy as np
import pytest

from robot_stack.comm.messages import ActionChunk, ErrorReply, ObservationWindow

SETUP = {
    "name": "pol_test",
    "nodes": {
        "policy": {
            "kind": "policy",
            "params": {
                "backend": {"type": "goto", "goal": [0.5, 0.0, 0.3], "obs_horizon": 2},
            },
        }
    },
}


def _window(state, prefix=None):
    return ObservationWindow(
        request_id=7,
        obs={"ee_pose": np.asarray(state, np.float32)},
        obs_age_ns=np.zeros(2, np.int64),
        committed_prefix=prefix,
    )


GOOD = np.tile(np.array([0.4, 0.0, 0.3, 1.0, 0.0, 0.0, 0.0], np.float32), (2, 1))


@pytest.fixture
def policy(node_builder):
    """The node without its websocket server; its openpi request path (``_openpi_infer``) is
    called directly, with the keys of an openpi setup that names ours as they are."""
    from robot_stack.comm.openpi import OpenpiServerConfig

    node = node_builder(SETUP, "policy")
    node.params = node.params.model_copy(
        update={"openpi": OpenpiServerConfig(port=8000, keys={"observation/state": "ee_pose"})}
    )
    return node


def test_a_good_window_gets_a_chunk(policy):
    assert isinstance(policy.handle("infer", _window(GOOD)), ActionChunk)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_observation_is_refused_by_name_on_both_protocols(policy, bad):
    state = GOOD.copy()
    state[1, 2] = bad
    reply = policy.handle("infer", _window(state))
    assert isinstance(reply, ErrorReply) and reply.code == "bad_observation"
    assert "ee_pose: 1 non-finite values" in reply.reason
    out, err = policy._openpi_infer({"observation/state": state})
    assert out is None and "ee_pose: 1 non-finite values" in err
    assert policy.metrics()["rejected"] == 2 and policy.metrics()["requests"] == 0


def test_a_non_finite_prefix_is_refused(policy):
    prefix = np.zeros((3, 8), np.float32)
    prefix[0, 0] = np.nan
    reply = policy.handle("infer", _window(GOOD, prefix))
    assert isinstance(reply, ErrorReply) and "committed prefix: 1 non-finite" in reply.reason


def test_a_policy_that_answers_nan_sends_no_chunk(policy, monkeypatch):
    real = policy.policy.predict_batch

    def nan_actions(obs, prefixes, frozen):
        out = real(obs, prefixes, frozen)
        actions, fr = out[0]
        actions = np.array(actions, np.float32)
        actions[3, 1] = np.nan
        return [(actions, fr)]

    monkeypatch.setattr(policy.policy, "predict_batch", nan_actions)
    reply = policy.handle("infer", _window(GOOD))
    assert isinstance(reply, ErrorReply) and reply.code == "non_finite_actions"
    out, err = policy._openpi_infer({"observation/state": GOOD})
    assert out is None and err.startswith("non_finite_actions")
    assert policy.metrics()["non_finite_actions"] == 2 and policy.metrics()["requests"] == 0
