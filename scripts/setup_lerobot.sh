#!/usr/bin/env bash
# lerobot's own dataset loader, in its own virtual environment (.venv-lerobot), to check that
# LeRobotDataset reads our export (tests/test_lerobot_check.py, scripts/lerobot_check.py).
#
# Why it is installed the way it is (facts of lerobot 0.4.4, the newest release for Python 3.11):
# - lerobot pins torch < 2.11 and torchvision < 0.26; pip would pull multi-GB CUDA builds. So lerobot
#   goes in with --no-deps beside the CPU torch 2.13.0, and the dependencies its dataset path imports
#   are installed by name;
# - PyPI's torchvision is a CUDA build that does not import beside the CPU torch, and lerobot 0.4.4's
#   pyav video backend calls torchvision.io.VideoReader, which torchvision 0.28 removed. The dataset
#   path imports torchvision but, with video_backend="torchcodec", uses only transforms.ToTensor
#   (for image features); .venv-lerobot gets a stand-in package with exactly that
#   (scripts/torchvision_standin), which raises a clear error for anything else;
# - torchcodec 0.12.0 is a CPU build; it loads the system FFmpeg libraries (apt: ffmpeg's
#   libavcodec/libavformat/libavutil/libswscale/libswresample).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if ! ldconfig -p 2>/dev/null | grep -q "libavcodec.so"; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq >/dev/null
  $SUDO apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null
fi
# --system-site-packages: the CPU torch 2.13.0 that scripts/setup.sh installed is used from there
# (a second copy in this venv cost CI most of a minute); what lerobot needs in other versions is
# installed into the venv, which comes first on its path
[ -x .venv-lerobot/bin/python ] || "$PY" -m venv --system-site-packages .venv-lerobot
V=.venv-lerobot/bin/python
$V -m pip install -q --disable-pip-version-check "torch==2.13.0"
$V -m pip install -q --disable-pip-version-check --no-deps "lerobot==0.4.4"
$V -m pip install -q --disable-pip-version-check "torchcodec==0.12.0" "datasets>=4,<5" \
  "huggingface-hub>=0.34.2,<0.36" "accelerate>=1.10,<2" "draccus==0.10.0" "jsonlines>=4,<5" "einops>=0.8,<0.9" \
  "packaging>=24.2,<26" "termcolor>=2.4,<4" "deepdiff>=7,<9" "av>=15,<16" "pandas" "pyarrow" "pillow"
site="$($V -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
rm -rf "$site/torchvision"
cp -r scripts/torchvision_standin "$site/torchvision"
$V - <<'EOF'
from lerobot.datasets.lerobot_dataset import LeRobotDataset  # noqa: F401
import torchcodec.decoders  # noqa: F401
print("[setup_lerobot] ok: lerobot 0.4.4 imports; torchcodec loads FFmpeg")
EOF
