import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("MUJOCO_GL", "egl")


@pytest.fixture
def run_dir(tmp_path):
    """A short folder for ipc sockets (ipc paths are limited to ~100 bytes)."""
    import tempfile
    import shutil

    d = tempfile.mkdtemp(prefix="rs-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except FileNotFoundError:
        return False


sys.path.insert(0, str(Path(__file__).parent))
