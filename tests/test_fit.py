import dataclasses

import numpy as np
import pytest

from experiments.datasets import load_dataset
from core.errors import ConfigError, TrainingDiverged
from experiments.fit import EarlyStopping, LoopConfig, fit
from experiments.recording import read_results
from learners import make_learner
from learners.backprop import Backprop


@dataclasses.dataclass(frozen=True, kw_only=True)
class PoisonAfter(Backprop):
    """Backprop that reports a NaN loss from step ``bad_step`` on (a stand-in for divergence)."""

    bad_step: int = 5

    def update(self, state, batch):
        state, metrics = super().update(state, batch)
        if state.step >= self.bad_step:
            metrics["loss/1"] = float("nan")
        return state, metrics


PoisonAfter.name = "poison"


def _data():
    return load_dataset("blobs", seed=0, n_train=320, n_test=100)


def test_results_schema_and_round_trip(tmp_path):
    result = fit(make_learner("backprop"), "mlp_small", _data(), seed=2,
                 loop=LoopConfig(n_epochs=3, progress=False), out_dir=tmp_path)
    ds = read_results(tmp_path / "results.nc")
    assert ds["accuracy"].dims == ("epoch", "split")
    assert list(ds["split"].values) == ["train", "val", "test"]
    assert list(ds["epoch"].values) == [1, 2, 3]
    for var in ("loss", "wall_time", "flops", "peak_memory", "train_loss"):
        assert var in ds, var
    assert (ds["wall_time"] > 0).all() and (ds["flops"] > 0).all()
    assert ds["learner"].item() == "backprop" and ds["seed"].item() == 2
    assert ds["dataset"].item() == "blobs" and ds["network"].item() == "mlp_small"
    assert ds.attrs["status"] == "complete"
    assert "torch" in ds.attrs["versions"] and ds.attrs["git_revision"]
    np.testing.assert_allclose(ds["accuracy"].values, result.results["accuracy"].values)
    assert not list(tmp_path.glob("*.tmp"))


def test_flops_count_matches_hand_count_for_an_mlp():
    data = load_dataset("blobs", seed=0, n_train=320, n_test=100, val_size=0)
    result = fit(make_learner("backprop"), "mlp_small", data, seed=0,
                 loop=LoopConfig(n_epochs=1, batch_size=32, progress=False))
    macs = 2 * 64 + 64 * 64 + 64 * 3            # forward multiply-accumulates per sample
    # forward 2*macs; backward: weight grads 2*macs, input grads 2*(macs - first layer's)
    expected = (2 * macs + 2 * macs + 2 * (macs - 2 * 64)) * 320
    assert result.results["flops"].values[0] == pytest.approx(expected, rel=1e-6)


def test_nan_stops_with_step_block_value_and_keeps_records(tmp_path):
    learner = PoisonAfter(bad_step=15)  # 10 steps per epoch: epoch 1 completes, epoch 2 diverges
    with pytest.raises(TrainingDiverged) as err:
        fit(learner, "mlp_small", load_dataset("blobs", seed=0, n_train=320, n_test=100, val_size=0),
            seed=0, loop=LoopConfig(n_epochs=5, progress=False), out_dir=tmp_path)
    msg = str(err.value)
    assert "loss=nan" in msg and "epoch 2" in msg and "step 15" in msg and "block 1" in msg
    assert err.value.step == 15 and err.value.block == 1
    ds = read_results(tmp_path / "results.nc")
    assert list(ds["epoch"].values) == [1]
    assert ds.attrs["status"] == "diverged"


def test_real_divergence_is_caught():
    learner = make_learner("backprop", optimizer={"name": "sgd", "lr": 1e6, "momentum": 0.0})
    data = load_dataset("blobs", seed=0, n_train=320, n_test=100, noise=5.0)
    with pytest.raises(TrainingDiverged, match="diverged|non-finite"):
        fit(learner, "mlp_small", data, seed=0, loop=LoopConfig(n_epochs=20, progress=False))


def test_early_stopping_stops_and_says_so():
    data = load_dataset("blobs", seed=0, n_train=400, n_test=100)
    loop = LoopConfig(n_epochs=50, progress=False,
                      early_stopping=EarlyStopping(metric="loss", split="val", mode="min", patience=2,
                                                   min_delta=10.0))
    result = fit(make_learner("backprop"), "mlp_small", data, seed=0, loop=loop)
    assert len(result.results["epoch"]) == 3
    assert result.results.attrs["stopped_early_at_epoch"] == 3


def test_network_input_mismatch_is_a_config_error():
    with pytest.raises(ConfigError, match="does not match the data's input shape"):
        fit(make_learner("backprop"), {"preset": "mlp_small", "input_shape": [784]}, _data(),
            loop=LoopConfig(n_epochs=1, progress=False))


def test_unknown_learner_and_hyperparameter():
    with pytest.raises(ConfigError, match="unknown learner 'backpropp'; known learners: .*backprop"):
        make_learner("backpropp")
    with pytest.raises(ConfigError, match="has no hyperparameter.*lr.*known: .*optimizer"):
        make_learner("backprop", lr=0.1)
    with pytest.raises(ConfigError, match="optimizer has no key.*learning_rate"):
        make_learner("backprop", optimizer={"learning_rate": 0.1})


def test_same_seed_same_results_and_shuffling_depends_on_seed():
    data = _data()
    loop = LoopConfig(n_epochs=2, progress=False)
    a = fit(make_learner("backprop"), "mlp_small", data, seed=5, loop=loop).results
    b = fit(make_learner("backprop"), "mlp_small", data, seed=5, loop=loop).results
    c = fit(make_learner("backprop"), "mlp_small", data, seed=6, loop=loop).results
    np.testing.assert_array_equal(a["loss"].values, b["loss"].values)
    assert not np.array_equal(a["loss"].values, c["loss"].values)


def test_regression_targets_flow_through_the_loop():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3)).astype(np.float32)
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.05 * rng.standard_normal(300)).astype(np.float32)
    from experiments.datasets import Dataset
    data = Dataset("linear", x[:200], y[:200], x[200:250], y[200:250], x[250:], y[250:], task="regression",
                   n_classes=1)
    res = fit(make_learner("backprop", optimizer={"lr": 0.01}), "mlp_small", data, seed=0,
              loop=LoopConfig(n_epochs=30, progress=False)).results
    assert float(res["r2"].sel(split="test")[-1]) > 0.95
    assert "accuracy" not in res
