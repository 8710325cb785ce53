"""CIFAR-10 and CIFAR-100 from the official python-version archives, verified by md5.

Files: ``<root>/cifar10/cifar-10-python.tar.gz`` and ``<root>/cifar100/cifar-100-python.tar.gz``,
with the data root found as for MNIST (``data.options.root``, else ``$ALTLEARN_DATA``, else
``~/.cache/altlearn``). The pickled batches are read straight out of the archive, so nothing is
extracted beside it and the md5-checked archive stays the only copy on disk.
"""
from __future__ import annotations

import pickle
import tarfile

import numpy as np

from experiments.datasets import RawData, register_dataset
from experiments.datasets.idx import data_root, fetch, md5
from core.errors import ConfigError, DataError

# md5 sums published with the archives (https://www.cs.toronto.edu/~kriz/cifar.html, also in
# torchvision). Tests put their fixture's sum in "md5"; on purpose there is no option to skip the check.
SOURCES = {
    "cifar10": {
        "folder": "cifar10",
        "archive": "cifar-10-python.tar.gz",
        "md5": "c58f30108f718f92721af3b95e74349a",
        "urls": ["https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"],
        "train": [f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)],
        "test": ["cifar-10-batches-py/test_batch"],
        "meta": "cifar-10-batches-py/batches.meta",
    },
    "cifar100": {
        "folder": "cifar100",
        "archive": "cifar-100-python.tar.gz",
        "md5": "eb9058c3a382ffc7106e4002c42a8d85",
        "urls": ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"],
        "train": ["cifar-100-python/train"],
        "test": ["cifar-100-python/test"],
        "meta": "cifar-100-python/meta",
    },
}

# (label key in each batch, class-name key in the meta file) per label granularity
CIFAR100_LABELS = {"fine": (b"fine_labels", b"fine_label_names"),
                   "coarse": (b"coarse_labels", b"coarse_label_names")}


class _BatchUnpickler(pickle.Unpickler):
    """Resolves only the globals that a pickled numpy array needs.

    Unpickling can run arbitrary code. The md5 check already pins the official archives; this keeps
    any other file that reaches the reader (a wrong checksum entry, say) from doing more than fail.
    """

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"),   # pickled by numpy 1.x (the official files)
               ("numpy._core.multiarray", "_reconstruct"),  # pickled by numpy 2.x
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_archive(path, members: list[str]) -> dict[str, dict]:
    """Unpickle ``members`` of the tar.gz at ``path`` (with ``encoding='bytes'``, keys stay bytes)."""
    wanted, found = set(members), {}
    try:
        # stream mode: one forward pass over the gzip; random access would re-inflate from the start
        with tarfile.open(path, "r|gz") as tar:
            for info in tar:
                if info.name in wanted and info.isfile():
                    found[info.name] = _BatchUnpickler(tar.extractfile(info), encoding="bytes").load()
    except Exception as err:  # tar, gzip and pickle each raise their own types for a damaged file
        raise DataError(f"{path} could not be read ({type(err).__name__}: {err}); delete it and fetch "
                        f"the original archive again") from err
    lost = [m for m in members if m not in found]
    if lost:
        raise DataError(f"{path} lacks {', '.join(lost)}; delete it and fetch the original archive again")
    return found


def load_cifar_archive(name: str, root=None, download: bool = True, timeout: float = 10.0):
    """(archive path, its unpickled train, test and meta members by name), after checking the md5."""
    source = SOURCES[name]
    folder = data_root(root) / source["folder"]
    path = folder / source["archive"]
    if not path.is_file() and download:
        fetch(source["urls"], path, timeout)
    if not path.is_file():
        raise DataError(
            f"{name}: missing file {source['archive']} in {folder}. Put the official archive "
            f"({source['archive']}, md5 {source['md5']}) in that folder, or point data.options.root / "
            f"$ALTLEARN_DATA at a folder holding {source['folder']}/ with it (the download from "
            f"{source['urls'][0]} failed or was disabled).")
    actual = md5(path)
    if actual != source["md5"]:
        raise DataError(f"{name}: {path} is corrupt (md5 {actual}, expected {source['md5']}); delete it "
                        f"and fetch the original archive again from {source['urls'][0]}")
    return path, read_archive(path, source["train"] + source["test"] + [source["meta"]])


def _stack(batches: dict[str, dict], members: list[str], label_key: bytes, path):
    """Images (n, 3, 32, 32) float32 in [0, 1] and int64 labels from ``members``, in that order."""
    data, labels = [], []
    for member in members:
        batch = batches[member]
        lacking = [repr(k) for k in (b"data", label_key) if not isinstance(batch, dict) or k not in batch]
        if lacking:
            raise DataError(f"{path}: {member} has no {', '.join(lacking)} entry; delete the archive and "
                            f"fetch it again")
        x = np.asarray(batch[b"data"])
        y = np.asarray(batch[label_key])
        if (x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.shape != (len(x),)
                or y.dtype.kind not in "iu"):
            raise DataError(f"{path}: {member} holds {x.dtype} data of shape {x.shape} and {y.size} labels, "
                            f"expected uint8 (n, 3072) and n labels; delete the archive and fetch it again")
        data.append(x)
        labels.append(y.astype(np.int64))
    # each row is a 32x32 image as three row-major planes, red then green then blue, so a plain
    # reshape gives (channel, height, width); scaled in place to avoid a second float copy
    x = np.concatenate(data).reshape(-1, 3, 32, 32).astype(np.float32)
    x /= 255.0
    return x, np.concatenate(labels)


def _class_names(meta: dict, key: bytes) -> list[str] | None:
    names = meta.get(key) if isinstance(meta, dict) else None
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names] if names else None


@register_dataset("cifar10")
def cifar10(seed=0, root=None, download=True):
    """CIFAR-10 from its python-version archive (50000 train, 10000 test), as (3, 32, 32) images."""
    source = SOURCES["cifar10"]
    path, batches = load_cifar_archive("cifar10", root=root, download=download)
    x_tr, y_tr = _stack(batches, source["train"], b"labels", path)
    x_te, y_te = _stack(batches, source["test"], b"labels", path)
    return RawData(x_tr, y_tr, x_te, y_te, class_names=_class_names(batches[source["meta"]], b"label_names"),
                   default_normalize="global", default_val_size=5000)


@register_dataset("cifar100")
def cifar100(seed=0, root=None, download=True, label="fine"):
    """CIFAR-100 from its python-version archive (50000 train, 10000 test), as (3, 32, 32) images;
    ``label``: ``fine`` (100 classes) or ``coarse`` (20 superclasses)."""
    if label not in CIFAR100_LABELS:
        raise ConfigError(f"data.options.label={label!r} is not known; allowed: {', '.join(CIFAR100_LABELS)}")
    source = SOURCES["cifar100"]
    label_key, names_key = CIFAR100_LABELS[label]
    path, batches = load_cifar_archive("cifar100", root=root, download=download)
    x_tr, y_tr = _stack(batches, source["train"], label_key, path)
    x_te, y_te = _stack(batches, source["test"], label_key, path)
    return RawData(x_tr, y_tr, x_te, y_te, class_names=_class_names(batches[source["meta"]], names_key),
                   default_normalize="global", default_val_size=5000)
