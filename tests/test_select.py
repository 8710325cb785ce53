"""Choosing a setting on validation (analysis.select): grouping by config keys, ranking, errors."""
import pytest
import yaml

from analysis.select import main, selection_table
from core.errors import DataError
from experiments.recording import results_dataset, write_results


def _run(root, lr, seed, val, test, status="complete"):
    records = [{"epoch": e, "accuracy": {"train": 0.5, "val": v, "test": t}}
               for e, (v, t) in enumerate([(0.1, 0.1), (val, test)], start=1)]
    config = yaml.safe_dump({"learner": {"name": "backprop", "optimizer": {"lr": lr}}, "seed": seed})
    ds = results_dataset(records, coords={"learner": "backprop", "seed": seed},
                         attrs={"config": config, "status": status})
    write_results(ds, root / f"lr={lr}" / f"seed={seed}" / "results.nc")


@pytest.fixture
def sweep(tmp_path):
    # lr 0.1 is best on validation, lr 0.01 best on test: the choice must follow validation
    for seed, (a, b, c) in enumerate([(0.90, 0.80, 0.70), (0.92, 0.82, 0.72)]):
        _run(tmp_path, 0.1, seed, a, 0.85)
        _run(tmp_path, 0.01, seed, b, 0.95)
        _run(tmp_path, 0.001, seed, c, 0.60)
    _run(tmp_path, 1.0, 0, 0.99, 0.99, status="failed: NaN")          # incomplete runs do not count
    return tmp_path


def test_best_setting_is_chosen_on_validation_from_final_epochs(sweep):
    table, best = selection_table(sweep, ["learner.optimizer.lr"])
    assert best == (0.1,)
    rows = [line for line in table.splitlines() if line.startswith("| 0")]
    assert [r.split(" | ")[0] for r in rows] == ["| 0.1", "| 0.01", "| 0.001"]
    assert "0.9100" in rows[0] and "0.8500" in rows[0]                # val mean of 0.90, 0.92; test beside
    assert "| 2 |" in rows[0]


def test_unknown_key_and_empty_folder_name_the_problem(sweep, tmp_path_factory):
    with pytest.raises(DataError, match="learner.optimizer.momentum"):
        selection_table(sweep, ["learner.optimizer.momentum"])
    with pytest.raises(DataError, match="no results.nc"):
        selection_table(tmp_path_factory.mktemp("empty"), ["learner.lr"])


def test_cli_writes_the_table(sweep, tmp_path, capsys):
    out = tmp_path / "select.md"
    assert main([str(sweep), "learner.optimizer.lr", "--out", str(out)]) == 0
    assert "Best: {'learner.optimizer.lr': 0.1}" in out.read_text()
    assert main([str(sweep / "nowhere"), "learner.lr"]) == 2
    assert "error" in capsys.readouterr().err
