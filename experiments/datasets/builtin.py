"""The built-in datasets: seeded toy sets, scikit-learn's digits, MNIST, Fashion-MNIST, MNIST-1D."""
from __future__ import annotations

import numpy as np

from experiments.datasets import RawData, register_dataset
from experiments.datasets.idx import load_idx_dataset
from experiments.datasets.synthetic import GENERATORS
from core.errors import DataError


def _toy(name):
    generator = GENERATORS[name]

    def load(seed=0, n_train=1000, n_test=1000, **shape_options):
        # train and test come from one seeded stream so every seed is a new draw
        # of the same distribution (blobs keep the same centres within a seed).
        rng = np.random.default_rng(seed)
        x, y = generator(n_train + n_test, rng, **shape_options)
        return RawData(x[:n_train], y[:n_train], x[n_train:], y[n_train:], default_normalize="none",
                       default_val_size=0.2)

    # expose the generator's own options (noise, ...) so unknown keys are reported
    import inspect
    params = [p for p in inspect.signature(generator).parameters.values() if p.name not in ("n", "rng")]
    load.__signature__ = inspect.Signature(
        [inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0),
         inspect.Parameter("n_train", inspect.Parameter.KEYWORD_ONLY, default=1000),
         inspect.Parameter("n_test", inspect.Parameter.KEYWORD_ONLY, default=1000)]
        + [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in params])
    load.__doc__ = generator.__doc__
    return load


for _name in GENERATORS:
    register_dataset(_name)(_toy(_name))


@register_dataset("digits")
def digits(seed=0, test_size=0.2):
    """scikit-learn's 8x8 digits (1797 images, ships with scikit-learn), as (1, 8, 8) images in [0, 1]."""
    from sklearn.datasets import load_digits
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)[:, None]
    y = bunch.target.astype(np.int64)
    # a fixed test split (independent of the seed) so every seed is scored on the same images
    order = np.random.default_rng(12345).permutation(len(x))
    n_test = int(round(test_size * len(x)))
    test, train = order[:n_test], order[n_test:]
    return RawData(x[train], y[train], x[test], y[test], class_names=[str(i) for i in range(10)],
                   default_normalize="global", default_val_size=0.1)


def _idx(name):
    def load(seed=0, root=None, download=True):
        x_tr, y_tr, x_te, y_te, classes = load_idx_dataset(name, root=root, download=download)
        to_img = lambda a: (a.astype(np.float32) / 255.0)[:, None]
        return RawData(to_img(x_tr), y_tr, to_img(x_te), y_te, class_names=classes,
                       default_normalize="global", default_val_size=5000)
    load.__doc__ = f"{name} from its original IDX files (60000 train, 10000 test), as (1, 28, 28) images."
    return load


register_dataset("mnist")(_idx("mnist"))
register_dataset("fashion_mnist")(_idx("fashion_mnist"))


@register_dataset("mnist1d")
def mnist1d(seed=0):
    """MNIST-1D (4000 train, 1000 test signals of length 40), generated locally by the mnist1d package."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:
        raise DataError("dataset 'mnist1d' needs the mnist1d package: pip install 'altlearn[mnist1d]'") from err
    data = make_dataset(get_dataset_args())  # generated locally; never downloads
    return RawData(np.asarray(data["x"], np.float32), np.asarray(data["y"]),
                   np.asarray(data["x_test"], np.float32), np.asarray(data["y_test"]),
                   default_normalize="standard", default_val_size=0.1)
