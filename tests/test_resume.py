"""The resume contract: a run killed after an epoch and resumed from its checkpoint reaches the
numbers it would have reached unkilled, for every registered learner and for a continual stream."""
import warnings

import numpy as np
import pytest

from experiments.callbacks import Callback
from experiments.continual import StreamConfig, build_stream, run_stream
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import available_learners, get_learner_class, make_learner

COMPARED = ("accuracy", "loss", "train_loss")


class Kill(Callback):
    """Stops the process (as a kill would) at the end of ``epoch``, before its checkpoint is written."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_epoch_end(self, run, record):
        if record["epoch"] == self.epoch:
            raise KeyboardInterrupt


@pytest.fixture(scope="module")
def blobs():
    return load_dataset("blobs", n_train=160, n_test=60, val_size=40)


def _same(a, b):
    for var in COMPARED:
        if var in a:
            np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)
    for var in a.data_vars:
        if var.startswith("block_") and var in b:
            np.testing.assert_array_equal(a[var].values, b[var].values, err_msg=var)


@pytest.mark.parametrize("name", available_learners())
def test_a_killed_run_resumes_to_the_numbers_it_would_have_reached(name, blobs, tmp_path):
    params = get_learner_class(name).contract_params
    loop = LoopConfig(n_epochs=3, batch_size=32, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = fit(make_learner(name, **params), "mlp_small", blobs, loop=loop, seed=0).results
        with pytest.raises(KeyboardInterrupt):
            fit(make_learner(name, **params), "mlp_small", blobs, loop=loop, seed=0, out_dir=tmp_path,
                callbacks=[Kill(epoch=2)])
        assert (tmp_path / "checkpoint.pt").is_file()
        resumed = fit(make_learner(name, **params), "mlp_small", blobs, loop=loop, seed=0, out_dir=tmp_path,
                      resume=True).results
    assert resumed.attrs["resumed_at_epoch"] == 2 and resumed.sizes["epoch"] == 3
    assert resumed.attrs["status"] == whole.attrs["status"]
    _same(whole, resumed)


def test_a_finished_run_resumed_trains_nothing_more(blobs, tmp_path):
    loop = LoopConfig(n_epochs=2, progress=False)
    first = fit(make_learner("backprop"), "mlp_small", blobs, loop=loop, seed=0, out_dir=tmp_path).results
    again = fit(make_learner("backprop"), "mlp_small", blobs, loop=loop, seed=0, out_dir=tmp_path, resume=True)
    assert again.results.sizes["epoch"] == 2 and again.run.step == 2 * 4    # 120 training samples, batches of 32
    _same(first, again.results)


def test_a_killed_stream_resumes_mid_task_and_between_tasks(tmp_path):
    digits = load_dataset("digits", seed=0)
    stream = build_stream(StreamConfig(name="split", setting="task", n_tasks=3, max_train_per_task=96,
                                       max_test_per_task=60), digits, seed=0)
    loop = LoopConfig(n_epochs=2, progress=False)
    learner = make_learner("hebbian_projection")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = run_stream(learner, "mlp_small", stream, loop=loop, seed=0).results
        # killed in epoch 3: the checkpoint holds task 0 done (resumed at the start of task 1); then
        # killed in epoch 6: the checkpoint holds task 2 half done (resumed mid task)
        folder = tmp_path / "run"
        for kill in (3, 6):
            with pytest.raises(KeyboardInterrupt):
                run_stream(learner, "mlp_small", stream, loop=loop, seed=0, out_dir=folder, callbacks=[Kill(kill)],
                           resume=True)
        resumed = run_stream(learner, "mlp_small", stream, loop=loop, seed=0, out_dir=folder, resume=True).results
    assert resumed.attrs["resumed_at_epoch"] == 6
    np.testing.assert_array_equal(whole["task_accuracy"].values, resumed["task_accuracy"].values)
    _same(whole, resumed)


def test_the_app_resumes_a_run_folder(tmp_path):
    from experiments.recording import read_results
    from tests.test_cli import altlearn
    args = ("learner=backprop", "data=blobs", "data.options.n_train=120", "data.options.n_test=40", "loop.n_epochs=2",
            "loop.progress=false", f"hydra.run.dir={tmp_path}/run")
    assert altlearn(*args, cwd=tmp_path).returncode == 0
    first = read_results(tmp_path / "run" / "results.nc")
    out = altlearn(*args, "resume=true", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    again = read_results(tmp_path / "run" / "results.nc")
    assert again.attrs["resumed_at_epoch"] == 3       # the checkpoint held both epochs: nothing left to train
    _same(first, again)
