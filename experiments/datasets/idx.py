"""MNIST and Fashion-MNIST from their original IDX gz files, verified by md5."""
from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import urllib.request
from pathlib import Path

import numpy as np

from core.errors import DataError

FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
         "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")

# md5 sums published by the datasets' authors (also in torchvision's loaders).
SOURCES = {
    "mnist": {
        "folder": "mnist",
        "mirrors": ["https://ossci-datasets.s3.amazonaws.com/mnist/",
                    "http://yann.lecun.com/exdb/mnist/"],
        "md5": {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
                "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
                "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
                "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"},
        "classes": [str(i) for i in range(10)],
    },
    "fashion_mnist": {
        "folder": "fashion-mnist",
        "mirrors": ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"],
        "md5": {"train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
                "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
                "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"},
        "classes": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                    "Bag", "Ankle boot"],
    },
}


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: config key ``data.options.root``, else ``$ALTLEARN_DATA``, else a user cache folder."""
    if root:
        return Path(root).expanduser()
    if os.environ.get("ALTLEARN_DATA"):
        return Path(os.environ["ALTLEARN_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "altlearn"


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX ubyte file (gzipped): images (n, rows, cols) or labels (n,) as uint8."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path} is not a readable gzip file ({err}); delete it and fetch it again") from err
    magic = int.from_bytes(data[0:4], "big")
    if magic == 2051:
        n, r, c = (int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(3))
        return np.frombuffer(data, np.uint8, offset=16).reshape(n, r, c)
    if magic == 2049:
        return np.frombuffer(data, np.uint8, offset=8)
    raise DataError(f"{path} is not an IDX ubyte file (magic number {magic}); delete it and fetch it again")


def fetch(urls: list[str], dest: Path, timeout: float) -> bool:
    """Download ``dest`` from the first of ``urls`` that answers; False when none does.

    Writes to ``dest.part`` first so an interrupted download never leaves a file that looks complete.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp, open(tmp, "wb") as out:
                shutil.copyfileobj(resp, out, 1 << 20)  # streamed: CIFAR archives are ~170 MB
            os.replace(tmp, dest)
            return True
        except Exception:  # any network failure: try the next url, then let the caller report
            tmp.unlink(missing_ok=True)
    return False


def _download(name: str, folder: Path, missing: list[str], timeout: float) -> list[str]:
    """Try every mirror for each missing file; return the files still missing."""
    mirrors = SOURCES[name]["mirrors"]
    return [f for f in missing if not fetch([m + f for m in mirrors], folder / f, timeout)]


def load_idx_dataset(name: str, root=None, download: bool = True, timeout: float = 10.0):
    """(x_train, y_train, x_test, y_test) as uint8 arrays, after checking every file's md5."""
    source = SOURCES[name]
    folder = data_root(root) / source["folder"]
    missing = [f for f in FILES if not (folder / f).is_file()]
    if missing and download:
        missing = _download(name, folder, missing, timeout)
    if missing:
        raise DataError(
            f"{name}: missing file(s) {', '.join(missing)} in {folder}. Put the original files "
            f"({', '.join(FILES)}) in that folder, or point data.options.root / $ALTLEARN_DATA at a folder "
            f"holding {source['folder']}/ with them (the download from {source['mirrors'][0]} failed or was "
            f"disabled).")
    for fname in FILES:
        actual = md5(folder / fname)
        if actual != source["md5"][fname]:
            raise DataError(f"{name}: {folder / fname} is corrupt (md5 {actual}, expected "
                            f"{source['md5'][fname]}); delete it and fetch the original file again")
    x_train, y_train, x_test, y_test = (read_idx(folder / f) for f in FILES)
    return x_train, y_train, x_test, y_test, source["classes"]
