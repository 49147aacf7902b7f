"""openpi's websocket policy protocol: our codec against openpi-client's own, our policy node
driven by an unmodified ``openpi_client.websocket_client_policy.WebsocketClientPolicy``, errors,
health check, API key and the loopback rule."""

import shutil
import socket
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from robot_stack.testing.setups import node, setup, write_setup

from robot_stack.comm.openpi import OpenpiClient, OpenpiKeys, OpenpiProtocolError, OpenpiServer, packb, unpackb
from robot_stack.comm.security import SecurityError

from conftest import launched, wait_until

openpi_msgpack = pytest.importorskip(
    "openpi_client.msgpack_numpy",
    reason="openpi-client is not installed (scripts/setup.sh installs it: pip install --no-deps openpi-client==0.1.2)",
)

pytestmark = pytest.mark.processes  # websocket servers and clients


GOAL = [0.45, 0.10, 0.30]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_codec_matches_openpi_client_both_ways():
    obs = {
        "observation/image": np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3),
        "observation/state": np.linspace(-1, 1, 7),
        "prompt": "reach the cube",
        "nested": {"f32": np.float32(1.5), "i64": np.arange(3, dtype=np.int64), "empty": np.zeros((0, 8), np.float32)},
    }
    for got in (openpi_msgpack.unpackb(packb(obs)), unpackb(openpi_msgpack.packb(obs))):
        assert got["prompt"] == "reach the cube"
        for k in ("observation/image", "observation/state"):
            assert got[k].dtype == obs[k].dtype and np.array_equal(got[k], obs[k])
        assert got["nested"]["f32"] == np.float32(1.5) and got["nested"]["f32"].dtype == np.float32
        assert np.array_equal(got["nested"]["i64"], obs["nested"]["i64"])
        assert got["nested"]["empty"].shape == (0, 8)
    assert packb(obs) == openpi_msgpack.packb(obs)  # byte for byte


def test_codec_refuses_what_could_execute_or_lie():
    with pytest.raises(OpenpiProtocolError, match="dtype object"):
        packb({"x": np.array([object()], dtype=object)})
    bad = {b"__ndarray__": True, b"data": b"\0" * 12, b"dtype": "<f4", b"shape": [4]}
    import msgpack

    with pytest.raises(OpenpiProtocolError, match="does not match 12 bytes"):
        unpackb(msgpack.packb(bad))
    with pytest.raises(OpenpiProtocolError, match="refused"):
        unpackb(msgpack.packb({b"__ndarray__": True, b"data": b"", b"dtype": "|O", b"shape": [0]}))
    with pytest.raises(OpenpiProtocolError, match="not openpi msgpack"):
        unpackb(b"\xc1garbage")


def test_loopback_only():
    with pytest.raises(SecurityError, match="SSH tunnel"):
        OpenpiServer("0.0.0.0", free_port(), {}, lambda obs: ({}, None))
    with pytest.raises(SecurityError, match="plain ws://"):
        OpenpiClient("ws://10.1.2.3:8000", OpenpiKeys())
    with pytest.raises(ValueError, match="expected ws://"):
        OpenpiClient("tcp://127.0.0.1:8000", OpenpiKeys())
    OpenpiClient("wss://policy.example.com:443", OpenpiKeys())  # TLS to a remote server is allowed (no connect yet)


@pytest.fixture(scope="module")
def policy_stack(tmp_path_factory):
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="rs-openpi-"))
    cfg = tmp_path_factory.mktemp("openpi") / "stack.yaml"
    write_setup(
        cfg,
        setup(
            "openpi_test",
            run_dir,
            policy=node(
                "policy",
                backend={"type": "goto", "goal": list(GOAL), "speed": 0.08, "horizon": 16, "dt": 0.1},
                openpi={"port": port, "keys": {"observation/state": "ee_pose"}},
            ),
        ),
    )
    try:
        with launched(cfg) as (_, out):

            def healthy():
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                        return (r.status, r.read())
                except OSError:
                    return None

            health = wait_until(healthy, 30, poll_s=0.2, describe=out.tail, what="the policy node's openpi server")
            yield port, health
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def test_openpi_client_drives_our_policy_node(policy_stack, report):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    from policies.scripted import GoToPolicy

    port, health = policy_stack
    assert health == (200, b"OK\n")
    client = WebsocketClientPolicy(host="127.0.0.1", port=port)
    md = client.get_server_metadata()
    assert md["observation"]["observation/state"] == {"shape": [7], "dtype": "<f4", "ours": "ee_pose"}
    assert md["action_horizon"] == 16 and md["action_dim"] == 8 and md["dt"] == pytest.approx(0.1)
    local = GoToPolicy(GOAL, 0.08, 16, 2, 0.1)  # the same policy, in-process
    rng = np.random.default_rng(0)
    quat = np.array([1.0, 0.0, 0.0, 0.0])
    infer_ms = []
    for _ in range(20):
        state = np.r_[0.45 + rng.uniform(-0.05, 0.05, 3), quat]  # float64, as openpi clients send
        reply = client.infer({"observation/state": state, "prompt": "reach"})
        want = local.predict({"ee_pose": np.repeat(state[None].astype(np.float32), 2, axis=0)}, None, None)
        assert reply["actions"].shape == (16, 8)
        np.testing.assert_array_equal(reply["actions"], np.asarray(want, np.float32))
        infer_ms.append(reply["server_timing"]["infer_ms"])
    report(
        f"openpi-client -> policy node: 20 inferences equal to in-process, server infer p50 "
        f"{np.percentile(infer_ms, 50):.2f} ms"
    )
    # a bad observation: a text frame with the reason, then close code 1011; the node stays up
    with pytest.raises(RuntimeError, match="bad_observation: ee_pose: shape"):
        client.infer({"observation/state": np.zeros(5)})
    client2 = WebsocketClientPolicy(host="127.0.0.1", port=port)
    assert client2.infer({"observation/state": np.r_[0.45, 0.0, 0.3, quat]})["actions"].shape == (16, 8)


def test_our_client_with_an_api_key_server():
    """OpenpiServer with an API key: a client without it is refused at the handshake; ours with it
    gets metadata and a chunk; a server-side error reaches it as RemoteError."""
    from robot_stack.comm.messages import ObservationWindow
    from robot_stack.comm.transport import RemoteError

    def infer(obs):
        if "observation/state" not in obs:
            return None, "missing observation/state"
        return {
            "actions": np.tile(obs["observation/state"], (4, 1)).astype(np.float32),
            "server_timing": {"infer_ms": 1.5},
        }, None

    server = OpenpiServer("127.0.0.1", 0, {"dt": 0.05, "offset": 1}, infer, api_key="s3cret")
    try:
        url = f"ws://127.0.0.1:{server.port}"
        keys = OpenpiKeys(keys={"observation/state": "state"})
        win = ObservationWindow(
            request_id=7, obs={"state": np.ones((2, 8), np.float32)}, obs_age_ns=np.zeros(2, np.int64)
        )
        from robot_stack.comm.transport import TransportTimeout

        with pytest.raises((RemoteError, TransportTimeout)):
            OpenpiClient(url, keys).request("infer", win)
        assert server.unauthorized == 1
        c = OpenpiClient(url, keys, api_key="s3cret")
        chunk = c.request("infer", win)
        assert chunk.request_id == 7 and chunk.actions.shape == (4, 8) and chunk.dt == 0.05 and chunk.offset == 1
        assert chunk.inference_ns == 1_500_000
        with pytest.raises(RemoteError, match="missing observation/state"):
            OpenpiClient(url, OpenpiKeys(keys={"observation/other": "state"}), api_key="s3cret").request("infer", win)
        assert c.request("infer", win).actions.shape == (4, 8)  # the first connection is unaffected
        c.close()
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/healthz", timeout=2) as r:
            assert r.status == 200
    finally:
        server.close()
