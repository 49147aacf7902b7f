"""The dataflow graph: what each node sends to which, from the setup alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from robot_stack.runtime.config import ConfigError, config_from_dict, load_config
from robot_stack.runtime.graph import Link, links, render
from robot_stack.testing.setups import node, setup

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_the_reach_setup_links():
    got = set(links(load_config(CONFIGS / "sim_panda_reach.yaml")))
    want = {
        Link("sim", "arm", "sim/joint_state", "stream"),
        Link("arm", "sim", "joint targets (sim/joint_target)", "input"),
        Link("sim", "cam_wrist", "sim/state", "stream"),
        Link("arm", "controller", "robot/state", "stream"),
        Link("controller", "arm", "waypoint schedules, heartbeats (input)", "input"),
        Link("cam_wrist", "controller", "camera/wrist", "stream"),
        Link("teleop", "controller", "teleop/command", "stream"),
        Link("controller", "recorder", "controller/action", "stream"),
        Link("sim", "recorder", "sim/objects", "stream"),
        Link("teleop", "arm", "e-stop (input)", "input"),
    }
    assert want <= got
    assert not any("cam_scene" in (e.src, e.dst) and "controller" in (e.src, e.dst) for e in got)  # not observed
    assert not any("policy" in (e.src, e.dst) for e in got)  # collecting: the controller's source is teleop


def test_a_policy_controller_asks_its_policy_and_two_arms_read_their_own_joints():
    cfg = load_config(CONFIGS / "sim_bimanual_lift.yaml", ["nodes.controller.params.source=policy"])
    got = set(links(cfg))
    assert Link("controller", "policy", "observation windows -> action chunks (request/reply)", "request") in got
    assert Link("sim", "arm_left", "sim/joint_state/left", "stream") in got
    assert Link("sim", "arm_right", "sim/joint_state/right", "stream") in got


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_setup_renders(path):
    cfg = load_config(path)
    text = render(cfg)
    assert text.startswith(f"{cfg.name}: {len(cfg.nodes)} nodes")
    assert render(cfg, "dot").startswith(f'digraph "{cfg.name}"') and render(cfg, "mermaid").startswith("flowchart LR")
    for n in cfg.nodes:
        assert n in text


def test_check_refuses_a_controller_listening_to_a_camera_nobody_publishes():
    data = setup(
        "lab",
        None,
        sim=node("sim_world"),
        arm=node("arm"),
        controller=node("controller", cameras=["cam_top"], source="teleop", teleop=None),
    )
    with pytest.raises(
        ConfigError,
        match=r"nodes\.controller\.params: names camera node 'cam_top', which is not "
        r"in this config: nothing publishes what controller expects from it",
    ):
        config_from_dict(data)


def test_an_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown graph format"):
        render(load_config(CONFIGS / "sim_panda.yaml"), "svg")
