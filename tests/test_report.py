"""The comparison report: table, HTML, every figure the data allows, partial sweeps reported."""
import numpy as np
import pytest

from analysis import collect
from analysis.plots import learner_color, pareto_front
from analysis.report import markdown_to_html, summary_rows, variants_as_learners, write_report
from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners import available_learners, get_learner_class, make_learner


def _local_learner():
    names = [n for n in available_learners() if get_learner_class(n).tags.locality == "blockwise"
             and not n.startswith("noprop")]
    return names[0] if names else None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = load_dataset("blobs", seed=0, n_train=120, n_test=60)
    names = ["backprop"] + ([_local_learner()] if _local_learner() else [])
    for name in names:
        for seed in (0, 1):
            fit(make_learner(name, **get_learner_class(name).contract_params), "mlp_small", data, seed=seed,
                loop=LoopConfig(n_epochs=2, progress=False, alignment=True), out_dir=root / name / f"seed={seed}")
    (root / "crashed" / "seed=0" / ".hydra").mkdir(parents=True)      # a run that left no results
    return root, names


def test_report_table_html_and_figures(runs, tmp_path):
    root, names = runs
    table = write_report(root, tmp_path)
    header = table.splitlines()[0]
    for column in ("mean ± 95% CI", "s / epoch", "peak memory", "FLOPs / sample", "parameters"):
        assert column in header
    for name in names:
        assert f"| {name} |" in table
    md = (tmp_path / "summary.md").read_text()
    assert "crashed" in md and "without results (failed)" in md          # reported, never dropped
    assert "## Alignment with backprop" in md
    html = (tmp_path / "summary.html").read_text()
    assert html.count("<table>") == md.count("\n|---") and '<img src="pareto.png"' in html
    for figure in ("comparison", "pareto", "memory", "blocks" if len(names) > 1 else "comparison", "alignment"):
        assert (tmp_path / f"{figure}.png").stat().st_size > 10_000


def test_flops_per_sample_is_per_training_sample(runs):
    root, _ = runs
    ds = collect(root)
    rows = {r["learner"]: r for r in summary_rows(ds)}
    bp = ds.sel(learner="backprop")
    expected = float((bp["flops"] / bp["n_train"]).mean())
    assert rows["backprop"]["flops_per_sample"] == pytest.approx(expected)
    # mlp_small on 2-d blobs: one forward pass alone is 2 * (2*64 + 64*64 + 64*3) multiply-adds
    assert rows["backprop"]["flops_per_sample"] > 2 * (2 * 64 + 64 * 64 + 64 * 3)


def test_swept_settings_become_labelled_variants(tmp_path):
    data = load_dataset("blobs", seed=0, n_train=60, n_test=30)
    for lr in (0.01, 0.001):
        fit(make_learner("backprop", optimizer={"lr": lr}), "mlp_small", data, seed=0,
            loop=LoopConfig(n_epochs=1, progress=False), out_dir=tmp_path / f"lr={lr}",
            coords={"lr": lr})
    ds = variants_as_learners(collect(tmp_path))
    assert list(ds["learner"].values) == ["backprop (lr=0.001)", "backprop (lr=0.01)"]
    assert learner_color("backprop (lr=0.01)") == learner_color("backprop")


def test_a_key_swept_for_one_learner_only_stays_out_of_the_others_label(tmp_path):
    # the LLS experiments: `learner.variant` swept for lls, `...optimizer` for a second backprop arm,
    # both into one folder; each row is labelled by the keys its own runs set
    data = load_dataset("blobs", seed=0, n_train=60, n_test=30)
    runs = [("backprop", {"optimizer": {"lr": 0.01}}, {"learner_overrides.backprop.optimizer": "{name:sgd,lr:0.01}"}),
            ("backprop", {}, {}),
            ("mono_forward", {}, {"learner.variant": 0.5, "variant": "x"}),
            ("mono_forward", {}, {"learner.variant": 2.0, "variant": "x"})]
    for i, (name, params, coords) in enumerate(runs):
        for seed in (0, 1):
            fit(make_learner(name, **params), "mlp_small", data, seed=seed,
                loop=LoopConfig(n_epochs=1, progress=False), out_dir=tmp_path / str(i) / f"seed={seed}",
                coords=coords)
    ds = variants_as_learners(collect(tmp_path))
    # labels without the prefixes the learner's name already says; "learner.variant" and "variant"
    # would both shorten to "variant", so they stay whole
    assert sorted(ds["learner"].values) == ["backprop",
                                            "backprop (optimizer={name:sgd,lr:0.01})",
                                            "mono_forward (learner.variant=0.5, variant=x)",
                                            "mono_forward (learner.variant=2.0, variant=x)"]
    assert ds["accuracy"].sel(split="test").isel(epoch=-1).notnull().all()       # every row holds its 2 seeds


def test_pareto_front_by_hand():
    cost = np.array([1.0, 2.0, 3.0, 2.0, 5.0])
    acc = np.array([0.5, 0.7, 0.6, 0.8, 0.9])
    assert pareto_front(cost, acc).tolist() == [0, 3, 4]   # (2, 0.7) and (3, 0.6) are beaten by (2, 0.8)


def test_html_of_the_markdown_subset():
    html = markdown_to_html("# T\n\n| a | b |\n|---|---|\n| 1 | `x<y` |\n\n- item\n\n![cap](f.png)\n", "T")
    assert "<h1>T</h1>" in html and "<td><code>x&lt;y</code></td>" in html
    assert "<li>item</li>" in html and '<img src="f.png" alt="cap">' in html


def test_regression_runs_get_r2_and_rmse_columns(tmp_path):
    data = load_dataset("friedman1", seed=0)
    for seed in (0, 1):
        fit(make_learner("backprop"), "mlp_small", data, seed=seed,
            loop=LoopConfig(n_epochs=3, progress=False), out_dir=tmp_path / "backprop" / f"seed={seed}")
    table = write_report(tmp_path)
    assert "test R^2 (mean ± 95% CI) | test RMSE" in table.splitlines()[0]
    ds = collect(tmp_path)
    r2 = ds["r2"].sel(split="test").isel(epoch=-1).values
    rmse = ds["rmse"].sel(split="test").isel(epoch=-1).values
    row = table.splitlines()[2]
    assert f"| {np.mean(r2):.3f} ± " in row and f"| {np.mean(rmse):.3f} ± " in row
    assert np.mean(r2) > 0.3                       # it learned something, so the numbers are not trivial
    assert (tmp_path / "comparison.png").stat().st_size > 10_000
    assert "R^2" in (tmp_path / "summary.md").read_text()


def test_long_setting_values_are_cut_in_labels_but_never_merged():
    from analysis.report import _label
    long = "{name:adamw_schedulefree,lr:0.005,weight_decay:0.0,schedule:constant}"
    label = _label("backprop", ["learner_overrides.backprop.optimizer"], [long], short=True)
    assert label == "backprop (optimizer={name:adamw_schedulefre…)" and len(label) < 50
    assert _label("backprop", ["learner_overrides.backprop.optimizer"], [long], short=False).endswith(long + ")")
