"""The classroom's server side without a browser: the engine's stop signal and snapshot, the
training callback and the controller (streaming, pause, reset, double start, refusals, divergence,
independent sessions, saving), every registered rule through the controller, and the page's
widgets (with the ``classroom`` extra)."""
import threading
import time

import numpy as np
import pytest

from experiments.callbacks import Callback, StopTraining
from experiments.classroom.board import ENDED, IDLE, PAUSED
from experiments.classroom.lesson import Lesson, RuleRun
from experiments.classroom.settings import Settings, knobs, learner_params, learners
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from experiments.health import FINISHED
from experiments.recording import read_results
from learners import available_learners, get_learner_class, make_learner

WAIT_S = 120


def until(condition, what: str, timeout: float = WAIT_S):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def epochs(run: RuleRun) -> int:
    return len(run.board.view().curves["epoch"])


@pytest.fixture
def moons():
    return load_dataset("moons", seed=0)


@pytest.fixture
def lesson():
    lesson = Lesson()
    yield lesson
    lesson.reset()


# ---------------------------------------------------------------- the engine's hooks
class StopAfter(Callback):
    def __init__(self, epochs):
        self.epochs, self.snapshots = epochs, []

    def on_epoch_end(self, run, record):
        self.snapshots.append(run.snapshot())
        if record["epoch"] == self.epochs:
            raise StopTraining("enough")


def test_a_callback_stops_the_engine_cleanly_keeping_what_was_recorded(moons, tmp_path):
    stop = StopAfter(2)
    result = fit(make_learner("backprop"), "mlp_small", moons, loop=LoopConfig(n_epochs=10, progress=False),
                 callbacks=[stop], out_dir=tmp_path)
    assert result.run.status == "stopped" and len(result.run.records) == 2
    assert result.results.attrs["status"] == "stopped" and result.results.attrs["stop_reason"] == "enough"
    written = read_results(tmp_path / "results.nc")
    assert written.attrs["status"] == "stopped" and written.sizes["epoch"] == 2
    # the snapshot mid-run is the engine's own dataset of the epochs so far
    assert [s.sizes["epoch"] for s in stop.snapshots] == [1, 2]
    assert stop.snapshots[0].attrs["status"] == "running"
    np.testing.assert_array_equal(stop.snapshots[1]["accuracy"].values, result.results["accuracy"].values)


# ---------------------------------------------------------------- knobs
@pytest.mark.parametrize("name", learners())
def test_every_knob_is_a_hyperparameter_with_its_classroom_default(name):
    found = knobs(name)
    assert [k.path for k in found] == list(get_learner_class(name).search_space)
    for knob in found:
        if knob.kind in ("log", "choice"):
            assert knob.default in knob.options
        else:
            assert knob.low <= knob.default <= knob.high
    values = {k.path: (k.options[-1] if k.options else k.high) for k in found}
    learner = make_learner(name, **learner_params(name, values))
    for path, value in values.items():
        node = learner
        for part in path.split("."):
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        assert node == value


def test_a_knob_below_a_dict_hyperparameter_keeps_its_siblings():
    params = learner_params("hebbian_projection", {"base_params.optimizer.lr": 0.05})
    default = get_learner_class("hebbian_projection")().base_params
    assert params["base_params"]["optimizer"] == {**default["optimizer"], "lr": 0.05}


def test_the_page_offers_every_registered_classification_rule():
    assert learners() == [n for n in available_learners() if "classification" in get_learner_class(n).tags.tasks]


# ---------------------------------------------------------------- the controller
def test_epochs_stream_to_the_board_and_the_numbers_are_the_engines(moons):
    run = RuleRun()
    settings = Settings(learner="backprop", epochs=6, width=16)
    assert run.start(settings, moons)
    assert run.wait(WAIT_S)
    view = run.board.view()
    assert view.status == "complete" and view.epoch == 6 and len(view.curves["epoch"]) == 6
    assert all(0 <= a <= 1 for a in view.curves["val_accuracy"])
    assert view.picture.kind == "plane" and view.picture.classes.shape == (64, 64) and view.picture.epoch == 6
    assert view.points[0].shape[1] == 2
    # the callback only observes: the same settings without it reach the same numbers
    plain = fit(make_learner("backprop", **learner_params("backprop", {})), settings.network(), moons,
                loop=LoopConfig(n_epochs=6, batch_size=32, progress=False), seed=0)
    assert view.curves["val_accuracy"] == [r["accuracy"]["val"] for r in plain.run.records]


def test_digits_get_a_confusion_matrix():
    run = RuleRun()
    run.start(Settings(learner="backprop", dataset="digits", epochs=1, width=16, depth=1))
    assert run.wait(WAIT_S)
    picture = run.board.view().picture
    assert picture.kind == "confusion" and picture.confusion.shape == (10, 10)
    assert picture.confusion.sum() == len(load_dataset("digits", seed=0).y_val)


def test_per_block_metrics_reach_the_board(moons):
    run = RuleRun()
    run.start(Settings(learner="forward_forward", epochs=2, width=16), moons)
    assert run.wait(WAIT_S)
    blocks = run.board.view().blocks
    assert "goodness_accuracy (validation)" in blocks
    assert all(len(per_epoch) == 2 for per_epoch in blocks["goodness_accuracy (validation)"])


def test_pause_holds_the_training_and_resume_goes_on(moons):
    run = RuleRun()
    run.start(Settings(learner="backprop", epochs=5000, width=8), moons)
    until(lambda: epochs(run) >= 2, "two epochs")
    run.pause()
    until(lambda: run.status == PAUSED, "the pause")
    held = run.board.view()
    time.sleep(0.4)
    still = run.board.view()
    assert (still.epoch, still.step) == (held.epoch, held.step) and run.active
    run.resume()
    until(lambda: run.board.view().step > held.step, "training to go on")
    run.reset()


def test_reset_stops_the_training_thread_and_clears_the_board(moons):
    run = RuleRun()
    run.start(Settings(learner="backprop", epochs=5000, width=8), moons)
    until(lambda: epochs(run) >= 1, "an epoch")
    run.pause()
    run.reset()       # also from a pause: the waiting thread wakes up to stop
    assert not run.active
    view = run.board.view()
    assert view.status == IDLE and view.curves["epoch"] == [] and view.picture is None
    assert not [t for t in threading.enumerate() if t.name.startswith("classroom-") and t.is_alive()]


def test_closing_stops_the_training(lesson):
    lesson.start(Settings(learner="backprop", epochs=5000, width=8))
    until(lambda: epochs(lesson.runs["A"]) >= 1, "an epoch")
    lesson.close()
    assert lesson.wait(30) and not lesson.running


def test_a_second_start_starts_nothing(lesson):
    settings = Settings(learner="backprop", epochs=5000, width=8)
    assert lesson.start(settings)
    assert not lesson.start(settings)
    assert not lesson.runs["A"].start(settings)
    until(lambda: epochs(lesson.runs["A"]) >= 1, "an epoch")
    threads = [t for t in threading.enumerate() if t.name.startswith("classroom-A")]
    assert len(threads) == 1
    # a second start on a paused lesson resumes it
    lesson.pause()
    until(lambda: lesson.paused, "the pause")
    assert not lesson.start(settings)
    until(lambda: lesson.runs["A"].status == "running", "the resume")


def test_a_refusal_is_one_line_on_the_board_and_the_next_start_works(moons):
    run = RuleRun()
    run.start(Settings(learner="forward_forward", knobs={"label_mode": "replace"}), moons)
    assert run.wait(WAIT_S)
    view = run.board.view()
    assert view.status == "refused" and "label_mode" in view.message and "\n" not in view.message
    assert run.start(Settings(learner="backprop", epochs=1), moons) and run.wait(WAIT_S)
    assert run.status == "complete"


def test_a_diverging_run_is_flagged(moons):
    run = RuleRun()
    run.start(Settings(learner="backprop", knobs={"optimizer.name": "sgd", "optimizer.lr": 1e4}, epochs=5), moons)
    assert run.wait(WAIT_S)
    view = run.board.view()
    assert view.status == "diverged" and "diverged" in view.message


@pytest.mark.filterwarnings("ignore::experiments.health.RunHealthWarning")
def test_a_run_that_learns_nothing_carries_the_engines_health_flag(moons):
    run = RuleRun()
    run.start(Settings(learner="backprop", knobs={"optimizer.lr": 1e-9}, epochs=3, width=4, depth=1), moons)
    assert run.wait(WAIT_S)
    view = run.board.view()
    assert view.status in ("chance", "diverging") and view.message


def test_compare_trains_two_rules_on_the_same_data_and_seed(lesson):
    assert lesson.start(Settings(learner="backprop", dataset="xor", epochs=3, seed=4, width=16), "mono_forward")
    assert lesson.wait(WAIT_S)
    a, b = (lesson.runs[k].board.view() for k in "AB")
    assert (a.learner, b.learner) == ("backprop", "mono_forward")
    assert a.dataset == b.dataset == "xor" and a.status == b.status == "complete"
    np.testing.assert_array_equal(a.points[0], b.points[0])
    assert lesson.runs["B"].results().coords["seed"].item() == 4


def test_two_sessions_do_not_disturb_each_other():
    """Two tabs training at once reach exactly what each reaches alone, and pausing one leaves the other."""
    first = Settings(learner="backprop", dataset="moons", epochs=4, width=16, seed=1)
    second = Settings(learner="feedback_alignment", dataset="circles", epochs=4, width=16, seed=2)
    alone = []
    for settings in (first, second):
        run = RuleRun()
        run.start(settings)
        assert run.wait(WAIT_S)
        alone.append(run.board.view().curves["val_accuracy"])
    tabs = [Lesson(), Lesson()]
    tabs[0].start(first)
    tabs[1].start(second)
    until(lambda: tabs[0].runs["A"].status == "running", "the first tab's start")
    tabs[0].pause()
    assert tabs[1].wait(WAIT_S)
    assert tabs[0].runs["A"].status == PAUSED and tabs[1].runs["A"].status == "complete"
    tabs[0].resume()
    assert tabs[0].wait(WAIT_S)
    assert [t.runs["A"].board.view().curves["val_accuracy"] for t in tabs] == alone


def test_the_run_saves_as_results_nc_mid_way_and_at_the_end(moons, tmp_path):
    run = RuleRun()
    with pytest.raises(Exception, match="nothing to save"):
        run.save(tmp_path / "none.nc")
    run.start(Settings(learner="backprop", epochs=5000, width=8), moons)
    until(lambda: epochs(run) >= 2, "two epochs")
    run.pause()
    until(lambda: run.status == PAUSED, "the pause")
    mid = read_results(run.save(tmp_path / "mid.nc"))
    assert mid.attrs["status"] == "running" and mid.sizes["epoch"] >= 2
    assert mid.coords["learner"].item() == "backprop" and "learner_hyperparameters" in mid.attrs
    run.reset()
    run.start(Settings(learner="backprop", epochs=2, width=8), moons)
    assert run.wait(WAIT_S)
    end = read_results(run.save(tmp_path / "end.nc"))
    assert end.attrs["status"] == "complete" and end.sizes["epoch"] == 2


@pytest.mark.parametrize("name", learners())
def test_every_rule_trains_on_moons_through_the_controller(name, moons):
    run = RuleRun()
    run.start(Settings(learner=name, epochs=2, width=16, depth=2), moons)
    assert run.wait(WAIT_S), f"{name} did not finish"
    view = run.board.view()
    # a refusal is fine as long as it is the rule's one-line reason; anything else must train
    assert view.status in FINISHED + ("refused",), (view.status, view.message)
    if view.status == "refused":
        assert view.message and "\n" not in view.message
    else:
        assert view.epoch == 2 and view.picture is not None and view.picture.epoch == 2


# ---------------------------------------------------------------- the page's widgets (classroom extra)
@pytest.mark.slow
def test_the_page_shows_a_refusal_and_keeps_working():
    pytest.importorskip("panel", reason="the classroom extra is not installed")
    from experiments.classroom.page import ClassroomPage
    page = ClassroomPage()
    page.layout()
    assert list(page.rule_a.rule.options) == learners()
    page.rule_a.rule.value = "forward_forward"
    assert [w.label for w in page.rule_a.widgets.values()] == list(get_learner_class("forward_forward").search_space)
    page.lesson.start(Settings(learner="forward_forward", knobs={"label_mode": "replace"}))
    assert page.lesson.wait(WAIT_S)
    page.refresh()
    column = page.columns["A"]
    assert column.alert.visible and "refused" in column.alert.object and "label_mode" in column.alert.object
    assert not page.start.disabled
    page.rule_a.rule.value = "backprop"
    page.epochs.value = 2
    page.on_start()
    assert page.lesson.wait(WAIT_S)
    page.refresh()
    assert not column.alert.visible or column.alert.alert_type == "success"
    assert len(column.view.curves.data["epoch"]) == 2
    assert column.run.status in ENDED


# ---------------------------------------------------------------- the command
def test_the_command_binds_this_machine_by_default(capsys):
    from experiments.classroom import main
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--port" in out and "127.0.0.1" in out and "this machine only" in out


def test_the_command_names_the_extra_when_panel_is_missing(monkeypatch, capsys):
    import importlib.util

    from experiments.classroom import main
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "panel" else real(name, *a))
    assert main([]) == 2
    assert ".[classroom]" in capsys.readouterr().err
