"""The authors' LLS code (mapolinario94/LLS-DNN) against ours, epoch by epoch, on one CPU budget.

``python benchmarks/lls_reference_code.py`` reads the logs of the reference code's runs in
benchmarks/results/lls_reference_code/ (``<arm>_seed<N>.log``, arm one of bp, lls, lls_m, lls_mxm)
and our runs of the same setting (``--ours``, default the 10-epoch augmented Fashion-MNIST folder),
and writes benchmarks/results/lls_reference_code.md: test accuracy per epoch, and the gap of each
LLS arm to backprop, for both codes.

How the logs were made (the reference code is not part of this repository):
LLS-DNN's files as the code index holds them (main.py, script.sh, models/, utils/ at commit 230af09;
models/layers/lls_layers.py at 17bb8c9, the sin/square basis our learner follows), run unchanged
through a launcher that (1) makes ``Tensor.cuda``/``Module.cuda`` no-ops, (2) lets torch 2.13's
``ReduceLROnPlateau`` accept the ``verbose=`` argument the reference passes (patience 1000: it never
fires), (3) seeds python, numpy and torch (main.py has no seed option), and (4) sets one torch thread.
torchvision and mlflow were replaced by stand-ins: IDX readers for Fashion-MNIST with torchvision's
``RandomCrop(28, padding=4)``, ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize((0.286,), (0.353,))``
semantics, and an mlflow that prints ``metric <name> <value> <epoch>``. The command, per arm, is
script.sh's Fashion-MNIST SmallConv line with 10 epochs:

    python main.py --dataset FashionMNIST --model LLS_SmallConv --num-epochs 10 --lr 5e-3 \\
        --training-mode LLS --waveform square --batch-size 128 --test-batch-size 128 --optimizer AdamWSF

(``--training-mode BP`` without ``--waveform`` for backprop). The reference trains on all 60,000
training images (469 steps per epoch) and tests on the 10,000 test images; ours holds 5,000 out for
validation (430 steps per epoch).
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import markdown_table, write_table  # noqa: E402

# reference arm -> our run folders, first found wins (a folder with both backprop arms keeps the
# Adam one as `backprop` and the schedule-free one, the reference's optimiser, as `backprop_schedulefree`)
ARMS = {"bp": ("backprop_schedulefree", "backprop"), "lls": ("lls",), "lls_m": ("lls_m",), "lls_mxm": ("lls_mxm",)}
LABELS = {"bp": "backprop (schedule-free AdamW)", "lls": "lls", "lls_m": "lls_m", "lls_mxm": "lls_mxm"}
TESTED = re.compile(r"^metric acc_test (\S+) (\d+)$")


def reference_curve(log: Path) -> np.ndarray | None:
    """Test accuracy (%) per epoch from one reference log (``metric acc_test <acc> <epoch>``); None while
    the run is still going (main.py logs ``best_acc_test`` once, after its last epoch)."""
    text = log.read_text()
    by_epoch = {}
    for line in text.splitlines():
        m = TESTED.match(line.strip())
        if m:
            by_epoch[int(m.group(2))] = float(m.group(1))
    if not by_epoch:
        raise ValueError(f"{log} has no 'metric acc_test' lines: not a log of the reference harness")
    if "metric best_acc_test " not in text:
        return None
    return np.array([by_epoch[e] for e in sorted(by_epoch)])


def our_curves(folder: Path, arms: tuple[str, ...]) -> dict[int, np.ndarray]:
    import xarray as xr
    curves = {}
    arm = next((a for a in arms if (folder / a).is_dir()), arms[0])
    for path in sorted((folder / arm).glob("seed=*/results.nc")):
        with xr.open_dataset(path) as ds:
            if ds.attrs.get("status") == "complete":
                curves[int(ds["seed"].values)] = 100 * ds["accuracy"].sel(split="test").values
    return curves


def _shown(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logs", default=str(ROOT / "benchmarks" / "results" / "lls_reference_code"))
    parser.add_argument("--ours", nargs="+", default=[str(ROOT / "benchmarks" / "reference" / name) for name in (
        "reproduce_lls_fashion_mnist_10epochs_augment", "reproduce_lls_fashion_mnist_10epochs_augment_sfpaper")],
        help="folders of our runs; the first is 'ours', the others are labelled by their name's last word")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lls_reference_code.md"))
    args = parser.parse_args(argv)
    logs = Path(args.logs)
    ours = {("ours" if i == 0 else f"ours, {Path(f).name.rsplit('_', 1)[-1]}"): Path(f)
            for i, f in enumerate(args.ours)}
    by_arm = {}
    for log in sorted(logs.glob("*_seed*.log")):
        arm, seed = log.stem.rsplit("_seed", 1)
        if arm in ARMS and (curve := reference_curve(log)) is not None:
            by_arm.setdefault(arm, []).append((int(seed), curve))
    rows, finals = [], {}
    for arm in ARMS:                                   # backprop first, then the LLS variants
        for seed, curve in sorted(by_arm.get(arm, []), key=lambda sc: sc[0]):
            finals[("reference", arm, seed)] = curve
            rows.append([f"reference: {LABELS[arm]}", seed, *[f"{v:.2f}" for v in curve]])
        for code, folder in ours.items():
            for seed, curve in sorted(our_curves(folder, ARMS[arm]).items()):
                finals[(code, arm, seed)] = curve
                rows.append([f"{code}: {LABELS[arm]}", seed, *[f"{v:.2f}" for v in curve]])
    if not by_arm:
        raise SystemExit(f"no reference logs (<arm>_seed<N>.log) in {logs}")
    n = max(len(r) - 2 for r in rows)
    rows = [r + [""] * (n + 2 - len(r)) for r in rows]
    codes = ["reference", *ours]

    def last(code, arm):
        return [c[-1] for (k, a, _), c in finals.items() if k == code and a == arm]
    summary = [[LABELS[arm], *[f"{np.mean(last(code, arm)):.2f} ({len(last(code, arm))})" if last(code, arm)
                                else "-" for code in codes]] for arm in ARMS]
    for arm in ("lls", "lls_m", "lls_mxm"):
        summary.append([f"gap {LABELS[arm]} - backprop", *[
            f"{np.mean(last(code, arm)) - np.mean(last(code, 'bp')):+.2f}"
            if last(code, arm) and last(code, "bp") else "-" for code in codes]])
    notes = ("Fashion-MNIST, smallconv, schedule-free AdamW lr 5e-3, batch 128, crops of the image padded by 4 "
             "and flips, 10 epochs, one torch thread. Test accuracy (%) after the last epoch, mean over seeds "
             "(number of seeds), and each LLS arm's gap to backprop in the same code. Reference logs: "
             + _shown(logs) + "; " + "; ".join(f"{code}: {_shown(folder)}" for code, folder in ours.items())
             + ". Command: `python benchmarks/lls_reference_code.py`.")
    per_epoch = "## Test accuracy per epoch\n\n" + markdown_table(
        ["code and arm", "seed", *[str(e + 1) for e in range(n)]], rows)
    table = write_table(args.out, "LLS: the authors' code against ours", ["arm", *codes], summary, notes,
                        tail=per_epoch)
    print(table)
    return table


if __name__ == "__main__":
    main()
