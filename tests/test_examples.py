"""Every script in examples/ runs as a user would run it and prints what its docstring promises."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    return subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=env,
    )


def test_every_example_is_listed_and_tested():
    scripts = sorted(p.name for p in EXAMPLES.glob("*.py"))
    listed = (EXAMPLES / "README.md").read_text()
    tests = Path(__file__).read_text()
    assert 4 <= len(scripts) <= 6
    for s in scripts:
        assert f"`{s}" in listed, f"{s} is not in examples/README.md"
        assert f'run("{s}"' in tests, f"{s} has no test here"


@pytest.mark.processes
def test_build_setup_writes_a_valid_setup(tmp_path):
    from robot_stack.runtime.config import load_config

    out = tmp_path / "lab.yaml"
    r = run("build_setup.py", str(out))
    assert r.returncode == 0, r.stderr
    assert "arm limits: max_joint_vel 1.0 rad/s, max_jump_ee 0.05 m" in r.stdout
    cfg = load_config(out)
    assert sorted(cfg.nodes) == ["arm", "cam_scene", "sim"]
    assert cfg.nodes["arm"].typed.safety.max_jump_ee == 0.05


@pytest.mark.processes
def test_read_episode_prints_streams_and_rates(tmp_path):
    from robot_stack.data.dataset import EpisodeWriter

    w = EpisodeWriter(tmp_path, meta={"task": "reach"})
    for i in range(11):  # 10 Hz for 1 s
        t = 1_000_000_000 + i * 100_000_000
        w.add("robot_state", t, q=np.zeros(7), ee_pose=np.r_[0.4, 0.0, 0.3, 1.0, 0, 0, 0])
        w.add(
            "action",
            t,
            target_ns=np.int64(t),
            pose=np.r_[0.41, 0.02, 0.3, 1.0, 0, 0, 0],
            gripper=np.float64(1.0),
            origin=np.int8(1),
        )
        w.add("camera/scene", t, color=np.full((4, 6, 3), 50, np.uint8))
    path = w.close()
    r = run("read_episode.py", str(path))
    assert r.returncode == 0, r.stderr
    assert "task 'reach'" in r.stdout
    assert re.search(r"robot_state\s+11 samples over\s+1.00 s \(\s*10.0 Hz\)", r.stdout), r.stdout
    assert "first action target: [0.41, 0.02, 0.3] m, from the teleop" in r.stdout
    assert "camera/scene frame 0: (4, 6, 3) uint8, mean 50.0" in r.stdout
    bad = run("read_episode.py", str(tmp_path / "nope.zarr"))
    assert bad.returncode == 1 and bad.stderr.startswith("cannot read") and "Traceback" not in bad.stderr


@pytest.mark.processes
def test_drive_sim_arm_moves_the_tcp_there_and_back():
    r = run("drive_sim_arm.py")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    errors = [float(e) for e in re.findall(r"error ([\d.]+) mm", r.stdout)]
    # the example waits until the TCP is within 2 mm and prints the next state: a tick later, under
    # load it read 2.00 mm once
    assert len(errors) == 2 and max(errors) < 3.0, r.stdout[-2000:]


@pytest.mark.processes
def test_serve_checkpoint_answers_its_spec_and_a_chunk(tmp_path):
    import torch

    from robot_stack.policies.generative import GenerativePolicyModel, ModelConfig, save_checkpoint

    torch.manual_seed(0)
    model = GenerativePolicyModel(
        ModelConfig(
            cameras={"scene": "rgb"},
            image_hw=(64, 64),
            horizon=8,
            kind="flow",
            sample_steps=1,
            widths=(16, 32),
            enc_base=8,
        )
    ).eval()
    ckpt = save_checkpoint(model, tmp_path / "policy.safetensors")
    r = run("serve_checkpoint.py", str(ckpt))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "spec: To 2, H 8, action 8-D" in r.stdout
    assert "chunk: (8, 8) float32" in r.stdout
    missing = run("serve_checkpoint.py", str(tmp_path / "nope.safetensors"))
    assert missing.returncode == 2 and "usage" in missing.stderr


@pytest.mark.processes
def test_query_openpi_gets_a_chunk_from_an_openpi_server():
    from robot_stack.comm.openpi import OpenpiServer

    seen = {}

    def infer(obs):
        seen.update(obs)
        state = np.asarray(obs["observation/state"], np.float32)
        return {"actions": np.tile(state, (10, 1)), "server_timing": {"infer_ms": 2.0}}, None

    server = OpenpiServer("127.0.0.1", 0, {"action_horizon": 10}, infer)
    try:
        r = run("query_openpi.py", "--port", str(server.port), "--prompt", "reach the cube", timeout=60)
    finally:
        server.close()
    assert r.returncode == 0, r.stderr
    assert "actions (10, 7) float32, server infer 2.0 ms" in r.stdout
    assert seen["prompt"] == "reach the cube"
    with socket.socket() as s:  # nothing listens on a port we just closed: one line, exit 1
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = run("query_openpi.py", "--port", str(port), "--timeout", "2", timeout=60)
    assert down.returncode == 1 and down.stderr.startswith("cannot query") and "Traceback" not in down.stderr


def test_examples_import_nothing_from_tests():
    for p in EXAMPLES.glob("*.py"):
        text = p.read_text()
        assert "conftest" not in text and "from tests" not in text, p.name
        assert yaml  # the examples write YAML with PyYAML, a core dependency
