"""The policy's spec, owned by the policy: the node answers a spec request, and a controller whose
setup disagrees ends at start-up naming each difference."""

from __future__ import annotations

import pytest
from robot_stack.testing.setups import node, setup, write_setup


from robot_stack.comm.codec import decode, encode
from robot_stack.policies.base import PolicyMetadata
from robot_stack.policies.serving import metadata_from_spec, spec_message, spec_mismatch
from conftest import wait_until
from robot_stack.testing import WaitTimeout

pytestmark = pytest.mark.processes  # controller and policy processes


MD = PolicyMetadata(
    obs_shapes={"scene.color": ((96, 96, 3), "|u1"), "state": ((8,), "<f4")},
    obs_horizon=2,
    horizon=16,
    action_dim=8,
    action_space="ee_pose+gripper",
    dt=0.1,
    supports_prefix=True,
)


def test_the_spec_travels_through_the_codec_unchanged():
    _, msg = decode(encode("spec", spec_message(MD, request_id=5)))
    assert msg.request_id == 5 and metadata_from_spec(msg) == MD


def test_every_difference_is_named():
    assert spec_mismatch(MD, ["scene.color", "state"], 2, (96, 96), ["scene"]) == []
    assert spec_mismatch(MD, ["scene.color", "state"], 2, None, ["scene"]) == []  # size left open: from the spec
    assert spec_mismatch(MD, None, None, None, ["scene"]) == []  # all left open
    diffs = spec_mismatch(MD, ["scene.color", "ee_pose"], 3, (64, 64), ["wrist"])
    text = "\n".join(diffs)
    assert "missing ['state']" in text and "extra ['ee_pose']" in text
    assert "To = 2, the controller sends 3" in text
    assert "96x96 images, the controller resizes to 64x64" in text
    assert "needs camera 'scene'" in text
    md7 = PolicyMetadata(**{**MD.__dict__, "action_dim": 7, "action_space": "joints"})
    assert "7-D 'joints'" in "".join(spec_mismatch(md7, ["scene.color", "state"], 2, None, ["scene"]))


def test_a_controller_refuses_a_policy_whose_spec_disagrees(tmp_path, run_dir):
    """The goto policy takes To = 3 of ee_pose; the controller is set up for To = 2 with q as well."""
    from conftest import launched

    cfg = tmp_path / "spec.yaml"
    write_setup(
        cfg,
        setup(
            "spec",
            run_dir,
            sim=node("sim_world"),
            arm=node("arm"),
            policy=node("policy", backend={"type": "goto", "goal": [0.5, 0, 0.3], "obs_horizon": 3}),
            controller=node("controller", obs_keys=["ee_pose", "q"], obs_horizon=2),
        ),
    )
    with launched(cfg) as (launcher, out):
        wait_until(lambda: "controller" in launcher.dead, 90, describe=out.tail, what="the controller to end")
        assert launcher.dead.get("controller") == 1, out.tail()
        log = out.tail(80)
        assert "the policy's spec does not match this controller" in log
        assert "extra ['q']" in log and "To = 3, the controller sends 2" in log


def test_a_controller_takes_what_its_setup_leaves_open_from_the_spec(tmp_path, run_dir):
    """No obs_keys or obs_horizon in the controller's config: it sends what the policy's spec
    asks for (To = 3 here, where the controller's old default was 2), and the policy accepts it."""
    from conftest import launched
    from robot_stack.comm.messages import Heartbeat
    from robot_stack.comm.transport import Subscriber
    from robot_stack.runtime.config import load_config

    cfg = tmp_path / "ok.yaml"
    write_setup(
        cfg,
        setup(
            "specok",
            run_dir,
            sim=node("sim_world"),
            arm=node("arm"),
            policy=node("policy", backend={"type": "goto", "goal": [0.5, 0, 0.3], "obs_horizon": 3}),
            controller=node("controller", autostart=True),
        ),
    )
    with launched(cfg) as (launcher, out):
        c = load_config(cfg)
        sub = Subscriber([c.pub_endpoint("controller", run_dir)], (Heartbeat.topic("controller"),), name="t")
        try:
            chunks = 0.0
            try:
                wait_until(
                    lambda: (
                        (hb := sub.latest(Heartbeat.topic("controller"))) is not None
                        and hb.metrics.get("chunks", 0.0) >= 3
                    ),
                    60,
                    poll_s=0.2,
                )
            except WaitTimeout:
                pass
            hb = sub.latest(Heartbeat.topic("controller"))
            chunks = hb.metrics.get("chunks", 0.0) if hb is not None else 0.0
        finally:
            sub.close()
        assert chunks >= 3 and not launcher.dead, out.tail()
        assert "policy spec: ['ee_pose'], To 3" in out.tail(400)
