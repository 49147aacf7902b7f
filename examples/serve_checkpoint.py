"""Serve a policy checkpoint with a policy node and query it: what a controller does at start-up
(ask for the policy's spec) and at every request (send an observation window, get an action chunk).

    python3 examples/serve_checkpoint.py policy.safetensors

The policy node runs in its own process, started from a one-node setup; the request goes through
the same ZeroMQ request/reply channel and codec a controller uses. The observation here is made up
(mid-range values of the right shapes), so the chunk means nothing: the point is the protocol.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

from robot_stack.comm.messages import ActionChunk, ObservationWindow, PolicySpec, SpecRequest
from robot_stack.comm.transport import RemoteError, RequestClient, TransportTimeout
from robot_stack.runtime.launcher import Launcher
from robot_stack.testing import wait_until


def window_for(spec: PolicySpec) -> ObservationWindow:
    """An observation window of the shapes and dtypes the spec asks for (To steps per key)."""
    obs = {}
    for key, dtype in zip(spec.obs_keys, spec.obs_dtypes):
        shape = (spec.obs_horizon, *[int(n) for n in spec.obs_shapes[key]])
        fill = 128 if np.dtype(dtype).kind in "ui" else 0.5
        obs[key] = np.full(shape, fill, dtype=np.dtype(dtype))
    if "ee_pose" in obs:  # a valid pose: a unit quaternion
        obs["ee_pose"][:, 3:] = [1.0, 0.0, 0.0, 0.0]
    return ObservationWindow(request_id=1, obs=obs, obs_age_ns=np.zeros(spec.obs_horizon, np.int64))


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_file():
        print("usage: serve_checkpoint.py CHECKPOINT.safetensors (an existing file)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="rs-example-") as tmp:
        cfg_path = Path(tmp) / "setup.yaml"
        setup = {
            "name": "example_serve",
            "run_dir": str(Path(tmp) / "run"),
            "nodes": {
                "policy": {
                    "kind": "policy",
                    "params": {"backend": {"type": "checkpoint", "path": str(Path(argv[0]).resolve())}},
                }
            },
        }
        cfg_path.write_text(yaml.safe_dump(setup))
        launcher = Launcher(cfg_path)
        launcher.start()
        supervisor = threading.Thread(target=launcher.supervise, daemon=True)
        supervisor.start()
        client = RequestClient(launcher.config.in_endpoint("policy", launcher.run_dir), "example", timeout_s=5.0)
        try:

            def spec_reply():  # the node answers once it has loaded the checkpoint
                try:
                    return client.request("spec", SpecRequest(request_id=0))
                except TransportTimeout:
                    return None

            try:
                spec = wait_until(spec_reply, 120.0, what="the policy node's spec")
            except RemoteError as e:
                print(f"the policy node refused the spec request: {e}", file=sys.stderr)
                return 1
            assert isinstance(spec, PolicySpec)
            print(
                f"spec: To {spec.obs_horizon}, H {spec.horizon}, action {spec.action_dim}-D "
                f"'{spec.action_space}', dt {spec.dt} s, keys {spec.obs_keys}"
            )
            t0 = time.monotonic()
            try:
                chunk = client.request("infer", window_for(spec))
            except RemoteError as e:
                print(f"the policy refused the observation: {e}", file=sys.stderr)
                return 1
            rtt_ms = (time.monotonic() - t0) * 1e3
            assert isinstance(chunk, ActionChunk)
            print(
                f"chunk: {chunk.actions.shape} {chunk.actions.dtype}, compute {chunk.inference_ns / 1e6:.1f} ms, "
                f"round trip {rtt_ms:.1f} ms"
            )
            return 0
        finally:
            client.close()
            launcher.stop()
            supervisor.join(10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
