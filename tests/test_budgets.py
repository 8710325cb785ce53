"""Budgets (epochs, training time, training FLOPs), early stopping that keeps the best epoch, and
the flags for runs that did not learn."""
import dataclasses
import warnings

import numpy as np
import pytest
import torch

from experiments.datasets import load_dataset
from core.errors import ConfigError
from experiments.fit import EarlyStopping, LoopConfig, budget_description, chance_level, fit
from experiments.health import RunHealthWarning, health_check
from learners import Learner, Tags, TorchState, make_learner


@pytest.fixture(scope="module")
def blobs():
    return load_dataset("blobs", n_train=600, n_test=100, val_size=100)


def test_time_budget_stops_mid_epoch_and_evaluates_what_was_reached(blobs):
    loop = LoopConfig(n_epochs=1000, batch_size=4, time_budget_s=0.3, progress=False)
    res = fit(make_learner("backprop"), "mlp_small", blobs, loop=loop, seed=0).results
    trained = float(res["wall_time"].sum())
    assert 0.3 <= trained < 0.3 + 0.2            # stopped within a few steps of the budget
    assert res.sizes["epoch"] < 1000 and res.attrs["stopped_by"] == "time_budget"
    assert np.isfinite(res["accuracy"].sel(split="test").values[-1])   # the epoch it stopped in was evaluated
    assert "0.3 s of training" in res.attrs["budget"]


def test_flops_budget_stops_at_the_budget(blobs):
    free = fit(make_learner("backprop"), "mlp_small", blobs, loop=LoopConfig(n_epochs=1, progress=False), seed=0)
    per_epoch = float(free.results["flops"].values[0])
    loop = LoopConfig(n_epochs=50, flops_budget=2.5 * per_epoch, progress=False)
    res = fit(make_learner("backprop"), "mlp_small", blobs, loop=loop, seed=0).results
    assert res.attrs["stopped_by"] == "flops_budget" and res.sizes["epoch"] == 3
    spent = float(res["flops"].sum())
    assert 2.5 * per_epoch <= spent < 2.5 * per_epoch + per_epoch / 10   # at most one batch past it


def test_early_stopping_reports_the_best_epoch(tmp_path, blobs):
    from analysis import collect
    from analysis.plots import final_epoch
    loop = LoopConfig(n_epochs=40, progress=False, early_stopping=EarlyStopping(patience=3, split="val"))
    res = fit(make_learner("backprop", optimizer={"name": "adam", "lr": 0.05}), "mlp_small", blobs, loop=loop,
              seed=0, out_dir=tmp_path / "run").results
    val = res["accuracy"].sel(split="val").values
    best = int(res.attrs["best_epoch"])
    assert val[best - 1] == val.max() and best < res.sizes["epoch"]
    ds = collect(tmp_path)
    reported = float(final_epoch(ds["accuracy"].sel(split="test")))
    assert reported == float(res["accuracy"].sel(split="test").values[best - 1])


@dataclasses.dataclass(frozen=True, kw_only=True)
class Constant(Learner):
    """A rule that learns nothing: it always answers class 0."""

    name = "constant"
    tags = Tags(locality="global", crosses_blocks=False)

    def init(self, network, data_info, seed):
        return TorchState(network=network)

    def update(self, state, batch):
        return state, {"loss": 1.0}

    def predict(self, state, x):
        scores = torch.zeros(len(x), 3)
        scores[:, 0] = 1.0
        return scores


def test_a_run_at_chance_is_flagged_and_warns(blobs):
    with pytest.warns(RunHealthWarning, match="within 2 points of chance"):
        res = fit(Constant(), "mlp_small", blobs, loop=LoopConfig(n_epochs=1, progress=False), seed=3).results
    assert res.attrs["status"] == "chance" and "chance" in res.attrs["status_reason"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", RunHealthWarning)
        ok = fit(make_learner("backprop"), "mlp_small", blobs, loop=LoopConfig(n_epochs=2, progress=False), seed=0)
    assert ok.results.attrs["status"] == "complete"


def test_health_check_by_hand():
    def rec(loss, acc):
        return {"train_loss": loss, "accuracy": {"val": acc}}
    assert health_check([rec(1.0, 0.5), rec(0.8, 0.6), rec(0.7, 0.7)], chance=0.1) == ("complete", None)
    assert health_check([rec(1.0, 0.5), rec(0.8, 0.11)], chance=0.1)[0] == "chance"
    rising = [rec(1.0, 0.5), rec(0.8, 0.6), rec(0.9, 0.55), rec(1.0, 0.5)]
    assert health_check(rising, chance=0.1)[0] == "diverging"
    assert health_check(rising, chance=0.1, trend=False)[0] == "complete"
    holds = [rec(1.0, 0.5), rec(0.8, 0.6), rec(0.9, 0.6), rec(1.0, 0.7)]     # loss wanders, accuracy climbs
    assert health_check(holds, chance=0.1)[0] == "complete"
    noise = [rec(1.0, 0.5), rec(0.8, 0.6), rec(0.801, 0.6), rec(0.802, 0.6)]   # rose, but by less than 5%
    assert health_check(noise, chance=0.1)[0] == "complete"
    best_then_worse = [rec(1.0, 0.9), rec(0.9, 0.105)]
    assert health_check(best_then_worse, chance=0.1, best_epoch=1)[0] == "complete"


def test_chance_is_the_most_frequent_class_of_the_judged_split(blobs):
    y = blobs.y_val
    assert chance_level(blobs) == pytest.approx(np.bincount(y).max() / len(y))


def test_budget_description_and_bad_budgets():
    assert budget_description(LoopConfig(n_epochs=5, batch_size=64)) == "5 epochs of batch 64"
    text = budget_description(LoopConfig(n_epochs=5, time_budget_s=60, early_stopping={"patience": 2}))
    assert text.startswith("5 epochs of batch 32 at most; 60 s of training, early stopping on val accuracy")
    with pytest.raises(ConfigError, match="loop.time_budget_s"):
        LoopConfig(time_budget_s=-1)


def test_the_test_split_is_not_evaluated_when_eval_test_is_off(blobs):
    res = fit(make_learner("backprop"), "mlp_small", blobs, loop=LoopConfig(n_epochs=1, progress=False,
                                                                          eval_test=False), seed=0).results
    assert np.isnan(res["accuracy"].sel(split="test").values).all()
    assert np.isfinite(res["accuracy"].sel(split="val").values).all()
