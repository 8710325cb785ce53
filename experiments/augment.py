"""Training-batch augmentation for image data: random crops of a zero-padded image and horizontal flips.

These are the recipes of torchvision's ``RandomCrop(size, padding=p)`` and ``RandomHorizontalFlip()``,
which paper code applies to MNIST-like and CIFAR training sets (LLS-DNN's `utils/dataloader.py`:
MNIST crop 4; Fashion-MNIST and CIFAR crop 4 + flip). torchvision pads the raw image with black
before normalising; our images are normalised once at load time, so the padding takes the value a
raw 0 has after normalisation (``Dataset.meta["pad_value"]``). Batches are augmented on the fly,
whole batch at a time, from the run's own generator, so a run stays reproducible; evaluation data
is never augmented.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from experiments.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Augment:
    """``crop_padding`` p > 0: pad by p on every side and crop back at a uniform offset in
    [0, 2p]^2 per image; ``hflip``: mirror each image left-right with probability 1/2."""

    crop_padding: int = 0
    hflip: bool = False

    def __post_init__(self):
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ConfigError(f"loop.augment.crop_padding must be an integer >= 0, got {self.crop_padding!r}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or bool(self.hflip)

    def check(self, input_shape) -> None:
        if self.active and len(input_shape) != 3:
            raise ConfigError(f"loop.augment crops and flips images (channels, height, width), but the data "
                              f"has input shape {tuple(input_shape)}; set loop.augment=null for this dataset")

    def __call__(self, x: torch.Tensor, rng: np.random.Generator, pad_value: float = 0.0) -> torch.Tensor:
        n, _, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            padded = torch.nn.functional.pad(x, (p, p, p, p), value=float(pad_value))
            dy, dx = (torch.from_numpy(rng.integers(0, 2 * p + 1, size=n)).to(x.device) for _ in range(2))
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]     # (n, 1, h, 1)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]     # (n, 1, 1, w)
            x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                       torch.arange(x.shape[1], device=x.device)[None, :, None, None], rows, cols]
        if self.hflip:
            flip = torch.from_numpy(rng.random(n) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)
        return x.contiguous()
