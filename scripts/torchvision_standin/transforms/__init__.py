"""``ToTensor`` as torchvision defines it: HWC uint8 (PIL image or array) -> CHW float32 in [0, 1]."""

import numpy as np
import torch


class ToTensor:
    def __call__(self, pic):
        a = np.asarray(pic)
        if a.ndim == 2:
            a = a[:, :, None]
        t = torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
        return t.float().div(255) if t.dtype == torch.uint8 else t.float()


def __getattr__(name):
    raise AttributeError(f"torchvision stand-in (.venv-lerobot): transforms has no {name!r}; only ToTensor")
