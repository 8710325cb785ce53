import shutil

import numpy as np
import pytest

from experiments.datasets import available_datasets, load_dataset
from experiments.datasets.base import carve_validation
from experiments.datasets.idx import FILES, data_root
from core.errors import ConfigError, DataError


@pytest.mark.parametrize("name", ["blobs", "moons", "circles", "xor", "spirals"])
def test_toy_sets_are_seeded_and_balanced(name):
    a = load_dataset(name, seed=1, n_train=400, n_test=200)
    b = load_dataset(name, seed=1, n_train=400, n_test=200)
    c = load_dataset(name, seed=2, n_train=400, n_test=200)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.x_train, c.x_train)
    assert a.input_shape == (2,)
    assert len(a.x_train) + len(a.x_val) == 400 and len(a.x_test) == 200
    assert min(np.bincount(a.y_train)) > 0.2 * len(a.y_train) / a.n_classes


def test_xor_is_four_gaussian_blobs_labelled_by_sign_xor():
    ds = load_dataset("xor", seed=0, n_train=4000, n_test=10, noise=0.35, val_size=0)
    x, y = ds.x_train, ds.y_train
    corner = (x[:, 0] > 0).astype(int) * 2 + (x[:, 1] > 0)
    # points near their corner carry the XOR label
    near = np.abs(np.abs(x) - 1).max(1) < 0.5
    expected = ((x[:, 0] > 0) ^ (x[:, 1] > 0)).astype(int)
    assert (y[near] == expected[near]).mean() > 0.99
    assert np.bincount(corner).min() > 800


def test_digits_embedded_shape_and_split():
    ds = load_dataset("digits", seed=0)
    assert ds.input_shape == (1, 8, 8) and ds.n_classes == 10
    assert len(ds.x_train) + len(ds.x_val) + len(ds.x_test) == 1797
    # global normalisation from train statistics
    assert abs(ds.x_train.mean()) < 1e-5 and abs(ds.x_train.std() - 1) < 1e-4


def test_validation_split_is_stratified_deterministic_and_disjoint():
    x = np.arange(1000, dtype=np.float32)[:, None]
    y = np.repeat(np.arange(4), 250)
    a = carve_validation(x, y, 0.2, seed=0)
    b = carve_validation(x, y, 0.2, seed=0)
    np.testing.assert_array_equal(a[2], b[2])
    assert len(a[2]) == 200
    np.testing.assert_array_equal(np.bincount(a[3]), [50, 50, 50, 50])
    assert not set(a[0][:, 0]) & set(a[2][:, 0])


def test_unknown_dataset_and_option():
    with pytest.raises(ConfigError, match="unknown dataset 'cifar11'.*digits.*mnist"):
        load_dataset("cifar11")
    with pytest.raises(ConfigError, match="no option.*sigma.*known: .*noise"):
        load_dataset("moons", sigma=0.1)
    with pytest.raises(ConfigError, match="normalize='zscore'"):
        load_dataset("digits", normalize_="zscore")


def test_data_root_order(monkeypatch, tmp_path):
    monkeypatch.setenv("ALTLEARN_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path / "cfg") == tmp_path / "cfg"
    assert data_root(None) == tmp_path / "env"
    monkeypatch.delenv("ALTLEARN_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert data_root(None) == tmp_path / "cache" / "altlearn"


def test_mnist_loads_with_checksums(data_root):
    ds = load_dataset("mnist", seed=0, root=str(data_root), download=False)
    assert ds.input_shape == (1, 28, 28)
    assert len(ds.x_train) == 55000 and len(ds.x_val) == 5000 and len(ds.x_test) == 10000
    assert np.bincount(ds.y_test).tolist()[:2] == [980, 1135]


def test_fashion_mnist_loads(data_root):
    ds = load_dataset("fashion_mnist", seed=0, root=str(data_root), download=False, val_size=0)
    assert len(ds.x_train) == 60000 and ds.class_names[9] == "Ankle boot"


def test_missing_file_names_each_file_and_where(tmp_path, data_root):
    folder = tmp_path / "mnist"
    folder.mkdir()
    shutil.copy(data_root / "mnist" / FILES[1], folder / FILES[1])
    with pytest.raises(DataError) as err:
        load_dataset("mnist", root=str(tmp_path), download=False)
    msg = str(err.value)
    for fname in (FILES[0], FILES[2], FILES[3]):
        assert fname in msg
    assert FILES[1] + "," not in msg.split("missing file(s)")[1].split(" in ")[0]
    assert str(folder) in msg and "ALTLEARN_DATA" in msg


def test_corrupt_file_is_reported_by_checksum(tmp_path, data_root):
    folder = tmp_path / "mnist"
    shutil.copytree(data_root / "mnist", folder)
    target = folder / FILES[3]
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz is corrupt \(md5 [0-9a-f]+, expected ec2911"):
        load_dataset("mnist", root=str(tmp_path), download=False)


def test_download_failure_falls_back_to_the_message(tmp_path, monkeypatch):
    import experiments.datasets.idx as idx

    def refuse(*args, **kwargs):
        raise OSError("network unreachable")
    monkeypatch.setattr(idx.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="missing file"):
        load_dataset("fashion_mnist", root=str(tmp_path), download=True)
    assert not any(tmp_path.rglob("*.part"))


def test_registry_lists_builtins():
    for name in ("blobs", "moons", "circles", "xor", "spirals", "digits", "mnist", "fashion_mnist", "mnist1d"):
        assert name in available_datasets()


def test_mnist1d_when_installed():
    pytest.importorskip("mnist1d")
    ds = load_dataset("mnist1d", seed=0)
    assert ds.input_shape == (40,) and ds.n_classes == 10
    assert len(ds.x_train) + len(ds.x_val) == 4000 and len(ds.x_test) == 1000


def test_mnist1d_missing_package_is_explained(monkeypatch):
    import builtins
    real_import = builtins.__import__

    def no_mnist1d(name, *args, **kwargs):
        if name.startswith("mnist1d"):
            raise ImportError("No module named 'mnist1d'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", no_mnist1d)
    from core.errors import DataError
    with pytest.raises(DataError, match=r"pip install 'altlearn\[mnist1d\]'"):
        load_dataset("mnist1d")


def test_max_train_takes_a_seeded_subset_after_the_validation_split():
    full = load_dataset("digits", seed=0)
    a = load_dataset("digits", seed=0, max_train=300)
    b = load_dataset("digits", seed=0, max_train=300)
    assert len(a.x_train) == 300 and len(a.x_val) == len(full.x_val)
    np.testing.assert_array_equal(a.y_val, full.y_val)  # same validation images (normalised by the subset)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    with pytest.raises(ConfigError, match="max_train=0 must be a positive count"):
        load_dataset("digits", max_train=0)
