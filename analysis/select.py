"""``python -m analysis.select FOLDER KEY [KEY ...]``: choose a setting on the validation split.

Groups the runs under FOLDER by the values of the config keys given (dotted paths into each
run's recorded config, e.g. ``learner.gamma_label_init``), and tabulates the final-epoch
validation score of each setting over its seeds, best first. The test score is listed beside it
for the record only: the choice is made on validation, never on test.

    python -m analysis.select benchmarks/reference/noprop_ct_select learner.gamma_label_init
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml

from experiments.health import FINISHED

from analysis.collect import find_runs
from core.errors import AltlearnError, DataError
from experiments.recording import read_results, write_text_atomic


def config_value(config: dict, dotted: str):
    node = config
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            raise DataError(f"config key {dotted!r} is not in the run's recorded config (no {part!r}); "
                            "give a dotted path such as learner.lr")
        node = node[part]
    return node


def selection_table(folder: str | Path, keys: list[str], metric: str | None = None,
                    split: str = "val") -> tuple[str, tuple]:
    """(markdown table, best setting) of the final-epoch ``split`` score per setting of ``keys``.

    ``metric`` defaults to accuracy for classification runs and R^2 for regression; higher wins.
    """
    paths, _ = find_runs(folder)
    if not paths:
        raise DataError(f"no results.nc under {folder}; run the selection sweep first")
    scores: dict[tuple, dict[str, list[float]]] = {}
    for path in paths:
        ds = read_results(path)
        if ds.attrs.get("status") not in FINISHED:   # a run at chance is a poor setting, not a missing one
            continue
        name = metric or ("accuracy" if "accuracy" in ds else "r2")
        if name not in ds:
            raise DataError(f"{path} records no {name!r}; pick --metric from {sorted(ds.data_vars)}")
        config = yaml.safe_load(ds.attrs["config"])
        setting = tuple(config_value(config, k) for k in keys)
        entry = scores.setdefault(setting, {"select": [], "test": []})
        entry["select"].append(float(ds[name].sel(split=split).values[-1]))
        entry["test"].append(float(ds[name].sel(split="test").values[-1]))
    if not scores:
        raise DataError(f"no complete run under {folder}")
    order = sorted(scores, key=lambda s: -np.mean(scores[s]["select"]))
    lines = [f"| {' | '.join(keys)} | {split} mean | {split} std | worst seed | seeds | test mean (not used) |",
             "|" + "---|" * (len(keys) + 5)]
    for s in order:
        sel = np.array(scores[s]["select"])
        lines.append(f"| {' | '.join(map(str, s))} | {sel.mean():.4f} | {sel.std():.4f} | {sel.min():.4f} | "
                     f"{len(sel)} | {np.mean(scores[s]['test']):.4f} |")
    return "\n".join(lines) + "\n", order[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m analysis.select", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder")
    parser.add_argument("keys", nargs="+", help="dotted config keys that the sweep varied")
    parser.add_argument("--metric", default=None, help="default: accuracy, or r2 for regression runs")
    parser.add_argument("--split", default="val", help="the split to choose on (default: val)")
    parser.add_argument("--out", default=None, help="also write the table here (markdown)")
    args = parser.parse_args(argv)
    try:
        table, best = selection_table(args.folder, args.keys, args.metric, args.split)
    except AltlearnError as err:
        print(f"analysis.select: error: {err}", file=sys.stderr)
        return 2
    text = f"# Selection on {args.split}: {args.folder}\n\nBest: {dict(zip(args.keys, best))}\n\n{table}"
    if args.out:
        write_text_atomic(Path(args.out), text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
