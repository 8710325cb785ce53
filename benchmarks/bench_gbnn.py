"""GBNN against the authors' `gbnn` package, and scikit-learn's MLP baseline for gbnn_tabular.

``python benchmarks/bench_gbnn.py``                    fit time and accuracy on digits, side by side:
    altlearn's GBNN (numba kernel), the same with the plain numpy kernel, and ``gbnn`` 0.0.2
    (PyPI; L-BFGS weak learners), at equal settings (units, J, subsample, iterations, eta).
    Writes benchmarks/results/gbnn.md.
``python benchmarks/bench_gbnn.py --summarise``  per-seed table of the committed gbnn_tabular runs
    (final-epoch test accuracy, or R^2 for diabetes), written to benchmarks/results/gbnn_tabular.md.
``python benchmarks/bench_gbnn.py --tabular-sklearn``  scikit-learn's MLPClassifier / MLPRegressor
    (200 hidden units, its defaults) on the gbnn_tabular datasets and seeds, written as runs
    (results.nc) under benchmarks/reference/gbnn_tabular/<dataset>/sklearn_mlp/seed=<s>/.

One thread everywhere (``set_threads(1)``); ``pip install gbnn`` for the peer (benchmark only).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import machine_description, set_threads, write_table  # noqa: E402

set_threads(1)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from experiments.datasets import load_dataset  # noqa: E402

TABULAR = ("digits", "breast_cancer", "wine", "diabetes")
PEER = "gbnn 0.0.2 (L-BFGS)"


def _flat(data):
    f = lambda a: a.reshape(len(a), -1).astype(np.float64)
    return f(data.x_train), data.y_train, f(data.x_test), data.y_test


# ------------------------------------------------------------------ the peer package

def gbnn_package():
    """``gbnn`` with its one compatibility shim: since scikit-learn 1.6 ``is_classifier`` reads the
    estimator tags, which GNEGNEClassifier (``_estimator_type`` set in ``__init__``) does not
    declare, so the package took the regression branch for classifiers."""
    import gbnn.GBNN as module
    module.is_classifier = lambda est: getattr(est, "_estimator_type", None) == "classifier"
    return module


def fit_peer(settings, seed, data):
    module = gbnn_package()
    x_tr, y_tr, x_te, y_te = _flat(data)
    model = module.GNEGNEClassifier(total_nn=settings["n_units"], num_nn_step=settings["units_per_step"],
                                    eta=settings["shrinkage"], subsample=settings["subsample"],
                                    max_iter=settings["step_iterations"], random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t0 = time.process_time()
        model.fit(x_tr, y_tr)
        seconds = time.process_time() - t0
        acc = float(np.mean(model.predict(x_te) == y_te))
    return seconds, acc


def fit_ours(settings, seed, data, kernel, step_init="glorot"):
    from learners import make_learner
    from learners.base import DataInfo
    from networks import build, get_preset
    # the reference's sklearn weak learners: alpha 1e-4
    learner = make_learner("gradient_boosting", kernel=kernel, step_lr=settings.get("step_lr", 0.01),
                           step_init=step_init, step_l2=settings.get("step_l2", 1e-4),
                           **{k: settings[k] for k in ("n_units", "units_per_step", "shrinkage", "subsample",
                                                       "step_iterations")})
    spec = get_preset("mlp_small").resolve(data.input_shape, data.n_classes)
    info = DataInfo(input_shape=spec.input_shape, n_classes=spec.n_classes, n_train=len(data.x_train),
                    batch_size=len(data.x_train), steps_per_epoch=1, n_epochs=1)
    batch = (torch.from_numpy(data.x_train), torch.from_numpy(data.y_train))
    t0 = time.process_time()
    state = learner.init(build(spec, seed), info, seed)
    state, _ = learner.update(state, batch)            # all T boosting steps in one update
    seconds = time.process_time() - t0
    acc = float((learner.predict(state, torch.from_numpy(data.x_test)).argmax(1).numpy() == data.y_test).mean())
    return seconds, acc


def speed(seeds, settings_list, out):
    data0 = load_dataset("digits", seed=0)
    fit_ours({**settings_list[0], "n_units": 8, "units_per_step": 4}, 0, data0, "numba")   # jit warm-up
    rows = []
    for settings in settings_list:
        for seed in seeds:
            data = load_dataset("digits", seed=seed)
            label = ", ".join(f"{k}={v}" for k, v in settings.items())
            for name, fn in (("altlearn (numba)", lambda: fit_ours(settings, seed, data, "numba")),
                             ("altlearn (numba, step_init=network)",
                              lambda: fit_ours(settings, seed, data, "numba", "network")),
                             ("altlearn (numpy kernel)", lambda: fit_ours(settings, seed, data, "numpy")),
                             (PEER, lambda: fit_peer(settings, seed, data))):
                seconds, acc = fn()
                rows.append([label, seed, name, seconds, 100 * acc])
                print(rows[-1], flush=True)
    notes = (f"Machine: {machine_description()}; one thread. Fit CPU seconds (process time) and test accuracy "
             "on digits (altlearn's fixed test split; same training rows for both libraries). Both fit "
             "the weak learners by L-BFGS with scipy L-BFGS-B's stopping rules (relative decrease 2.2e-9, "
             "gradient tolerance 0 as the package passes; altlearn: numba, Armijo backtracking; gbnn: "
             "scikit-learn/scipy L-BFGS-B, Wolfe line search). Command: `python benchmarks/bench_gbnn.py`.\n\n"
             + summary_table(rows))
    print(write_table(out, "GBNN vs the gbnn package (digits)", ["settings", "seed", "implementation",
                                                                   "fit CPU s", "test accuracy %"], rows, notes))


COLLAPSED = 50.0   # test accuracy % below which a fit counts as collapsed (digits: chance is 10%)


def summary_table(rows) -> str:
    """Per setting and implementation: mean fit time, its ratio to the package's in the same run,
    and mean / median test accuracy over the seeds, with collapsed fits counted separately."""
    lines = ["| settings | implementation | mean fit CPU s | package time / this | median fit CPU s | "
             "package median / this | mean accuracy % | median accuracy % | collapsed seeds |",
             "|---|---|---|---|---|---|---|---|---|"]
    by = {}
    for label, _, name, seconds, acc in rows:
        by.setdefault(label, {}).setdefault(name, []).append((seconds, acc))
    for label, impls in by.items():
        peer_times = [t for t, _ in impls.get(PEER, [(np.nan, 0)])]
        peer, peer_median = np.mean(peer_times), np.median(peer_times)
        for name, values in impls.items():
            t, t_median = np.mean([v[0] for v in values]), np.median([v[0] for v in values])
            accs = np.array([v[1] for v in values])
            lines.append(f"| {label} | {name} | {t:.3f} | {peer / t:.2f}x | {t_median:.3f} | "
                         f"{peer_median / t_median:.2f}x | {accs.mean():.2f} | "
                         f"{np.median(accs):.2f} | {int(np.sum(accs < COLLAPSED))} of {len(accs)} |")
    return "\n".join(lines)


# ------------------------------------------------------------------ scikit-learn baseline runs

def tabular_sklearn(seeds, root):
    from sklearn.neural_network import MLPClassifier, MLPRegressor
    from experiments.recording import provenance, results_dataset, write_results
    for name in TABULAR:
        for seed in seeds:
            data = load_dataset(name, seed=seed)
            x_tr, y_tr, _, _ = _flat(data)
            reg = data.task == "regression"
            model = (MLPRegressor if reg else MLPClassifier)(hidden_layer_sizes=(200,), random_state=seed)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0 = time.perf_counter()
                model.fit(x_tr, y_tr.ravel() if reg else y_tr)
                wall = time.perf_counter() - t0
            record = {"epoch": 1, "wall_time": wall, "flops": 0.0}
            for split in ("train", "val", "test"):
                x, y = data.split(split)
                x = x.reshape(len(x), -1).astype(np.float64)
                if reg:
                    pred = model.predict(x).reshape(len(x), -1)
                    target = y.reshape(pred.shape)
                    mse = float(np.mean((pred - target) ** 2))
                    var = float(np.mean((target - target.mean(0)) ** 2))
                    values = {"loss": mse, "rmse": math.sqrt(mse), "r2": 1 - mse / var}
                else:
                    proba = np.clip(model.predict_proba(x), 1e-12, 1)
                    values = {"accuracy": float(np.mean(proba.argmax(1) == y)),
                              "loss": float(-np.mean(np.log(proba[np.arange(len(y)), y])))}
                for key, value in values.items():
                    record.setdefault(key, {})[split] = value
            n_params = sum(c.size for c in model.coefs_) + sum(b.size for b in model.intercepts_)
            ds = results_dataset([record], coords={"learner": "sklearn_mlp", "seed": seed, "dataset": name,
                                                   "network": "mlp_200"},
                                 attrs={**provenance(), "status": "complete", "n_parameters": n_params,
                                        "peak_memory_total": 0, "n_train": len(x_tr),
                                        "learner_hyperparameters": {"hidden_layer_sizes": [200],
                                                                    "library": "scikit-learn MLP, defaults"}})
            write_results(ds, Path(root) / name / "sklearn_mlp" / f"seed={seed}" / "results.nc")
            print(name, seed, {k: v["test"] for k, v in record.items() if isinstance(v, dict)}, flush=True)


def summarise_runs(folder, out, title, notes=""):
    """Final-epoch test score of every run under ``folder``, per dataset and learner, with seeds."""
    import xarray as xr
    runs = {}
    for path in sorted(Path(folder).rglob("results.nc")):
        with xr.open_dataset(path) as ds:
            metric = "accuracy" if "accuracy" in ds else "r2"
            value = float(ds[metric].sel(split="test").values[-1])
            wall = float(ds["wall_time"].sum())
            key = (str(ds["dataset"].values), str(ds["learner"].values), metric)
            runs.setdefault(key, []).append((int(ds["seed"].values), value, wall, ds.attrs.get("status")))
    rows = []
    for (dataset, learner, metric), values in sorted(runs.items()):
        values.sort()
        scores = np.array([v for _, v, _, _ in values])
        fmt = (lambda v: f"{100 * v:.2f}") if metric == "accuracy" else (lambda v: f"{v:.3f}")
        rows.append([dataset, learner, "accuracy %" if metric == "accuracy" else "R^2",
                     f"{fmt(scores.mean())} ± {fmt(scores.std())}", fmt(scores.min()), len(scores),
                     " ".join(fmt(v) for v in scores), f"{np.mean([w for _, _, w, _ in values]):.1f}",
                     ",".join(sorted({str(st) for *_, st in values}))])
    return write_table(out, title, ["dataset", "learner", "test metric", "mean ± std", "worst seed", "seeds",
                                    "per seed", "train s / run", "status"], rows, notes)


REGRESSION_SETS = ("diabetes", "friedman1")


def summarise_selection(folder, out):
    """Mean VALIDATION score per (subsample, step_l2) setting and dataset over seeds: how the YAML
    defaults were chosen (the test split is not looked at; it is reported beside, for the record)."""
    import xarray as xr
    import yaml
    scores = {}
    for path in sorted(Path(folder).rglob("results.nc")):
        with xr.open_dataset(path) as ds:
            config = yaml.safe_load(ds.attrs["config"])
            metric = "accuracy" if "accuracy" in ds else "r2"
            key = (config["learner"]["subsample"], config["learner"]["step_l2"])
            entry = scores.setdefault(key, {}).setdefault(str(ds["dataset"].values), {"val": [], "test": []})
            for split in ("val", "test"):
                entry[split].append(float(ds[metric].sel(split=split).values[-1]))
    datasets = sorted({d for per in scores.values() for d in per})
    # The issue's own tolerance as the unit: a setting's shortfall on a dataset is how far its mean
    # validation score trails the best setting's there, in 1.5 accuracy points (0.03 R^2); the
    # setting with the smallest worst shortfall wins. (A mean rank was tried first; it ignores
    # magnitude and picked a setting whose diabetes validation R^2 trails by 0.22 for a one-row win
    # on wine's 14 validation rows.)
    val_mean = {k: {d: np.mean(per[d]["val"]) for d in datasets} for k, per in scores.items()}
    tolerance = {d: (0.03 if d in REGRESSION_SETS else 0.015) for d in datasets}
    gaps = {k: [(max(val_mean[o][d] for o in val_mean) - val_mean[k][d]) / tolerance[d] for d in datasets]
            for k in val_mean}
    shortfall = {k: max(g) for k, g in gaps.items()}
    # ties on the worst shortfall (the same dataset can set it for several settings) go to the
    # smaller mean shortfall over the datasets
    rank = {k: (round(shortfall[k], 6), float(np.mean(gaps[k]))) for k in gaps}
    rows = []
    for key in sorted(scores, key=lambda k: rank[k]):
        cells = [f"{np.mean(scores[key][d]['val']):.4f} (worst {np.min(scores[key][d]['val']):.3f})"
                 for d in datasets]
        tests = [f"{np.mean(scores[key][d]['test']):.4f}" for d in datasets]
        rows.append([f"subsample={key[0]}, step_l2={key[1]}", f"{shortfall[key]:.2f}", f"{rank[key][1]:.2f}",
                     *cells, " / ".join(tests)])
    best = min(rank, key=rank.get)
    notes = ("From benchmarks/reference/gbnn_tabular_select (`altlearn -m experiment=gbnn_tabular_select`), final "
             "epoch, mean over 5 seeds. Validation: accuracy (R^2 for diabetes) on each run's validation split. "
             "Worst shortfall: the largest gap to the best setting on any dataset, in units of the target's "
             "tolerance (1.5 accuracy points, 0.03 R^2); settings ordered by it, ties by the mean shortfall. Test means (" +
             " / ".join(datasets) + f") are listed for the record only. Chosen: subsample={best[0]}, step_l2={best[1]}.")
    return write_table(out, "GBNN weak-learner settings chosen on validation",
                       ["setting", "worst shortfall (tolerances)", "mean shortfall", *[f"{d} val" for d in datasets],
                        "test (not used)"], rows, notes)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tabular-sklearn", action="store_true")
    parser.add_argument("--summarise", action="store_true")
    parser.add_argument("--select", action="store_true",
                        help="summarise experiment=gbnn_tabular_select (validation scores per setting)")
    parser.add_argument("--seeds", type=int, nargs="+", default=None)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gbnn.md"))
    args = parser.parse_args(argv)
    if args.summarise:
        print(summarise_runs(ROOT / "benchmarks" / "reference" / "gbnn_tabular",
                             ROOT / "benchmarks" / "results" / "gbnn_tabular.md", "gbnn_tabular: final test score",
                             "From benchmarks/reference/gbnn_tabular/*/*/seed=*/results.nc (final epoch); "
                             "train s = recorded training wall time (sklearn: fit time) on a shared, loaded machine."))
        return
    if args.select:
        print(summarise_selection(ROOT / "benchmarks" / "reference" / "gbnn_tabular_select",
                                  ROOT / "benchmarks" / "results" / "gbnn_select.md"))
        return
    if args.tabular_sklearn:
        tabular_sklearn(args.seeds or [0, 1, 2, 3, 4], ROOT / "benchmarks" / "reference" / "gbnn_tabular")
        return
    reference = {"n_units": 200, "units_per_step": 1, "shrinkage": 1.0, "subsample": 0.5, "step_iterations": 200}
    tuned = {"n_units": 200, "units_per_step": 4, "shrinkage": 0.5, "subsample": 0.5, "step_iterations": 200}
    speed(args.seeds or list(range(10)), [reference, tuned], args.out)


if __name__ == "__main__":
    main()
