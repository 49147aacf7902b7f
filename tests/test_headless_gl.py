"""Headless rendering works as the README's first command runs it: no MUJOCO_GL, no display."""

import os
import subprocess
import sys

import pytest


pytestmark = pytest.mark.processes  # fresh interpreters


def _env(**kw):
    env = {
        k: v for k, v in os.environ.items() if k not in ("MUJOCO_GL", "DISPLAY", "WAYLAND_DISPLAY", "PYOPENGL_PLATFORM")
    }
    env.update(kw)
    return env


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the EGL default is for Linux servers")
def test_importing_the_package_picks_egl_without_a_display_and_renders():
    code = (
        "import robot_stack, os; from robot_stack.drivers.sim_model import SceneSpec; "
        "from robot_stack.drivers.sim_world import SimWorld, SimRenderer; "
        "w = SimWorld(SceneSpec()); r = SimRenderer(w, 64, 48); "
        "rgb, depth = r.render('scene')[:2]; print(os.environ['MUJOCO_GL'], rgb.shape, int(rgb.max()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    gl, shape = out.stdout.split()[0], out.stdout.split("(")[1].split(")")[0]
    assert gl == "egl" and shape == "48, 64, 3"
    assert int(out.stdout.split()[-1]) > 0  # not a black frame


def test_an_explicit_mujoco_gl_is_kept():
    code = "import robot_stack, os; print(os.environ['MUJOCO_GL'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=_env(MUJOCO_GL="osmesa"), capture_output=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "osmesa", out.stderr[-2000:]
