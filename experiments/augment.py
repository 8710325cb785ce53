"""Training-batch augmentation for image data: random crops of a zero-padded image, horizontal flips
and random erasing.

These are the recipes of torchvision's ``RandomCrop(size, padding=p)``, ``RandomHorizontalFlip()`` and
``RandomErasing(p)``, which paper code applies to MNIST-like and CIFAR training sets (LLS-DNN's
`utils/dataloader.py`: MNIST crop 4; Fashion-MNIST crop 4 + flip; CIFAR-10/100 "AUG" crop 4 + flip +
erasing with p = 0.2). torchvision pads the raw image with black before normalising; our images are
normalised once at load time, so the padding takes the value a raw 0 has after normalisation
(``Dataset.meta["pad_value"]``). Erasing comes after normalisation in torchvision too, so its fill is
0 here as there. Batches are augmented on the fly, whole batch at a time, from the run's own
generator, so a run stays reproducible; evaluation data is never augmented.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from core.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Augment:
    """``crop_padding`` p > 0: pad by p on every side and crop back at a uniform offset in
    [0, 2p]^2 per image; ``hflip``: mirror each image left-right with probability 1/2;
    ``erase_prob``: with this probability per image, set a random rectangle to 0 (torchvision's
    ``RandomErasing`` defaults: area 2-33% of the image, aspect ratio log-uniform in [0.3, 3.3],
    up to 10 tries to fit, else nothing is erased)."""

    crop_padding: int = 0
    hflip: bool = False
    erase_prob: float = 0.0

    ERASE_SCALE = (0.02, 0.33)
    ERASE_RATIO = (0.3, 3.3)
    ERASE_TRIES = 10

    def __post_init__(self):
        if not isinstance(self.crop_padding, int) or self.crop_padding < 0:
            raise ConfigError(f"loop.augment.crop_padding must be an integer >= 0, got {self.crop_padding!r}")
        if not isinstance(self.erase_prob, (int, float)) or not 0.0 <= self.erase_prob <= 1.0:
            raise ConfigError(f"loop.augment.erase_prob must be a probability in [0, 1], got {self.erase_prob!r}")

    @property
    def active(self) -> bool:
        return self.crop_padding > 0 or bool(self.hflip) or self.erase_prob > 0

    def check(self, input_shape) -> None:
        if self.active and len(input_shape) != 3:
            raise ConfigError(f"loop.augment crops and flips images (channels, height, width), but the data "
                              f"has input shape {tuple(input_shape)}; set loop.augment=null for this dataset")

    def __call__(self, x: torch.Tensor, rng: np.random.Generator,
                 pad_value: float | tuple[float, ...] = 0.0) -> torch.Tensor:
        """``pad_value``: one fill value, or one per channel (after per-channel normalisation)."""
        n, c, h, w = x.shape
        if self.crop_padding:
            p = self.crop_padding
            if np.ndim(pad_value) == 0:
                padded = torch.nn.functional.pad(x, (p, p, p, p), value=float(pad_value))
            else:
                if len(pad_value) != c:
                    raise ValueError(f"pad_value has {len(pad_value)} values for images with {c} channels")
                fill = torch.tensor(pad_value, dtype=x.dtype, device=x.device)[None, :, None, None]
                padded = fill.expand(n, c, h + 2 * p, w + 2 * p).clone()
                padded[:, :, p:p + h, p:p + w] = x
            dy, dx = (torch.from_numpy(rng.integers(0, 2 * p + 1, size=n)).to(x.device) for _ in range(2))
            rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]     # (n, 1, h, 1)
            cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]     # (n, 1, 1, w)
            x = padded[torch.arange(n, device=x.device)[:, None, None, None],
                       torch.arange(c, device=x.device)[None, :, None, None], rows, cols]
        if self.hflip:
            flip = torch.from_numpy(rng.random(n) < 0.5).to(x.device)[:, None, None, None]
            x = torch.where(flip, x.flip(-1), x)
        if self.erase_prob > 0:
            x = x.masked_fill(self._erase_mask(n, h, w, rng).to(x.device), 0.0)
        return x.contiguous()

    def _erase_mask(self, n: int, h: int, w: int, rng: np.random.Generator) -> torch.Tensor:
        """(n, 1, h, w) mask of the rectangles to erase, drawn as torchvision's RandomErasing does:
        each image's first try whose rectangle fits inside the image is used."""
        t = self.ERASE_TRIES
        area = h * w * rng.uniform(*self.ERASE_SCALE, size=(n, t))
        ratio = np.exp(rng.uniform(np.log(self.ERASE_RATIO[0]), np.log(self.ERASE_RATIO[1]), size=(n, t)))
        eh = np.rint(np.sqrt(area * ratio)).astype(np.int64)
        ew = np.rint(np.sqrt(area / ratio)).astype(np.int64)
        fits = (eh < h) & (ew < w)
        first = fits.argmax(1)
        rows = np.arange(n)
        eh, ew = eh[rows, first], ew[rows, first]
        erase = (rng.random(n) < self.erase_prob) & fits.any(1)
        top = np.floor(rng.random(n) * (h - eh + 1)).astype(np.int64)      # uniform in [0, h - eh]
        left = np.floor(rng.random(n) * (w - ew + 1)).astype(np.int64)
        r, c = np.arange(h), np.arange(w)
        inside = ((r[None, :, None] >= top[:, None, None]) & (r[None, :, None] < (top + eh)[:, None, None])
                  & (c[None, None, :] >= left[:, None, None]) & (c[None, None, :] < (left + ew)[:, None, None]))
        return torch.from_numpy(inside & erase[:, None, None])[:, None]
