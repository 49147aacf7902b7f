"""Config validation: a bad config names the key, the value and the reason."""

import pytest

from robot_stack.cli import main
from robot_stack.runtime.config import ConfigError, load_config

from conftest import REPO


def write(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


def test_shipped_configs_validate():
    for p in sorted((REPO / "configs").glob("*.yaml")):
        cfg = load_config(p)
        assert cfg.nodes


def test_bad_param_value_names_key_value_reason(tmp_path):
    p = write(tmp_path, "nodes:\n  camera:\n    kind: camera\n    params: {rate_hz: -5}\n")
    with pytest.raises(ConfigError) as ei:
        load_config(p)
    assert "nodes.camera.params.rate_hz = -5: Input should be greater than 0" in str(ei.value)


def test_typo_key_is_an_error_not_ignored(tmp_path):
    p = write(tmp_path, "nodes:\n  camera:\n    kind: camera\n    params: {fps: 30}\n")
    with pytest.raises(ConfigError, match=r"nodes.camera.params.fps = 30: unknown key"):
        load_config(p)


def test_unknown_kind_lists_known(tmp_path):
    p = write(tmp_path, "nodes:\n  cam:\n    kind: camra\n")
    with pytest.raises(ConfigError, match=r"nodes.cam.kind = 'camra': unknown node kind \(known: .*camera"):
        load_config(p)


def test_structural_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "nodes: [unclosed"))
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="nodes: required key is missing"):
        load_config(write(tmp_path, "name: x\n"))
    with pytest.raises(ConfigError, match="node name 'Bad-Name'"):
        load_config(write(tmp_path, "nodes:\n  Bad-Name: {kind: camera}\n"))
    with pytest.raises(ConfigError, match="on_node_exit = 'explode'"):
        load_config(write(tmp_path, "on_node_exit: explode\nnodes:\n  a: {kind: camera}\n"))


def test_cli_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    p = write(tmp_path, "nodes:\n  camera:\n    kind: camera\n    params: {width: 0}\n")
    assert main(["check", str(p)]) == 2
    err = capsys.readouterr().err
    assert "nodes.camera.params.width = 0" in err


def test_check_warns_of_collision_checks_on_a_robot_without_collision_geometry(capsys):
    """fr3_hand has visual meshes only: with its collision checks switched on, ``check`` says
    that nothing would be checked; panda_robotiq (checks on by default) gets no warning."""
    franka = str(REPO / "configs" / "franka_sim.yaml")
    assert main(["check", franka]) == 0
    assert "warning" not in capsys.readouterr().out
    assert main(["check", franka, "--set", "nodes.arm.params.collision.enabled=true"]) == 0
    out = capsys.readouterr().out
    assert "warning: nodes.arm.params.collision: enabled, but the robot model 'fr3_hand' has no collision" in out
    assert main(["check", str(REPO / "configs" / "sim_panda.yaml")]) == 0
    assert "warning" not in capsys.readouterr().out


# ---------------------------------------------------------------- typed devices, references


def _check(tmp_path, text):
    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    return str(e.value)


def test_devices_are_typed_and_keep_their_type():
    cfg = load_config(REPO / "configs" / "sim_panda.yaml")
    from robot_stack.drivers.sim import SimArmConfig, SimCameraConfig
    from robot_stack.nodes.arm import ArmParams
    from robot_stack.nodes.camera import CameraParams

    arm = ArmParams.model_validate(cfg.nodes["arm"].params)
    cam = CameraParams.model_validate(cfg.nodes["cam_wrist"].params)
    assert isinstance(arm.driver, SimArmConfig) and arm.driver.world == "sim"
    assert isinstance(cam.driver, SimCameraConfig) and cam.driver.camera == "handcam_rgb"
    assert arm.robot_name() == "panda_robotiq"
    assert CameraParams.model_validate({"driver": "synthetic"}).driver.type == "synthetic"  # bare type name


def test_a_key_of_another_driver_is_named(tmp_path):
    msg = _check(tmp_path, "nodes:\n  cam: {kind: camera, params: {driver: {type: opencv, serial: '12'}}}\n")
    assert "serial: not a key of camera driver opencv (a key of camera driver realsense)" in msg
    # a device key beside driver instead of inside it
    msg = _check(tmp_path, "nodes:\n  cam: {kind: camera, params: {driver: realsense, serial: '12'}}\n")
    assert "nodes.cam.params.serial: a key of camera driver realsense; put it inside driver: {type: realsense" in msg
    msg = _check(tmp_path, "nodes:\n  arm: {kind: arm, params: {driver: {type: ur5}}}\n")
    assert "unknown arm driver 'ur5' (known: franka, ideal, sim, so101, ur)" in msg


def test_dangling_and_wrong_kind_references_are_refused(tmp_path):
    msg = _check(
        tmp_path, "nodes:\n  sim: {kind: sim_world}\n  arm: {kind: arm, params: {driver: {type: sim, world: world}}}\n"
    )
    assert "nodes.arm.params: names sim_world node 'world', which is not in this config" in msg
    assert "nothing publishes what arm expects from it (have: arm, sim)" in msg
    msg = _check(
        tmp_path,
        "nodes:\n  sim: {kind: sim_world}\n  arm: {kind: arm}\n  cam: {kind: camera}\n"
        "  controller: {kind: controller, params: {cameras: [arm], source: external}}\n",
    )
    assert "nodes.controller.params: node 'arm' must be a camera node, it is a arm node" in msg
    msg = _check(tmp_path, "nodes:\n  sim: {kind: sim_world}\n  arm: {kind: arm, params: {robot: ur10}}\n")
    assert "nodes.arm.params.robot: unknown robot 'ur10'" in msg


def test_missing_sdk_names_the_extra(tmp_path, monkeypatch):
    from robot_stack.runtime.devices import CAMERA_DRIVERS
    from robot_stack.drivers.realsense import RealSenseConfig

    class NeedsSdk(RealSenseConfig):
        requires = ("no_such_sdk_module",)

    monkeypatch.setitem(CAMERA_DRIVERS.types, "realsense", "test_config:NeedsSdk")
    import sys

    monkeypatch.setattr(sys.modules[__name__], "NeedsSdk", NeedsSdk, raising=False)
    msg = _check(tmp_path, "nodes:\n  cam: {kind: camera, params: {driver: realsense}}\n")
    assert 'camera driver realsense needs no_such_sdk_module: pip install "robot-stack[realsense]"' in msg


def test_policy_backends_are_a_typed_family(tmp_path):
    from robot_stack.nodes.policy import PolicyParams
    from robot_stack.policies.backends import OnnxConfig
    from robot_stack.policies.scripted import GoToConfig

    p = PolicyParams.model_validate({"backend": {"type": "onnx", "path": "x.onnx", "seed": 3}})
    assert isinstance(p.backend, OnnxConfig) and p.backend.path == "x.onnx" and p.backend.seed == 3
    assert isinstance(PolicyParams().backend, GoToConfig)  # the default backend
    # a checkpoint key given to the scripted backend is named as the other backends' key
    msg = _check(tmp_path, "nodes:\n  policy: {kind: policy, params: {backend: {type: goto, path: p.safetensors}}}\n")
    assert "path: not a key of policy backend goto (a key of policy backend checkpoint, onnx)" in msg
    msg = _check(tmp_path, "nodes:\n  policy: {kind: policy, params: {backend: {type: checkpoint}}}\n")
    assert "path: required key is missing" in msg
    # the old flat form is refused with the way to write it
    msg = _check(tmp_path, "nodes:\n  policy: {kind: policy, params: {path: p.safetensors}}\n")
    assert "nodes.policy.params.path: a key of policy backend checkpoint, onnx; put it inside backend:" in msg


def test_nodes_keep_their_typed_params():
    from robot_stack.nodes.arm import ArmParams
    from robot_stack.nodes.controller import ControllerParams

    cfg = load_config(REPO / "configs" / "sim_panda_reach.yaml")
    assert isinstance(cfg.nodes["arm"].typed, ArmParams) and isinstance(cfg.nodes["controller"].typed, ControllerParams)
    assert cfg.nodes["arm"].typed.safety.max_joint_vel == 1.5  # the file's value, read through the typed model
    assert cfg.nodes["cam_wrist"].typed.camera_id == "wrist"
    # no module reads another node's raw params dict with defaults of its own
    import re
    import subprocess

    files = subprocess.check_output(
        ["git", "ls-files", "robot_stack", "drivers", "calibration", "teleop", "policies"], cwd=REPO, text=True
    ).split()
    bad = [
        f"{f}:{i + 1}"
        for f in files
        if f.endswith(".py")
        for i, line in enumerate((REPO / f).read_text().splitlines())
        if re.search(r"\.params\.get\(|\.params\[|Params\.model_validate\((nc|.*nodes\[.*\])\.params", line)
    ]
    assert bad == []


def test_shipped_training_settings_validate():
    import yaml

    from robot_stack.policies.training import TrainSettings

    paths = sorted((REPO / "configs" / "train").glob("*.yaml"))
    assert paths
    for p in paths:
        TrainSettings(**yaml.safe_load(p.read_text()))
    assert (
        TrainSettings(
            **yaml.safe_load((REPO / "configs" / "train" / "reach_rtc.yaml").read_text())
        ).model.rtc_max_prefix
        == 4
    )


def test_deploy_keeps_the_configs_backend_keys_and_replaces_the_path(tmp_path):
    """robot-stack deploy --policy P: the config's sampling settings (noise_scale, seed) survive,
    device too when the backend type stays; the file decides the type and the path."""
    from robot_stack.apps.deploy import deploy_backend

    own = {"type": "checkpoint", "path": "policy.safetensors", "noise_scale": 0.0, "seed": 3, "device": "cpu"}
    assert deploy_backend(own, tmp_path / "p.safetensors") == {
        "type": "checkpoint",
        "path": str(tmp_path / "p.safetensors"),
        "noise_scale": 0.0,
        "seed": 3,
        "device": "cpu",
    }
    assert deploy_backend(own, tmp_path / "p.onnx") == {
        "type": "onnx",
        "path": str(tmp_path / "p.onnx"),
        "noise_scale": 0.0,
        "seed": 3,
    }
    assert deploy_backend(None, tmp_path / "p.safetensors") == {
        "type": "checkpoint",
        "path": str(tmp_path / "p.safetensors"),
    }
