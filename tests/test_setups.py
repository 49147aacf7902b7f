"""Setups as data: ``extends:`` composition, ``--set`` overrides, and the shipped setups, which are
now deltas of each other, resolve to exactly the flat files they replaced."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from robot_stack.runtime.config import (
    ConfigError,
    apply_sets,
    deep_merge,
    load_config,
    parse_set,
    resolve_setup,
    write_resolved,
)

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
SNAPSHOTS = Path(__file__).parent / "snapshots" / "setups"


def _OTHER_ARM(node: str, y: float) -> dict:
    return {"node": node, "robot": "panda_robotiq", "base": [0.0, y, 0.0, 0.0]}


#: setup file -> {dotted key: (value in the flat file it replaced, value now)}: every intended
#: difference between a resolved setup and its snapshot
INTENDED: dict[str, dict[str, tuple]] = {
    # a calibration path is relative to the setup file: these named configs/configs/calibration/...
    "franka_realsense.yaml": {
        "calibration.file": ("configs/calibration/franka_realsense.yaml", "calibration/franka_realsense.yaml")
    },
    "ur5e_realsense.yaml": {
        "calibration.file": ("configs/calibration/ur5e_realsense.yaml", "calibration/ur5e_realsense.yaml")
    },
    # each arm checks its links against the other arm's (None: the key was not there)
    **{
        name: {
            "nodes.arm_left.params.collision": (None, {"arms": [_OTHER_ARM("arm_right", -0.8)]}),
            "nodes.arm_right.params.collision": (None, {"arms": [_OTHER_ARM("arm_left", 0.8)]}),
        }
        for name in ("sim_bimanual.yaml", "sim_bimanual_lift.yaml")
    },
}


#: setups whose arms' safety blocks moved (in whole or in part) into their robot's description
#: (``safety:`` in robot_stack/robots/*.yaml): the YAML differs, the limits each arm enforces must not
LIMITS_FROM_DESCRIPTION = {
    "franka_sim.yaml",
    "sim_bimanual.yaml",
    "sim_bimanual_lift.yaml",
    "sim_panda.yaml",
    "sim_panda_pick.yaml",
    "sim_panda_press.yaml",
    "sim_panda_reach.yaml",
    "sim_ur5e.yaml",
    "so101_teleop.yaml",
    "ur5e_emulated.yaml",
}


def _limits(data: dict) -> dict:
    """Arm node -> the limits it enforces (the setup's over the robot's defaults), and the data
    without the arms' safety blocks."""
    from robot_stack.runtime.config import config_from_dict

    cfg = config_from_dict(data, base_dir=CONFIGS)
    out = {n: nc.typed.effective_safety(cfg).model_dump() for n, nc in cfg.nodes.items() if nc.kind == "arm"}
    for n in out:
        data["nodes"][n].get("params", {}).pop("safety", None)
    return out


def _flat(path: Path) -> dict:
    data, _ = resolve_setup(path)
    calib = data.get("calibration")
    if isinstance(calib, dict) and calib.get("file"):
        calib["file"] = str(Path(calib["file"]).relative_to(CONFIGS))
    return data


def _get(data: dict, key: str):
    for part in key.split("."):
        data = data.get(part) if isinstance(data, dict) else None
    return data


@pytest.mark.parametrize("name", sorted(p.name for p in SNAPSHOTS.glob("*.yaml")))
def test_each_shipped_setup_resolves_to_the_flat_file_it_replaced(name):
    now = _flat(CONFIGS / name)
    before = yaml.safe_load((SNAPSHOTS / name).read_text())
    for key, (old, new) in INTENDED.get(name, {}).items():
        assert _get(before, key) == old and _get(now, key) == new, key
        before = apply_sets(before, {key: new})
    arms = lambda d: {n: v.get("params", {}).get("safety") for n, v in d["nodes"].items() if v.get("kind") == "arm"}  # noqa: E731
    if name in LIMITS_FROM_DESCRIPTION:
        assert arms(now) != arms(before)  # listed: the YAML changed ...
        assert _limits(now) == _limits(before)  # ... and what each arm enforces did not
    assert now == before
    load_config(CONFIGS / name)  # and it validates


def test_every_shipped_setup_has_a_snapshot_and_the_yaml_got_shorter():
    shipped = {p.name for p in CONFIGS.glob("*.yaml")}
    assert shipped == {p.name for p in SNAPSHOTS.glob("*.yaml")}
    lines = sum(len(p.read_text().splitlines()) for p in CONFIGS.rglob("*.yaml"))
    assert lines <= 533, f"configs/ holds {lines} lines of YAML"


def test_extends_merges_maps_replaces_lists_and_removes_with_null(tmp_path):
    (tmp_path / "base.yaml").write_text(
        "name: base\ncalibration: {file: calib.yaml}\nnodes:\n"
        "  arm: {kind: arm, params: {rate_hz: 500, safety: {max_jump_ee: 0.08, workspace_min: [0.1, -0.5, 0.0]}}}\n"
        "  monitor: {kind: monitor}\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text(
        "extends: ../base.yaml\nname: child\nnodes:\n"
        "  arm: {params: {safety: {workspace_min: [0.2, -0.4, 0.01]}}}\n  monitor: null\n"
    )
    data, chain = resolve_setup(tmp_path / "sub" / "child.yaml")
    assert chain == [(tmp_path / "sub" / "child.yaml").resolve(), (tmp_path / "base.yaml").resolve()]
    assert data["name"] == "child" and "monitor" not in data["nodes"] and "extends" not in data
    arm = data["nodes"]["arm"]
    assert arm["kind"] == "arm" and arm["params"]["rate_hz"] == 500
    assert arm["params"]["safety"] == {"max_jump_ee": 0.08, "workspace_min": [0.2, -0.4, 0.01]}
    # the base's relative calibration file stays relative to the base, not to the child
    assert data["calibration"]["file"] == str((tmp_path / "calib.yaml").resolve())
    assert deep_merge({"a": [1, 2]}, {"a": [3]}) == {"a": [3]}


def test_extends_errors_name_the_files(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nnodes: {}\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nnodes: {}\n")
    with pytest.raises(ConfigError, match=r"extends makes a cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        resolve_setup(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nope.yaml\nnodes: {}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: extends = 'nope.yaml': no such setup"):
        resolve_setup(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("extends: [a.yaml]\nnodes: {}\n")
    with pytest.raises(ConfigError, match="must be the path of another setup file"):
        resolve_setup(tmp_path / "d.yaml")


def test_set_values_are_yaml_typed_by_the_model_and_errors_name_the_path():
    assert parse_set("nodes.arm.params.rate_hz=250") == ("nodes.arm.params.rate_hz", 250)
    assert parse_set("nodes.controller.params.cameras=[cam_a, cam_b]")[1] == ["cam_a", "cam_b"]
    assert parse_set("nodes.monitor=null") == ("nodes.monitor", None)
    cfg = load_config(
        CONFIGS / "sim_panda_reach.yaml",
        ["nodes.arm.params.safety.max_jump_ee=0.05", "nodes.controller.params.strategy=rtc"],
    )
    assert cfg.nodes["arm"].typed.safety.max_jump_ee == 0.05 and cfg.nodes["controller"].typed.strategy == "rtc"
    with pytest.raises(ConfigError, match=r"nodes\.arm\.params\.rate_hz = 'fast'"):
        load_config(CONFIGS / "sim_panda_reach.yaml", ["nodes.arm.params.rate_hz=fast"])
    with pytest.raises(ConfigError, match=r"nodes\.arm\.params\.safety\.max_jump = 0\.1: unknown key"):
        load_config(CONFIGS / "sim_panda_reach.yaml", ["nodes.arm.params.safety.max_jump=0.1"])
    with pytest.raises(ConfigError, match=r"nodes\.arm\.kind is not a mapping"):
        load_config(CONFIGS / "sim_panda_reach.yaml", ["nodes.arm.kind.x=1"])
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_set("rate_hz")


def test_write_resolved_is_flat_and_valid(tmp_path):
    out = write_resolved(CONFIGS / "sim_panda_pick.yaml", ["nodes.recorder.params.root=/data/pick"], tmp_path)
    data = yaml.safe_load(out.read_text())
    assert "extends" not in data and data["nodes"]["recorder"]["params"]["root"] == "/data/pick"
    assert Path(data["calibration"]["file"]).is_absolute()
    assert load_config(out).nodes["sim"].typed.task == "pick"


def test_the_cli_takes_set_and_explains_the_chain(capsys):
    from robot_stack.cli import main

    assert (
        main(
            [
                "check",
                str(CONFIGS / "sim_panda_pick.yaml"),
                "--explain",
                "--set",
                "nodes.controller.params.strategy=rtc",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "extends chain" in out and "sim_panda_pick.yaml <- " in out and "sim_panda_reach.yaml" in out
    assert "strategy: rtc" in out
    assert main(["check", str(CONFIGS / "sim_panda_pick.yaml"), "--set", "nodes.arm.params.rate_hz=-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nodes.arm.params.rate_hz = -1" in err


def test_an_arm_takes_its_robots_limits_and_a_setup_overrides_them_key_by_key():
    from robot_stack.control.safety import SafetyConfig

    desc = {"workspace_min": [-0.6, 0.15, 0.005], "workspace_max": [0.6, 0.85, 0.8], "max_joint_vel": 1.5}
    s = SafetyConfig.model_validate({"max_joint_vel": 0.8}).over(desc)
    assert s.max_joint_vel == 0.8 and s.workspace_min == (-0.6, 0.15, 0.005) and s.max_jump_ee == 0.08
    with pytest.raises(ValueError, match="workspace_min must be below workspace_max"):
        SafetyConfig.model_validate({"workspace_max": [0.0, 0.1, 0.5]}).over(desc)
    cfg = load_config(CONFIGS / "sim_ur5e.yaml", ["nodes.arm.params.safety.max_joint_vel=0.5"])
    e = cfg.nodes["arm"].typed.effective_safety(cfg)
    assert e.max_joint_vel == 0.5 and e.workspace_min == (-0.6, 0.15, 0.005)  # the UR5e faces +y
    so101 = load_config(CONFIGS / "so101_teleop.yaml")
    assert so101.nodes["arm"].typed.effective_safety(so101).workspace_max == (0.45, 0.35, 0.4)


def test_the_arm_node_enforces_its_robots_workspace(node_builder):
    """In-process: an arm on the UR5e model with no safety block checks schedules against the UR5e
    description's box (in front of the arm, +y), not the generic default box (+x)."""
    arm = node_builder(
        {
            "name": "ur",
            "nodes": {"arm": {"kind": "arm", "params": {"driver": {"type": "ideal", "robot": "ur5e_robotiq"}}}},
        },
        "arm",
    )
    assert arm.core.checker.cfg.workspace_min == (-0.6, 0.15, 0.005)
    np.testing.assert_allclose(arm.core.checker.box_max, [0.6, 0.85, 0.8])
