"""CIFAR-10/100 loaders, on tiny archives written in the official python-version format.

The real archives are not on this machine (and it is offline), so every test builds its own
cifar-*-python.tar.gz and puts the fixture's md5 in the loader's checksum table.
"""
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

import experiments.datasets.cifar as cifar
from experiments.datasets import available_datasets, load_dataset
from experiments.datasets.idx import md5
from core.errors import ConfigError, DataError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
DATA_CONFIGS = Path(cifar.__file__).resolve().parents[1] / "configs" / "data"
PER_BATCH = 2
# one marked pixel: image 1 of data_batch_3 (index 5 of the training set), green, row 5, column 7
MARK_IMAGE, MARK_C, MARK_H, MARK_W, MARK_VALUE = 5, 1, 5, 7, 200


def _batch(data, labels, label, **more):
    batch = {b"batch_label": label.encode(), b"data": data,
             b"filenames": [f"img_{i}.png".encode() for i in range(len(data))]}
    batch.update(labels)
    batch.update(more)
    return batch


def write_archive(path, members: dict, order=None):
    """A .tar.gz of pickled ``members`` (name -> object), added in ``order``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name in order or members:
            blob = pickle.dumps(members[name], protocol=4)
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path


def cifar10_members(drop=()):
    """Official layout and keys: 5 train batches and a test batch of PER_BATCH images each."""
    rng = np.random.default_rng(0)
    members = {}
    for i in range(1, 6):
        data = rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8)
        if i == 3:
            data[MARK_IMAGE - 2 * PER_BATCH, MARK_C * 1024 + MARK_H * 32 + MARK_W] = MARK_VALUE
        labels = [(PER_BATCH * (i - 1) + j) % 10 for j in range(PER_BATCH)]
        members[f"cifar-10-batches-py/data_batch_{i}"] = _batch(data, {b"labels": labels},
                                                                f"training batch {i} of 5")
    members["cifar-10-batches-py/test_batch"] = _batch(
        rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8), {b"labels": [9, 3]}, "testing batch 1 of 1")
    members["cifar-10-batches-py/batches.meta"] = {
        b"num_cases_per_batch": PER_BATCH, b"label_names": [c.encode() for c in CIFAR10_CLASSES],
        b"num_vis": 3072}
    for name in drop:
        del members[name]
    return members


FINE_TRAIN, COARSE_TRAIN = [0, 99, 5, 42, 7, 1], [4, 19, 17, 5, 0, 3]
FINE_TEST, COARSE_TEST = [42, 3], [5, 8]


def cifar100_members():
    rng = np.random.default_rng(1)
    return {
        "cifar-100-python/train": _batch(rng.integers(0, 256, (6, 3072), dtype=np.uint8),
                                         {b"fine_labels": FINE_TRAIN, b"coarse_labels": COARSE_TRAIN}, "training"),
        "cifar-100-python/test": _batch(rng.integers(0, 256, (2, 3072), dtype=np.uint8),
                                        {b"fine_labels": FINE_TEST, b"coarse_labels": COARSE_TEST}, "testing"),
        "cifar-100-python/meta": {b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
                                  b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)]},
    }


def install(root, name, members, monkeypatch, order=None):
    """Write ``name``'s archive under ``root`` where the loader looks, and trust its md5."""
    source = cifar.SOURCES[name]
    path = write_archive(root / source["folder"] / source["archive"], members, order)
    monkeypatch.setitem(source, "md5", md5(path))
    return path


@pytest.fixture
def cifar10_root(tmp_path, monkeypatch):
    members = cifar10_members()
    # a shuffled member order: batches must be stacked by name, not by position in the tar
    order = sorted(members, reverse=True)
    install(tmp_path, "cifar10", members, monkeypatch, order)
    return tmp_path, members


def _expected(members, names, key=b"labels"):
    x = np.concatenate([members[n][b"data"] for n in names]).reshape(-1, 3, 32, 32) / np.float32(255)
    return x, np.concatenate([members[n][key] for n in names])


def test_cifar10_shapes_dtypes_pixel_order_and_labels(cifar10_root):
    root, members = cifar10_root
    ds = load_dataset("cifar10", seed=0, root=str(root), download=False, val_size=0, normalize_="none")
    assert ds.x_train.shape == (10, 3, 32, 32) and ds.x_test.shape == (2, 3, 32, 32)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.x_train[MARK_IMAGE, MARK_C, MARK_H, MARK_W] == np.float32(MARK_VALUE / 255)
    x, y = _expected(members, cifar.SOURCES["cifar10"]["train"])
    np.testing.assert_array_equal(ds.x_train, x)
    np.testing.assert_array_equal(ds.y_train, np.arange(10))
    np.testing.assert_array_equal(ds.y_test, [9, 3])
    assert ds.n_classes == 10 and ds.class_names == CIFAR10_CLASSES and ds.input_shape == (3, 32, 32)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0


def test_cifar10_val_split_is_deterministic_and_normalised_like_mnist(cifar10_root):
    root, members = cifar10_root
    a = load_dataset("cifar10", seed=0, root=str(root), download=False, val_size=2)
    b = load_dataset("cifar10", seed=0, root=str(root), download=False, val_size=2)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.y_val, b.y_val)
    assert len(a.x_train) == 8 and len(a.x_val) == 2
    # train and val split the 10 training images between them (labels are 0..9, one per image)
    assert sorted(a.y_train.tolist() + a.y_val.tolist()) == list(range(10))
    assert a.meta["normalize"] == "global" and abs(a.x_train.mean()) < 1e-5
    sub = load_dataset("cifar10", seed=0, root=str(root), download=False, val_size=2, max_train=3)
    assert len(sub.x_train) == 3
    np.testing.assert_array_equal(sub.y_val, a.y_val)


def test_channel_normalisation_standardises_each_colour_and_pads_with_raw_black(cifar10_root):
    root, members = cifar10_root
    raw = load_dataset("cifar10", seed=0, root=str(root), download=False, val_size=2, normalize_="none")
    ds = load_dataset("cifar10", seed=0, root=str(root), download=False, val_size=2, normalize_="channel")
    np.testing.assert_allclose(ds.x_train.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(ds.x_train.std(axis=(0, 2, 3)), 1.0, atol=1e-4)
    mean = raw.x_train.astype(np.float64).mean(axis=(0, 2, 3))
    std = raw.x_train.astype(np.float64).std(axis=(0, 2, 3))
    np.testing.assert_allclose(ds.x_test, (raw.x_test - mean[:, None, None]) / std[:, None, None], rtol=1e-5,
                               atol=1e-5)                     # test uses the training split's statistics
    assert ds.meta["normalize"] == "channel"
    np.testing.assert_allclose(ds.meta["pad_value"], -mean / std, rtol=1e-6)
    with pytest.raises(ConfigError, match="normalize='channel' needs images .* use 'global' or 'standard'"):
        load_dataset("moons", seed=0, normalize_="channel")


def test_cifar100_fine_and_coarse_labels(tmp_path, monkeypatch):
    install(tmp_path, "cifar100", cifar100_members(), monkeypatch)
    opts = dict(seed=0, root=str(tmp_path), download=False, val_size=0, normalize_="none")
    fine = load_dataset("cifar100", **opts)
    coarse = load_dataset("cifar100", label="coarse", **opts)
    np.testing.assert_array_equal(fine.y_train, FINE_TRAIN)
    np.testing.assert_array_equal(fine.y_test, FINE_TEST)
    np.testing.assert_array_equal(coarse.y_train, COARSE_TRAIN)
    np.testing.assert_array_equal(coarse.y_test, COARSE_TEST)
    assert fine.n_classes == 100 and fine.class_names[99] == "fine_99"
    assert coarse.n_classes == 20 and coarse.class_names[19] == "coarse_19" and coarse.meta["label"] == "coarse"
    np.testing.assert_array_equal(fine.x_train, coarse.x_train)
    assert fine.x_train.shape == (6, 3, 32, 32)
    with pytest.raises(ConfigError, match="label='superclass' is not known; allowed: fine, coarse"):
        load_dataset("cifar100", label="superclass", **opts)


def test_missing_archive_names_the_file_the_folder_and_the_env_var(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("cifar10", root=str(tmp_path), download=False)
    msg = str(err.value)
    assert "missing file cifar-10-python.tar.gz" in msg and str(tmp_path / "cifar10") in msg
    assert "ALTLEARN_DATA" in msg and "data.options.root" in msg and "c58f30108f718f92721af3b95e74349a" in msg


def test_download_tries_the_official_url_then_reports(tmp_path, monkeypatch):
    import experiments.datasets.idx as idx
    asked = []

    def refuse(url, *args, **kwargs):
        asked.append(url)
        raise OSError("network unreachable")
    monkeypatch.setattr(idx.urllib.request, "urlopen", refuse)
    with pytest.raises(DataError, match="missing file cifar-100-python.tar.gz"):
        load_dataset("cifar100", root=str(tmp_path), download=True)
    assert asked == ["https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"]
    assert not any(tmp_path.rglob("*.part"))


def test_download_is_checked_and_used(tmp_path, monkeypatch):
    import experiments.datasets.idx as idx
    blob = install(tmp_path / "served", "cifar10", cifar10_members(), monkeypatch).read_bytes()
    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(blob))
    ds = load_dataset("cifar10", root=str(tmp_path / "root"), download=True, val_size=0)
    assert len(ds.x_train) == 10
    assert (tmp_path / "root" / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == blob


def test_corrupt_archive_is_reported_by_checksum(cifar10_root):
    root, _ = cifar10_root
    path = root / "cifar10" / "cifar-10-python.tar.gz"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    expected = cifar.SOURCES["cifar10"]["md5"]
    pattern = rf"cifar-10-python.tar.gz is corrupt \(md5 [0-9a-f]+, expected {expected}\); delete it and fetch"
    with pytest.raises(DataError, match=pattern):
        load_dataset("cifar10", root=str(root), download=False)


def test_official_checksum_is_enforced(tmp_path):
    # no checksum swap: the fixture is not the official archive, so the published md5 rejects it
    source = cifar.SOURCES["cifar10"]
    write_archive(tmp_path / source["folder"] / source["archive"], cifar10_members())
    with pytest.raises(DataError, match=r"is corrupt .*expected c58f30108f718f92721af3b95e74349a"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_archive_without_a_batch_is_reported(tmp_path, monkeypatch):
    install(tmp_path, "cifar10", cifar10_members(drop=["cifar-10-batches-py/data_batch_4"]), monkeypatch)
    with pytest.raises(DataError, match="lacks cifar-10-batches-py/data_batch_4; delete it and fetch"):
        load_dataset("cifar10", root=str(tmp_path), download=False)


def test_batches_may_only_reference_numpy_arrays(tmp_path, monkeypatch):
    members = cifar10_members()
    members["cifar-10-batches-py/test_batch"][b"data"] = len  # pickles as a reference to builtins.len
    install(tmp_path, "cifar10", members, monkeypatch)
    with pytest.raises(DataError, match="UnpicklingError: global builtins.len is not allowed"):
        load_dataset("cifar10", root=str(tmp_path), download=False)
    # the official files were pickled by numpy 1.x, which names the array constructor differently
    legacy = cifar._BatchUnpickler(io.BytesIO(b"")).find_class("numpy.core.multiarray", "_reconstruct")
    assert legacy is np.array(0).__reduce__()[0]


def test_registry_and_data_configs(cifar10_root, monkeypatch):
    root, _ = cifar10_root
    assert {"cifar10", "cifar100"} <= set(available_datasets())
    install(root, "cifar100", cifar100_members(), monkeypatch)
    for name in ("cifar10", "cifar100"):
        cfg = OmegaConf.to_container(OmegaConf.load(DATA_CONFIGS / f"{name}.yaml"))
        assert cfg["name"] == name and cfg["val_size"] == 5000 and cfg["normalize"] == "global"
        options = {**cfg["options"], "root": str(root), "download": False}
        ds = load_dataset(cfg["name"], seed=0, val_size=2, normalize_=cfg["normalize"], **options)
        assert ds.input_shape == (3, 32, 32) and len(ds.x_val) == 2



@pytest.mark.parametrize("arm", ["learner.variant=lls_mxm", "learner=backprop"])
def test_the_lls_vgg8_cifar10_config_trains_on_the_fixture(cifar10_root, arm):
    """The Table 3 GPU config end to end, one epoch on the tiny archive: channel normalisation, crops,
    flips and erasing, VGG8 with LLS's seven local blocks, and the backprop arm."""
    import xarray as xr

    from tests.test_cli import altlearn
    root, _ = cifar10_root
    out = altlearn("experiment=reproduce_lls_cifar10_vgg8_gpu", arm, "loop.n_epochs=1", "loop.progress=false",
                   "data.val_size=2", "loop.batch_size=4", "+learner_overrides.lls.bn_refresh_batches=1",
                   f"data.options.root={root}", "data.options.download=false", f"hydra.run.dir={root}/run", cwd=root)
    assert out.returncode == 0, out.stderr
    with xr.open_dataset(root / "run" / "results.nc") as ds:
        assert str(ds["dataset"].values) == "cifar10" and int(ds.attrs["n_train"]) == 8
        assert "channels: [128, 256, 256, 256, 512, 512]" in ds.attrs["network_spec"]
        assert "erase_prob: 0.2" in ds.attrs["config"] and "normalize: channel" in ds.attrs["config"]
        assert 0.0 <= float(ds["accuracy"].sel(split="test")[-1]) <= 1.0
        widths = (3, 128, 256, 256, 256, 512, 512)      # VGG8: 3x3 convs with bias and BN, FC1024-BN, head
        vgg8_parameters = (sum(a * b * 9 + 3 * b for a, b in zip(widths, widths[1:]))
                           + 512 * 2 * 2 * 1024 + 3 * 1024 + 1024 * 10 + 10)
        if arm.endswith("lls_mxm"):
            assert ds.sizes["block"] == 7              # six conv blocks and FC1024
            assert int(ds.attrs["n_parameters"]) == vgg8_parameters + 7 * 10 * 10
        else:
            assert int(ds.attrs["n_parameters"]) == vgg8_parameters


def test_the_lls_vgg8_cifar100_config_trains_on_the_fixture(tmp_path, monkeypatch):
    """Table 3's CIFAR-100 row: the CIFAR-10 config with the 100 fine classes, so LLS-MxM adds
    100 x 100 per block and the head has 100 outputs."""
    import xarray as xr

    from tests.test_cli import altlearn
    install(tmp_path, "cifar100", cifar100_members(), monkeypatch)
    out = altlearn("experiment=reproduce_lls_cifar100_vgg8_gpu", "learner.variant=lls_mxm", "loop.n_epochs=1",
                   "loop.progress=false", "data.val_size=2", "loop.batch_size=4",
                   "+learner_overrides.lls.bn_refresh_batches=1", f"data.options.root={tmp_path}",
                   "data.options.download=false", f"hydra.run.dir={tmp_path}/run", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    with xr.open_dataset(tmp_path / "run" / "results.nc") as ds:
        assert str(ds["dataset"].values) == "cifar100" and int(ds.attrs["n_train"]) == 4
        assert "erase_prob: 0.2" in ds.attrs["config"] and "normalize: channel" in ds.attrs["config"]
        widths = (3, 128, 256, 256, 256, 512, 512)
        vgg8_parameters = (sum(a * b * 9 + 3 * b for a, b in zip(widths, widths[1:]))
                           + 512 * 2 * 2 * 1024 + 3 * 1024 + 1024 * 100 + 100)
        assert ds.sizes["block"] == 7
        assert int(ds.attrs["n_parameters"]) == vgg8_parameters + 7 * 100 * 100


def test_the_lls_smallconv_l_config_trains_on_the_fixture(cifar10_root):
    """Table 2: SmallConvL (96, 192, 512, FC1024) with flips only, and the reference's linear block
    'pooled' up to 2048 features; LLS adds no parameters."""
    import xarray as xr

    from tests.test_cli import altlearn
    root, _ = cifar10_root
    out = altlearn("experiment=reproduce_lls_smallconv_l_gpu", "loop.n_epochs=1", "loop.progress=false",
                   "data.val_size=2", "loop.batch_size=4", "+learner_overrides.lls.bn_refresh_batches=1",
                   f"data.options.root={root}", "data.options.download=false", f"hydra.run.dir={root}/run", cwd=root)
    assert out.returncode == 0, out.stderr
    with xr.open_dataset(root / "run" / "results.nc") as ds:
        assert "channels: [96, 192, 512]" in ds.attrs["network_spec"]
        assert "hflip: true" in ds.attrs["config"] and "crop_padding: 0" in ds.attrs["config"]
        assert "linear_pool: 2048" in ds.attrs["config"]
        assert ds.sizes["block"] == 4                  # three conv blocks and FC1024
        widths = (3, 96, 192, 512)                     # 3x3 convs with bias and BN, FC1024-BN, head
        parameters = (sum(a * b * 9 + 3 * b for a, b in zip(widths, widths[1:]))
                      + 512 * 2 * 2 * 1024 + 3 * 1024 + 1024 * 10 + 10)
        assert int(ds.attrs["n_parameters"]) == parameters
