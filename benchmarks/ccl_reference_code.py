"""The authors' Counter-Current Learning code (IandRover/CCL-NeurIPS24) run on this machine, beside
altlearn's ``reproduce_ccl_mnist``.

    ALTLEARN_DATA=... python -m benchmarks.ccl_reference_code --code PATH/TO/CCL-NeurIPS24 --seeds 0

runs the authors' ``main_class_mlp.py --yaml yaml/mlp/mnist_ccl.yaml --seed S`` unchanged (the
reference code is not part of this repository) in a subprocess per seed, one torch thread, with two
stand-ins put first on its import path: a ``torchvision`` whose MNIST / FashionMNIST read the original
IDX files from ``$ALTLEARN_DATA`` (``ToTensor`` and ``Normalize`` with torchvision's semantics), and a
``wandb`` that prints what the script logs. The script picks the epoch of lowest validation loss
on a random 10% of the training set and logs that epoch's model's test accuracy. The table, with
altlearn's runs read from ``benchmarks/reference/reproduce_ccl_mnist``, goes to
``benchmarks/results/ccl_reference_code.md`` (``--out``). ``--reuse`` instead of ``--code`` keeps the
authors' rows of that table and reads altlearn's runs again (after a rerun of the reproduction).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import write_table  # noqa: E402

TORCHVISION = textwrap.dedent('''
    import gzip, os
    from pathlib import Path
    import numpy as np

    class _Idx:
        folder = None
        def __init__(self, root=None, train=True, download=False, transform=None):
            base = Path(os.environ["ALTLEARN_DATA"]) / self.folder
            kind = "train" if train else "t10k"
            with gzip.open(base / f"{kind}-images-idx3-ubyte.gz") as f:
                self.images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
            with gzip.open(base / f"{kind}-labels-idx1-ubyte.gz") as f:
                self.labels = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
            self.transform = transform
        def __len__(self):
            return len(self.labels)
        def __getitem__(self, i):
            image = self.images[i]
            return (self.transform(image) if self.transform else image), int(self.labels[i])

    class MNIST(_Idx):
        folder = "mnist"

    class FashionMNIST(_Idx):
        folder = "fashion-mnist"
''')

TRANSFORMS = textwrap.dedent('''
    import torch

    class Compose:
        def __init__(self, steps):
            self.steps = steps
        def __call__(self, x):
            for step in self.steps:
                x = step(x)
            return x

    class ToTensor:   # uint8 H x W -> float 1 x H x W in [0, 1]
        def __call__(self, image):
            return torch.from_numpy(image.copy()).float().div_(255.0).unsqueeze(0)

    class Normalize:
        def __init__(self, mean, std):
            as_tuple = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v,)
            self.mean = torch.tensor(as_tuple(mean)).view(-1, 1, 1)
            self.std = torch.tensor(as_tuple(std)).view(-1, 1, 1)
        def __call__(self, x):
            return (x - self.mean) / self.std
''')

WANDB = textwrap.dedent('''
    import json
    def init(*args, **kwargs):
        pass
    def log(values, step=None):
        print("WANDB " + json.dumps({"step": step, **{k: float(v) for k, v in values.items()}}), flush=True)
''')

SITE = textwrap.dedent('''
    import torch
    torch.set_num_threads(1)
''')


def stand_ins(folder: Path) -> Path:
    """Write the torchvision and wandb stand-ins (and a sitecustomize that sets one thread) to ``folder``."""
    (folder / "torchvision").mkdir(parents=True, exist_ok=True)
    (folder / "torchvision" / "__init__.py").write_text("from . import datasets, transforms\n")
    (folder / "torchvision" / "datasets.py").write_text(TORCHVISION)
    (folder / "torchvision" / "transforms.py").write_text(TRANSFORMS)
    (folder / "wandb.py").write_text(WANDB)
    (folder / "sitecustomize.py").write_text(SITE)
    return folder


def run_reference(code: Path, yaml_file: str, seed: int, shims: Path) -> dict:
    """One run of the authors' script; returns its logged test accuracy (%) and reported epoch."""
    env = dict(os.environ, PYTHONPATH=f"{shims}{os.pathsep}{code}", OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "main_class_mlp.py", "--yaml", yaml_file, "--seed", str(seed)],
                         cwd=code, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"the reference script failed (seed {seed}):\n{out.stderr[-3000:]}")
    logs = [json.loads(line[6:]) for line in out.stdout.splitlines() if line.startswith("WANDB ")]
    merged = {}
    for entry in logs:
        merged.setdefault(entry["step"], {}).update(entry)
    test = next(v for v in merged.values() if "test_acc" in v)
    return {"test": 100 * test["test_acc"], "best_epoch": int(test["best_epoch"]) + 1}


def ours(folder: Path) -> dict[int, dict]:
    """altlearn's counter-current runs of the same setting: test accuracy at the epoch of lowest
    validation loss (the reported epoch) per seed."""
    from experiments.recording import read_results
    found = {}
    for path in sorted(folder.glob("counter_current/seed=*/results.nc")):
        ds = read_results(path)
        loss = ds["loss"].sel(split="val").values
        best = int(np.nanargmin(loss))
        found[int(path.parent.name.split("=")[1])] = {
            "test": 100 * float(ds["accuracy"].sel(split="test").values[best]), "best_epoch": best + 1}
    return found


def reference_from_table(path: Path) -> dict[int, dict]:
    """The authors' runs as an earlier run of this script tabulated them in ``path`` (their code takes
    about 10 minutes a seed, and its numbers do not depend on altlearn's runs)."""
    found = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if len(cells) == 4 and cells[0].startswith("the authors' code"):
                found[int(cells[1])] = {"test": float(cells[2]), "best_epoch": int(cells[3]),
                                        "yaml": cells[0].removeprefix("the authors' code (").removesuffix(")")}
    if not found:
        raise SystemExit(f"{path} holds no rows of the authors' code; run with --code instead of --reuse")
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--code", type=Path, help="a checkout of IandRover/CCL-NeurIPS24")
    source.add_argument("--reuse", action="store_true",
                        help="take the authors' runs from the table already in --out; tabulate altlearn's again")
    parser.add_argument("--yaml", default="./yaml/mlp/mnist_ccl.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ours", type=Path, default=ROOT / "benchmarks/reference/reproduce_ccl_mnist")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/ccl_reference_code.md")
    args = parser.parse_args(argv)
    if not args.reuse and "ALTLEARN_DATA" not in os.environ:
        parser.error("set ALTLEARN_DATA to the folder holding mnist/ and fashion-mnist/ IDX files")
    if args.reuse:
        reference = {seed: r for seed, r in reference_from_table(args.out).items() if seed in args.seeds}
        if {r["yaml"] for r in reference.values()} != {args.yaml}:
            parser.error(f"{args.out} tabulates the authors' code with another --yaml than {args.yaml}")
    else:
        with tempfile.TemporaryDirectory() as tmp:
            shims = stand_ins(Path(tmp))
            reference = {}
            for seed in args.seeds:
                reference[seed] = run_reference(args.code.resolve(), args.yaml, seed, shims)
                print(f"reference seed {seed}: {reference[seed]}", flush=True)
    mine = ours(args.ours)
    rows = [[f"the authors' code ({args.yaml})", seed, f"{r['test']:.2f}", r["best_epoch"]]
            for seed, r in reference.items()]
    rows += [[f"altlearn ({args.ours.name})", seed, f"{r['test']:.2f}", r["best_epoch"]] for seed, r in mine.items()]
    means = [f"the authors' code: {np.mean([r['test'] for r in reference.values()]):.2f} over seeds "
             f"{', '.join(map(str, reference))}",
             f"altlearn: {np.mean([r['test'] for r in mine.values()]):.2f} over seeds {', '.join(map(str, mine))}"]
    text = write_table(args.out,
                       "Counter-Current Learning: the authors' code against altlearn",
                       ["code", "seed", "test accuracy (%)", "epoch reported"], rows,
                       notes=(f"`python -m benchmarks.ccl_reference_code --code ... --yaml {args.yaml} --seeds "
                              f"{' '.join(map(str, args.seeds))}`, one torch thread. Test accuracy of the model "
                              "at the epoch of lowest validation loss."
                              + (" The authors' rows are kept from that run (`--reuse`); altlearn's are read "
                                 f"again from {args.ours.name}." if args.reuse else "")),
                       tail="Means: " + "; ".join(means) + ".")
    print(text)


if __name__ == "__main__":
    main()
