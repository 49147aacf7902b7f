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


@pytest.mark.processes
def test_a_request_over_the_size_cap_is_refused_unread_and_stalls_no_other_client(node_builder, tmp_path):
    """The policy node's ZeroMQ server refuses a request frame larger than its cap (from the
    policy's spec) as it arrives (ZeroMQ's MAXMSGSIZE: the sender is disconnected and times out);
    a client with a normal request is answered meanwhile. Over openpi's protocol the websocket
    closes with 1009 (message too big) and the other connection is served."""
    import threading

    import socket

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from robot_stack.comm.openpi import OpenpiServerConfig, packb, unpackb
    from robot_stack.comm.transport import RequestClient, TransportTimeout
    from robot_stack.testing import build_node

    with socket.socket() as probe:  # a free loopback port for the websocket server
        probe.bind(("127.0.0.1", 0))
        free_port = probe.getsockname()[1]
    setup = {"name": "pol_cap", "run_dir": str(tmp_path), "nodes": {"policy": {**SETUP["nodes"]["policy"]}}}
    setup["nodes"]["policy"]["params"] = {
        **setup["nodes"]["policy"]["params"],
        "openpi": OpenpiServerConfig(port=free_port, keys={"observation/state": "ee_pose"}).model_dump(),
    }
    node = build_node(setup, "policy", run_dir=tmp_path)
    cap = node.max_request_bytes
    assert 1 << 20 < cap < 2 << 20  # 1 MiB of slack over a goto policy's tiny window
    stop = threading.Event()
    loop = threading.Thread(target=lambda: [node.step() for _ in iter(stop.is_set, True)], daemon=True)
    loop.start()
    endpoint = node.ctx.config.in_endpoint("policy", tmp_path)
    big, small = RequestClient(endpoint, "big", timeout_s=1.0), RequestClient(endpoint, "small", timeout_s=5.0)
    try:
        huge = _window(GOOD)
        huge.obs["extra"] = np.zeros(cap, np.float32)  # 4x the cap in bytes: never read
        result = {}

        def send_big():
            try:
                result["big"] = big.request("infer", huge)
            except TransportTimeout as e:
                result["big"] = e

        t = threading.Thread(target=send_big)
        t.start()
        assert isinstance(small.request("infer", _window(GOOD)), ActionChunk)
        t.join(5)
        assert isinstance(result["big"], TransportTimeout)
        assert node.metrics()["requests"] == 1 and node.metrics()["decode_errors"] == 0
        port = node.openpi.port
        with connect(f"ws://127.0.0.1:{port}", max_size=None) as ws_big, connect(f"ws://127.0.0.1:{port}") as ws_ok:
            ws_big.recv(), ws_ok.recv()  # the metadata
            ws_big.send(packb({"observation/state": np.zeros(cap, np.float32)}))
            with pytest.raises(ConnectionClosed) as closed:
                ws_big.recv(timeout=5)
            assert closed.value.rcvd.code == 1009
            ws_ok.send(packb({"observation/state": GOOD}))
            assert np.asarray(unpackb(ws_ok.recv(timeout=5))["actions"]).shape[1] == 8
    finally:
        stop.set()
        loop.join(5)
        big.close()
        small.close()
        node.shutdown()


def test_a_deploy_against_a_remote_endpoint_starts_no_local_policy_node(tmp_path):
    """``robot-stack deploy --policy-endpoint URL``: the controller calls the endpoint, the setup's
    policy node is not started; a local policy file and an endpoint together are refused, as is
    neither."""
    from robot_stack.apps.deploy import deploy_session
    from robot_stack.apps.demo import config_path

    cfg = config_path("sim_panda_reach.yaml")
    session, pol = deploy_session(cfg, None, endpoint="tcp://127.0.0.1:5557")
    try:
        kinds = {n: session.cfg.nodes[n].kind for n in session.nodes}
        assert pol is None and "policy" not in kinds.values() and "controller" in kinds.values()
        ctl = next(n for n, k in kinds.items() if k == "controller")
        assert session.cfg.nodes[ctl].typed.policy_endpoint == "tcp://127.0.0.1:5557"
    finally:
        session.close()
    local, pol = deploy_session(cfg, _a_policy_file(tmp_path))
    try:
        assert pol is not None and pol in local.nodes
    finally:
        local.close()
    with pytest.raises(ValueError, match="either a policy file or a policy endpoint"):
        deploy_session(cfg, _a_policy_file(tmp_path), endpoint="tcp://127.0.0.1:5557")
    with pytest.raises(ValueError, match="either a policy file or a policy endpoint"):
        deploy_session(cfg, None)


def _a_policy_file(tmp_path):
    p = tmp_path / "policy.safetensors"
    p.write_bytes(b"not read here")
    return p


def test_the_prompt_travels_to_an_openpi_server_and_from_an_openpi_client(policy, monkeypatch):
    """Our openpi client puts the window's prompt under openpi's ``prompt`` key (none when empty);
    our policy node hands an openpi client's ``prompt`` to the policy's window."""
    from robot_stack.comm.openpi import OpenpiClient, OpenpiKeys, packb, unpackb

    class FakeWs:
        def __init__(self):
            self.sent = []

        def send(self, data):
            self.sent.append(unpackb(data))

        def recv(self, timeout=None):
            return packb({"actions": np.zeros((4, 8), np.float32)})

    client = OpenpiClient("ws://127.0.0.1:1", OpenpiKeys(keys={"observation/state": "ee_pose"}))
    client._ws, client.metadata = FakeWs(), {}
    window = _window(GOOD)
    window.prompt = "pick the red cube"
    client.request("infer", window)
    client.request("infer", _window(GOOD))
    assert client._ws.sent[0]["prompt"] == "pick the red cube" and "prompt" not in client._ws.sent[1]
    seen = []
    real = policy.handle
    monkeypatch.setattr(policy, "handle", lambda topic, msg: seen.append(msg.prompt) or real(topic, msg))
    out, err = policy._openpi_infer({"observation/state": GOOD, "prompt": "stack the cups"})
    assert err is None and seen == ["stack the cups"]
