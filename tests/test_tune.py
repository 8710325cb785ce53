"""`altlearn tune`: the same budget for every learner, chosen on validation, stored and resumable."""
import numpy as np
import pytest
import yaml

from analysis import collect
from experiments.recording import read_results
from learners import available_learners, get_learner_class
from learners.search import Choice, LogUniform, Uniform, check_search_space
from tests.test_cli import altlearn

pytest.importorskip("optuna")

TUNE = ["data=blobs", "data.options.n_train=200", "data.options.n_test=100", "data.val_size=60",
        "loop.n_epochs=2", "loop.progress=false", "tuning.learners=[backprop,mono_forward]", "tuning.final_seeds=[0,1]"]


def test_two_learners_tuned_with_one_budget_then_resumed_and_extended(tmp_path):
    folder = tmp_path / "tune"
    out = altlearn("tune", *TUNE, "tuning.budget=3", f"tuning.dir={folder}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = yaml.safe_load((folder / "tuning.yaml").read_text())
    assert set(summary["learners"]) == {"backprop", "mono_forward"}
    first = {name: study["trials"] for name, study in summary["learners"].items()}
    for name, study in summary["learners"].items():
        assert study["n_trials"] == 3 and study["budget"] == 3
        assert study["best_value"] == max(t["value"] for t in study["trials"])
        # trials never saw the test split; the final runs did, at the chosen setting
        for trial in folder.glob(f"trials/{name}/*/results.nc"):
            assert np.isnan(read_results(trial)["accuracy"].sel(split="test").values).all()
        for seed in (0, 1):
            final = read_results(folder / "final" / name / f"seed={seed}" / "results.nc")
            assert np.isfinite(final["accuracy"].sel(split="test").values).all()
            config = yaml.safe_load(final.attrs["config"])
            assert config["tuning"]["budget"] == 3 and config["tuning"]["chosen"]
            lr = config["tuning"]["chosen"]["optimizer"]["lr"]
            assert final.attrs["learner_hyperparameters"].count(repr(lr)[:8]) == 1
    report = (folder / "summary.md").read_text()
    assert "## Tuning" in report and "| backprop | 3 |" in report and (folder / "tuning.png").is_file()
    assert collect(folder / "final").sizes["seed"] == 2

    # a trial cut off by a killed process stays "running" in the storage: it must not use up the budget
    import optuna
    optuna.load_study(study_name="backprop", storage=f"sqlite:///{folder / 'tuning.db'}").ask()

    # the same command with a larger budget: the stored studies resume, three trials are not rerun
    out = altlearn("tune", *TUNE, "tuning.budget=5", f"tuning.dir={folder}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = yaml.safe_load((folder / "tuning.yaml").read_text())
    for name, study in summary["learners"].items():
        assert study["n_trials"] == 5
        assert study["trials"][:3] == first[name]
        settings = [tuple(sorted(t["params"].items())) for t in study["trials"]]
        assert len(set(settings)) == 5                 # a resumed sampler does not repeat the first trials
    assert out.stderr.count("trial 4/5") == 2 and "trial 1/5" not in out.stderr

    # a learner added by a later command joins the folder; the others and their commands stay recorded
    out = altlearn("tune", *TUNE[:-2], "tuning.learners=[lls]", "tuning.final_seeds=[0]", "tuning.budget=2",
                   f"tuning.dir={folder}", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    summary = yaml.safe_load((folder / "tuning.yaml").read_text())
    assert summary["settings"]["learners"] == ["backprop", "mono_forward", "lls"]
    assert summary["learners"]["backprop"]["n_trials"] == 5 and summary["learners"]["lls"]["n_trials"] == 2
    assert "tuning.learners=[backprop,mono_forward]" in summary["learners"]["backprop"]["overrides"]
    assert "tuning.learners=[lls]" in summary["learners"]["lls"]["overrides"]
    assert "tuning.learners=[backprop,mono_forward]" in summary["overrides"]      # the folder's first command


def test_tuning_needs_a_validation_split_and_refuses_learner_overrides(tmp_path):
    out = altlearn("tune", "data=blobs", "data.val_size=0", "tuning.learners=[backprop]", f"tuning.dir={tmp_path}/t",
                  cwd=tmp_path)
    assert out.returncode == 2 and "data.val_size" in out.stderr
    out = altlearn("tune", "learner=backprop", cwd=tmp_path)
    assert out.returncode == 2 and "tuning.learners" in out.stderr


@pytest.mark.parametrize("name", available_learners())
def test_every_learner_declares_a_valid_search_space(name):
    cls = get_learner_class(name)
    assert cls.search_space, f"{name} declares no search_space"
    check_search_space(cls)


def test_a_search_space_key_must_be_a_hyperparameter():
    from core.errors import ConfigError
    cls = get_learner_class("backprop")

    class Wrong(cls):
        search_space = {"optimizer.nope": LogUniform(1e-4, 1e-2)}

    with pytest.raises(ConfigError, match="optimizer.nope"):
        check_search_space(Wrong)

    class Empty(cls):
        search_space = {"optimizer.schedule": Choice(("constant",)), "optimizer.lr": Uniform(1.0, 0.1)}

    with pytest.raises(ConfigError):
        check_search_space(Empty)
