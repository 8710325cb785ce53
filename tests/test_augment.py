"""loop.augment: random crops of a padded image and horizontal flips of training batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.augment import Augment
from experiments.datasets import load_dataset
from experiments.errors import ConfigError
from experiments.fit import LoopConfig, fit
from learners import make_learner


def _images(n=64, c=2, h=6, w=5, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(np.float32))


def test_crop_is_a_window_of_the_padded_image_at_an_offset_within_the_padding():
    x, p, fill = _images(), 2, -0.7
    out = Augment(crop_padding=p)(x, np.random.default_rng(1), fill)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (p, p, p, p), value=fill)
    offsets = set()
    for i in range(len(x)):
        matches = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                   if torch.equal(out[i], padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]])]
        assert matches, f"image {i} is not a window of its padded original"
        offsets.update(matches)
    assert len(offsets) > 10                         # offsets spread over the (2p+1)^2 = 25 choices
    assert (out == fill).any()                       # some padding shows


def test_flip_mirrors_about_half_of_the_images_and_nothing_else():
    x = _images(n=400)
    out = Augment(hflip=True)(x, np.random.default_rng(2))
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(len(x))])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_same_generator_same_batch():
    x = _images()
    aug = Augment(crop_padding=3, hflip=True)
    a = aug(x, np.random.default_rng(5))
    b = aug(x, np.random.default_rng(5))
    c = aug(x, np.random.default_rng(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_pad_value_is_a_raw_black_pixel_after_normalisation():
    data = load_dataset("digits", seed=0, val_size=0)
    assert "pad_value" in data.meta
    raw = load_dataset("digits", seed=0, val_size=0, normalize_="none")
    shift, scale = raw.x_train.mean(), raw.x_train.std()
    assert data.meta["pad_value"] == pytest.approx(-shift / scale, rel=1e-5)


def test_fit_with_augmentation_learns_and_is_reproducible():
    data = load_dataset("digits", seed=0)            # 1 x 8 x 8 images
    loop = LoopConfig(n_epochs=3, batch_size=32, progress=False, augment={"crop_padding": 1, "hflip": False})
    runs = [fit(make_learner("backprop", optimizer={"name": "adam", "lr": 3e-3}), "mlp_small", data, loop=loop,
                seed=0).results for _ in range(2)]
    acc = float(runs[0]["accuracy"].sel(split="test")[-1])
    assert acc > 0.8
    assert float(runs[1]["accuracy"].sel(split="test")[-1]) == acc
    plain = fit(make_learner("backprop", optimizer={"name": "adam", "lr": 3e-3}), "mlp_small", data,
                loop=LoopConfig(n_epochs=3, batch_size=32, progress=False), seed=0).results
    assert float(plain["train_loss"][-1]) != float(runs[0]["train_loss"][-1])   # the batches were changed


def test_bad_augmentation_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="crop_padding must be an integer >= 0"):
        LoopConfig(augment={"crop_padding": -1})
    with pytest.raises(ConfigError, match="keys: crop_padding, hflip"):
        LoopConfig(augment={"rotate": 10})
    data = load_dataset("moons", seed=0)
    with pytest.raises(ConfigError, match="loop.augment crops and flips images.*input shape \\(2,\\)"):
        fit(make_learner("backprop"), "mlp_small", data, loop=LoopConfig(n_epochs=1, progress=False,
                                                                         augment={"hflip": True}))
