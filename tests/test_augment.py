"""loop.augment: random crops of a padded image and horizontal flips of training batches."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from experiments.augment import Augment
from experiments.datasets import load_dataset
from core.errors import ConfigError
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


def test_crop_pads_each_channel_with_its_own_value():
    x, p, fill = _images(c=3), 2, (-1.5, 0.25, 2.0)
    out = Augment(crop_padding=p)(x, np.random.default_rng(1), fill)
    padded = torch.stack([torch.nn.functional.pad(x[:, ch], (p, p, p, p), value=v) for ch, v in enumerate(fill)], 1)
    for i in range(len(x)):
        assert any(torch.equal(out[i], padded[i, :, dy:dy + x.shape[2], dx:dx + x.shape[3]])
                   for dy in range(2 * p + 1) for dx in range(2 * p + 1)), f"image {i}"
    for ch, v in enumerate(fill):                    # padding shows, each channel with its own value only
        assert (out[:, ch] == v).any() and not (out[:, ch] == fill[(ch + 1) % 3]).any()
    with pytest.raises(ValueError, match="pad_value has 2 values for images with 3 channels"):
        Augment(crop_padding=1)(x, np.random.default_rng(1), (0.0, 1.0))


def test_flip_mirrors_about_half_of_the_images_and_nothing_else():
    x = _images(n=400)
    out = Augment(hflip=True)(x, np.random.default_rng(2))
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(len(x))])
    assert bool((flipped | kept).all())
    assert 150 < int(flipped.sum()) < 250


def test_erasing_zeroes_one_rectangle_in_about_p_of_the_images():
    x = _images(n=2000, c=2, h=32, w=32) + 10.0            # no pixel is 0 before erasing
    out = Augment(erase_prob=0.2)(x, np.random.default_rng(3))
    zero = out == 0
    assert torch.equal(zero[:, 0], zero[:, 1])                 # the same rectangle in every channel
    erased = zero.flatten(1).any(1)
    assert 0.16 < float(erased.float().mean()) < 0.24
    assert torch.equal(out[~erased], x[~erased])
    fractions = []
    for i in torch.nonzero(erased).ravel().tolist():
        rows, cols = torch.nonzero(zero[i, 0], as_tuple=True)
        box = (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1)
        assert bool(zero[i, 0, box[0]:box[1], box[2]:box[3]].all())      # a filled rectangle, nothing else
        assert int(zero[i, 0].sum()) == (box[1] - box[0]) * (box[3] - box[2])
        assert torch.equal(out[i][:, ~zero[i, 0]], x[i][:, ~zero[i, 0]])
        fractions.append(float(zero[i, 0].float().mean()))
    # area drawn uniformly in [2%, 33%] of the image (rounding of the sides blurs the ends a little)
    assert 0.015 < min(fractions) < 0.04 and 0.28 < max(fractions) < 0.36
    assert abs(np.mean(fractions) - 0.175) < 0.02


def test_erasing_probability_is_checked():
    with pytest.raises(ConfigError, match="erase_prob must be a probability in \\[0, 1\\], got 1.5"):
        LoopConfig(augment={"erase_prob": 1.5})
    assert LoopConfig(augment={"erase_prob": 0.0}).augment is None


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
    with pytest.raises(ConfigError, match="keys: crop_padding, hflip, erase_prob"):
        LoopConfig(augment={"rotate": 10})
    data = load_dataset("moons", seed=0)
    with pytest.raises(ConfigError, match="loop.augment crops and flips images.*input shape \\(2,\\)"):
        fit(make_learner("backprop"), "mlp_small", data, loop=LoopConfig(n_epochs=1, progress=False,
                                                                         augment={"hflip": True}))
