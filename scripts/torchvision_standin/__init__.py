"""Stand-in for torchvision inside .venv-lerobot only (scripts/setup_lerobot.sh).

lerobot 0.4.4's dataset path imports torchvision, but PyPI's torchvision is a CUDA build that
does not import beside the CPU torch. With ``video_backend="torchcodec"`` the dataset path uses
only ``transforms.ToTensor``; everything else raises, naming this stand-in.
"""

__version__ = "0.0-standin"


def set_video_backend(backend):
    raise RuntimeError("torchvision stand-in (.venv-lerobot): use LeRobotDataset(..., video_backend='torchcodec')")


def __getattr__(name):
    raise AttributeError(f"torchvision stand-in (.venv-lerobot) has no {name!r}; only transforms.ToTensor")
