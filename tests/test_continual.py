"""Task streams, the continual run and the ACC/BWT/forgetting metrics."""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
import torch
import xarray as xr

from analysis.continual import acc, bwt, continual_metrics, forgetting
from experiments.continual import StreamConfig, build_stream, run_stream, stream_config
from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import LoopConfig, evaluate
from learners import make_learner
from learners.backprop import Backprop


def _matrix(rows):
    return xr.DataArray(np.array(rows, dtype=float), dims=("trained_task", "eval_task"))


# A task (task 0) that improves after learning the next one tells BWT and forgetting apart.
HAND = [[0.50, 0.10, 0.20],
        [0.80, 0.90, 0.30],
        [0.60, 0.70, 0.95]]


def test_acc_bwt_forgetting_match_hand_computation():
    m = _matrix(HAND)
    assert float(acc(m)) == pytest.approx((0.60 + 0.70 + 0.95) / 3)
    assert float(bwt(m)) == pytest.approx(((0.60 - 0.50) + (0.70 - 0.90)) / 2)
    # best after learning: task 0 max(0.50, 0.80) = 0.80, task 1 0.90; final 0.60 and 0.70
    assert float(forgetting(m)) == pytest.approx(((0.80 - 0.60) + (0.90 - 0.70)) / 2)


def test_metrics_keep_extra_dimensions():
    other = [[1.0, 0.0], [0.5, 1.0]]
    stacked = xr.concat([_matrix(other), _matrix([[0.8, 0.2], [0.8, 0.9]])], dim="seed")
    metrics = continual_metrics(stacked)
    np.testing.assert_allclose(metrics["acc"].values, [0.75, 0.85])
    np.testing.assert_allclose(metrics["bwt"].values, [-0.5, 0.0])
    np.testing.assert_allclose(metrics["forgetting"].values, [0.5, 0.0])
    single = continual_metrics(_matrix([[0.7]]))
    assert float(single["acc"]) == pytest.approx(0.7) and np.isnan(float(single["bwt"]))


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


def test_permuted_stream_permutes_pixels_and_keeps_labels(digits):
    stream = build_stream(StreamConfig(name="permuted", n_tasks=3), digits, seed=4)
    assert len(stream) == 3 and stream.n_outputs == 10
    first, second = stream.tasks[0], stream.tasks[1]
    np.testing.assert_array_equal(first.x_train, digits.x_train)          # task 0 unpermuted
    np.testing.assert_array_equal(second.y_test, digits.y_test)
    assert not np.array_equal(second.x_train, digits.x_train)
    flat = lambda a: a.reshape(len(a), -1)
    np.testing.assert_array_equal(np.sort(flat(second.x_train), 1), np.sort(flat(digits.x_train), 1))
    again = build_stream(StreamConfig(name="permuted", n_tasks=3), digits, seed=4)
    np.testing.assert_array_equal(again.tasks[2].x_train, stream.tasks[2].x_train)
    shifted = build_stream(StreamConfig(name="permuted", n_tasks=2, permute_first=True), digits, seed=4)
    assert not np.array_equal(shifted.tasks[0].x_train, digits.x_train)


@pytest.mark.parametrize("setting,n_outputs", [("task", 10), ("domain", 2), ("class", 10)])
def test_split_stream_settings(digits, setting, n_outputs):
    stream = build_stream(StreamConfig(name="split", setting=setting), digits, seed=0)
    assert len(stream) == 5 and stream.n_outputs == n_outputs
    task = stream.tasks[3]
    original = np.unique(digits.y_train[np.isin(digits.y_train, [6, 7])])
    np.testing.assert_array_equal(original, [6, 7])
    expected = [0, 1] if setting == "domain" else [6, 7]
    np.testing.assert_array_equal(np.unique(task.y_train), expected)
    assert task.classes == tuple(expected)
    assert len(task.x_train) == int(np.isin(digits.y_train, [6, 7]).sum())


def test_stream_errors_name_the_key(digits):
    with pytest.raises(ConfigError, match="stream.name='nope'"):
        StreamConfig(name="nope")
    with pytest.raises(ConfigError, match="data=mnist"):
        build_stream(StreamConfig(name="permuted_mnist"), digits)
    with pytest.raises(ConfigError, match="stream.n_tasks=6"):
        build_stream(StreamConfig(name="split", n_tasks=6), digits)
    with pytest.raises(ConfigError, match="no key\\(s\\) tasks"):
        stream_config({"name": "split", "tasks": 3})


def test_evaluate_with_classes_scores_only_the_task_units():
    class Fixed(Backprop):
        def predict(self, state, x):
            scores = torch.zeros(len(x), 4)
            scores[:, 3] = 5.0      # a unit of another task dominates
            scores[:, 1] = 1.0
            return scores
    y = torch.tensor([1, 1, 0])
    assert evaluate(Fixed(), None, torch.zeros(3, 2), y, "classification")["accuracy"] == 0.0
    assert evaluate(Fixed(), None, torch.zeros(3, 2), y, "classification",
                    classes=(0, 1))["accuracy"] == pytest.approx(2 / 3)


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Spy(Backprop):
    calls: list = dataclasses.field(default_factory=list)

    def begin_task(self, state, task):
        self.calls.append(("begin", task.index, state.step))
        return state

    def end_task(self, state, task):
        self.calls.append(("end", task.index, state.step))
        return state


def test_continual_run_calls_hooks_and_records_the_matrix(digits, tmp_path):
    stream = build_stream(StreamConfig(name="split", setting="task", n_tasks=3, max_train_per_task=96,
                                       max_test_per_task=60), digits, seed=0)
    spy = _Spy(optimizer=make_learner("backprop", optimizer={"lr": 0.01}).optimizer)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_stream(spy, "mlp_small", stream, loop=LoopConfig(n_epochs=2, progress=False, count_flops=False),
                            seed=0,
                            out_dir=tmp_path)
    steps = -(-len(stream.tasks[0].x_train) // 32)
    assert [c[:2] for c in spy.calls] == [("begin", 0), ("end", 0), ("begin", 1), ("end", 1), ("begin", 2),
                                          ("end", 2)]
    assert spy.calls[1][2] == 2 * steps          # end_task after the task's epochs
    ds = result.results
    assert ds["task_accuracy"].shape == (3, 3) and np.isfinite(ds["task_accuracy"]).all()
    assert ds.sizes["epoch"] == 6
    np.testing.assert_allclose(float(ds["acc"]), ds["task_accuracy"].values[-1].mean())
    np.testing.assert_allclose(ds["accuracy"].sel(split="test").values[-1], float(ds["acc"]))
    assert ds["task_accuracy"].values[0, 0] > 0.9           # two-class tasks are learned
    np.testing.assert_allclose(ds["epoch_task_accuracy"].values[1::2], ds["task_accuracy"].values)
    on_disk = xr.open_dataset(tmp_path / "results.nc").load()
    np.testing.assert_allclose(on_disk["task_accuracy"].values, ds["task_accuracy"].values)
    assert on_disk.attrs["status"] == "complete"


def test_fine_tuning_forgets_a_permuted_stream(digits):
    stream = build_stream(StreamConfig(name="permuted", n_tasks=3, max_train_per_task=320, max_test_per_task=200),
                          digits, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = run_stream(make_learner("backprop", optimizer={"lr": 0.01}), "mlp_small", stream,
                        loop=LoopConfig(n_epochs=3, progress=False, count_flops=False), seed=0).results
    matrix = ds["task_accuracy"].values
    assert matrix[0, 0] > 0.85 and matrix[0, 1] < 0.5       # learned task 0; task 1 not yet
    assert float(ds["bwt"]) < -0.1                           # plain sequential training forgets


def test_app_composes_stream_configs():
    from hydra import compose, initialize_config_dir
    from experiments.app import CONFIG_DIR
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        for name in ("continual_pmnist_quick", "continual_pmnist", "continual_split_mnist_quick",
                     "continual_split_mnist"):
            cfg = compose("config", overrides=[f"experiment={name}"])
            stream_config(dict(cfg.stream))
        cfg = compose("config", overrides=["+stream=split_mnist", "data=mnist"])
        assert stream_config(dict(cfg.stream)).name == "split_mnist"


def test_every_loop_feature_works_in_a_stream(digits, tmp_path):
    """A stream runs through the fit loop's engine: observers, per-block metrics, early stopping
    per task and the time budget all apply."""
    from experiments.fit import EarlyStopping
    stream = build_stream(StreamConfig(name="split", setting="domain", n_tasks=3, max_train_per_task=120,
                                       max_test_per_task=60), digits, seed=0)
    loop = LoopConfig(n_epochs=8, progress=False, alignment=True,
                      early_stopping=EarlyStopping(split="val", patience=1, min_delta=0.5))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = run_stream(make_learner("mono_forward"), "mlp_small", stream, loop=loop, seed=0, out_dir=tmp_path).results
    # min_delta 0.5 is never met: each task stops after its first two epochs, and its matrix row is
    # measured after end_task
    assert ds.sizes["epoch"] == 6 and list(ds["trained_task"].values) == [0, 1, 2]
    assert np.isfinite(ds["task_accuracy"].values).all()
    assert np.isfinite(ds["block_align_cosine"].values).all()            # the alignment observer
    assert np.isfinite(ds["block_eval_accuracy"].values).all()           # the learner's per-block metrics
    budget = LoopConfig(n_epochs=50, progress=False, time_budget_s=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        short = run_stream(make_learner("backprop"), "mlp_small", stream, loop=budget, seed=0).results
    assert short.attrs["stopped_by"] == "time_budget" and short.sizes["epoch"] < 150
