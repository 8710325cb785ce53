"""altlearn's predictive coding against pcx (the JAX library), side by side on one thread: the MNIST
setting of experiment=reproduce_pc_mnist (784-128-128-128-10 gelu, PC-SE, T = 8, batch 128), a few
epochs per seed, test accuracy and training time per epoch of each.

    python -m venv pcx-env && pcx-env/bin/pip install "jax[cpu]>=0.4.33,<0.5" pcx==0.6.3
    ALTLEARN_DATA=/path/to/data python -m benchmarks.bench_pcx --pcx-python pcx-env/bin/python

Both train on the same arrays: the 55,000 training images left after the experiment's validation
split, normalised as altlearn normalises them, and the 10,000 test images; each seed shuffles with its
own generator in each code. altlearn runs twice, eagerly and with ``torch_compile=true``; pcx's side is
benchmarks/pcx_side.py. The first epoch of pcx and of the compiled run includes the compilation and is
reported apart. Writes benchmarks/results/pcx.md.

``--mode incremental`` runs iPC-SE instead, at pcx's iPC values for MNIST (the overrides in the
experiment's header: leaky ReLU, lr_x 0.850, momentum 0.35, lr_w 2.53e-4, wd 3.25e-2), eagerly only
(altlearn compiles standard PC's relaxation, not iPC's), and writes benchmarks/results/pcx_ipc.md.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import machine_description, markdown_table, write_table

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "pcx.md"
EXPERIMENT = "experiment=reproduce_pc_mnist"
COMPILED = "altlearn, torch_compile=true"
PC = "learner_overrides.predictive_coding"
# iPC-SE's own tuned values, as in experiment=reproduce_pc_mnist's header
INCREMENTAL = ["network.activation=leaky_relu", f"{PC}.mode=incremental", f"{PC}.inference_lr=0.850",
               f"{PC}.inference_momentum=0.35", f"{PC}.optimizer.lr=2.53e-4", f"{PC}.optimizer.weight_decay=3.25e-2"]


def pc_settings(cfg) -> dict:
    """The experiment's PC-SE hyperparameters, as pcx_side.py's arguments."""
    pc = cfg.learner_overrides.predictive_coding
    return {"--widths": ",".join(str(w) for w in cfg.network.widths), "--activation": cfg.network.activation,
            "--mode": pc.mode, "--T": pc.n_inference_steps, "--lr-x": pc.inference_lr, "--momentum-x": pc.inference_momentum,
            "--lr-w": pc.optimizer.lr, "--wd-w": pc.optimizer.weight_decay, "--batch-size": cfg.loop.batch_size}


def write_arrays(seed: int, path: Path, overrides: list[str]) -> dict:
    from experiments.app import load_data
    from experiments.tune import compose
    cfg = compose([EXPERIMENT, f"seed={seed}", "learner=predictive_coding", *overrides])
    data = load_data(cfg)
    flat = lambda x: np.asarray(x, dtype=np.float32).reshape(len(x), -1)  # noqa: E731
    np.savez(path, x_train=flat(data.x_train), y_train=np.asarray(data.y_train),
             x_test=flat(data.x_test), y_test=np.asarray(data.y_test))
    return pc_settings(cfg)


def run_pcx(python: str, arrays: Path, seed: int, epochs: int, settings: dict) -> list[dict]:
    argv = [python, str(ROOT / "benchmarks" / "pcx_side.py"), "--data", str(arrays), "--seed", str(seed),
            "--epochs", str(epochs), "--threads", "1"] + [str(v) for kv in settings.items() for v in kv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def run_altlearn(seed: int, epochs: int, folder: Path, overrides: list[str], compiled: bool = False) -> list[dict]:
    from experiments.recording import read_results
    argv = [sys.executable, "-c", "import sys; from experiments.app import main; main()", EXPERIMENT,
            "learner=predictive_coding", f"seed={seed}", f"loop.n_epochs={epochs}", "loop.threads=1",
            "loop.progress=false", f"hydra.run.dir={folder}",
            f"{PC}.torch_compile={str(compiled).lower()}", *overrides]
    subprocess.run(argv, check=True, capture_output=True, text=True, cwd=ROOT)
    res = read_results(folder / "results.nc")
    return [{"epoch": int(e), "train_s": float(res["wall_time"].sel(epoch=e)),
             "test_accuracy": float(res["accuracy"].sel(epoch=e, split="test"))} for e in res.epoch.values]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pcx-python", required=True, help="the python of an environment with pcx and jax")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--mode", choices=("standard", "incremental"), default="standard")
    args = parser.parse_args(argv)
    overrides = INCREMENTAL if args.mode == "incremental" else []
    codes = ("altlearn", "pcx") if overrides else ("altlearn", COMPILED, "pcx")
    rows, versions = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            arrays = Path(tmp) / f"mnist_seed{seed}.npz"
            settings = write_arrays(seed, arrays, overrides)
            for code in codes:
                if code == "pcx":
                    epochs = run_pcx(args.pcx_python, arrays, seed, args.epochs, settings)
                else:
                    compiled = code == COMPILED
                    folder = Path(tmp) / f"{'compiled' if compiled else 'eager'}{seed}"
                    epochs = run_altlearn(seed, args.epochs, folder, overrides, compiled=compiled)
                for e in epochs:
                    versions.update({k: e[k] for k in ("jax", "pcx") if k in e})
                    rows.append({"code": code, "seed": seed, **{k: e[k] for k in ("epoch", "train_s", "test_accuracy")}})
            print(f"seed {seed} done", flush=True)
    results = RESULTS.with_name("pcx_ipc.md") if overrides else RESULTS
    write_table(results, *report(rows, args, settings, versions, codes))


def report(rows: list[dict], args, settings: dict, versions: dict, codes: tuple[str, ...]) -> str:
    def stats(code, key, epochs):
        vals = [r[key] for r in rows if r["code"] == code and r["epoch"] in epochs]
        return np.mean(vals), np.std(vals, ddof=1) if len(vals) > 1 else 0.0
    last, steady = [args.epochs], list(range(2, args.epochs + 1)) or [1]
    table = []
    for code in codes:
        acc, acc_sd = stats(code, "test_accuracy", last)
        first, _ = stats(code, "train_s", [1])
        later, later_sd = stats(code, "train_s", steady)
        table.append([code, f"{100 * acc:.2f} ± {100 * acc_sd:.2f}", f"{first:.1f}", f"{later:.1f} ± {later_sd:.1f}"])
    pcx_epoch = stats("pcx", "train_s", steady)[0]
    ratios = {code: pcx_epoch / stats(code, "train_s", steady)[0] for code in codes if code != "pcx"}
    per_run = [[r["code"], r["seed"], r["epoch"], f"{r['train_s']:.1f}", f"{100 * r['test_accuracy']:.2f}"] for r in rows]
    name = "iPC-SE" if args.mode == "incremental" else "PC-SE"
    notes = (f"`python -m benchmarks.bench_pcx --pcx-python ... --mode {args.mode} --epochs {args.epochs} --seeds "
             f"{' '.join(map(str, args.seeds))}` on {machine_description()}, one thread each; pcx "
             f"{versions.get('pcx', '?')}, jax {versions.get('jax', '?')}. Setting ({EXPERIMENT}, {name}): "
             + ", ".join(f"{k.lstrip('-')} {v}" for k, v in settings.items()) + ".")
    header = ["code", f"test accuracy after epoch {args.epochs} (%, mean ± sd over seeds)", "epoch 1 (s)",
              f"epochs {steady[0]}-{steady[-1]} (s, mean ± sd)"]
    tail = "\n".join([
        "", "pcx's epoch takes " + " and ".join(f"{r:.2f}x {c}'s" for c, r in ratios.items())
        + f" (epochs {steady[0]}-{steady[-1]}; the first epoch of pcx"
        + (" and of the compiled run" if COMPILED in codes else "") + " includes the compilation).",
        "", "Every epoch:", "",
        markdown_table(["code", "seed", "epoch", "train (s)", "test accuracy (%)"], per_run)])
    return f"Predictive coding ({name}): altlearn against pcx", header, table, notes, tail


if __name__ == "__main__":
    main()
