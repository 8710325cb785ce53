"""Classroom demos: each writes its figure, and the numbers behind it are sane (quick budgets)."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from experiments.demos import DEMOS, get_demo, main
from core.errors import ConfigError
from learners import available_learners, get_learner_class

NOTEBOOKS = Path(__file__).resolve().parents[1] / "experiments" / "demos" / "notebooks"


def _run(name, tmp_path):
    numbers = get_demo(name).run(tmp_path, quick=True, seed=0)
    figure = Path(numbers["figure"])
    assert figure.is_file() and figure.stat().st_size > 5_000
    assert json.loads((tmp_path / f"{name}.json").read_text())["figure"] == str(figure)
    return numbers


def test_dispatch_lists_demos_and_names_unknown_ones(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    assert all(name in out for name in DEMOS)
    with pytest.raises(ConfigError, match="unknown demo 'nope'; known demos: boundaries"):
        get_demo("nope")
    assert main(["nope"]) == 2


def test_swarm_converges(tmp_path):
    numbers = _run("swarm", tmp_path)
    best = np.array(numbers["best_loss"])
    assert np.all(np.diff(best) <= 0)                    # the swarm's best never gets worse
    assert best[-1] < best[0] and best[-1] < np.log(2)   # better than the untrained neuron (w = 0)
    first, last = numbers["spread_first_last"]
    assert last < first / 3                              # the particles gather


@pytest.mark.slow
def test_locality_matches_the_tags(tmp_path):
    numbers = _run("locality", tmp_path)
    learners = numbers["learners"]
    assert set(learners) | set(numbers["failed"]) == {
        n for n in available_learners() if "classification" in get_learner_class(n).tags.tasks}
    assert learners["backprop"]["block0_listens_to_last_block"]
    assert all(c > 0 for c in learners["backprop"]["changed"])
    for name, r in learners.items():
        if not r["crosses_blocks"]:                      # a blockwise rule ignores downstream weights
            assert not r["block0_listens_to_last_block"], name


@pytest.mark.slow
def test_boundaries_cover_every_learner(tmp_path):
    numbers = _run("boundaries", tmp_path)
    for dataset in ("moons", "spirals"):
        accs = numbers["accuracy"][dataset]
        assert set(accs) | {k.split("/")[0] for k in numbers["failed"] if k.endswith(dataset)} == \
            set(numbers["learners"])
        assert all(0 <= a <= 1 for a in accs.values())
    assert numbers["accuracy"]["moons"]["backprop"] > 0.7


@pytest.mark.slow
def test_forward_forward_goodness(tmp_path):
    if "forward_forward" not in available_learners():
        pytest.skip("forward_forward is not registered")
    numbers = _run("forward_forward", tmp_path)
    final = numbers["final_goodness"]
    assert len(final) == 3
    # after two quick epochs the first block already separates positives from negatives
    assert final["0"]["positive"] > final["0"]["negative"]
    assert numbers["test_accuracy"] > 0.3


@pytest.mark.slow
def test_noprop_chain_moves_noise_to_the_class(tmp_path):
    if "noprop_dt" not in available_learners():
        pytest.skip("noprop_dt is not registered")
    numbers = _run("noprop", tmp_path)
    distance = numbers["distance"]
    assert len(distance) == 6 and distance[-1] < distance[0]
    assert numbers["nearest_accuracy"][-1] > numbers["nearest_accuracy"][0]


@pytest.mark.slow
def test_forgetting_matrices(tmp_path):
    numbers = _run("forgetting", tmp_path)
    plain = np.array(numbers["backprop (SGD)"]["matrix"])
    assert plain.shape == (3, 3) and np.all((0 <= plain) & (plain <= 1))
    assert np.all(np.diag(plain) > 0.5)                  # each task is learned when it is trained
    if "hebbian_projection" in numbers:                  # the point of the demo: less forgetting
        assert numbers["hebbian_projection"]["bwt"] > numbers["backprop (SGD)"]["bwt"] + 0.1


def test_every_demo_is_in_a_notebook():
    text = "".join(p.read_text() for p in NOTEBOOKS.glob("*.ipynb"))
    assert all(f"from experiments.demos import {name}" in text for name in DEMOS)


@pytest.mark.slow
@pytest.mark.parametrize("notebook", sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb")))
def test_notebook_runs(notebook, tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    monkeypatch.setenv("ALTLEARN_DEMO_QUICK", "1")
    nb = nbformat.read(NOTEBOOKS / f"{notebook}.ipynb", as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert list((tmp_path / "demo_output").glob("*.png"))
    assert os.environ["ALTLEARN_DEMO_QUICK"] == "1"


@pytest.mark.slow
def test_predictive_coding_relaxation_lowers_the_energy_and_moves_towards_the_label(tmp_path):
    if "predictive_coding" not in available_learners():
        pytest.skip("predictive_coding is not registered")
    numbers = _run("predictive_coding", tmp_path)
    total = numbers["total_energy"]
    assert total[-1] < total[0]                          # the nodes settle into a lower energy
    distance = numbers["distance_to_label"]
    assert distance[-1] < distance[0]                    # the top prediction moves towards the clamp
