"""What every demo shares: the command line, the output folder, the numbers file."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")


def parse(name: str, doc: str, argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"altlearn demo {name}", description=doc)
    parser.add_argument("--out", default="demos", help="folder for the figure and its numbers (default: demos)")
    parser.add_argument("--quick", action="store_true", help="a few-second budget (tests, notebooks)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def demo_learner(name: str, demo: str, **overrides):
    """The registered learner ``name`` at its defaults (those of ``altlearn learner=<name>``) with
    ``overrides``, on one torch thread; a one-line error when it is not registered."""
    import torch

    from learners import available_learners, make_learner
    if name not in available_learners():
        from core.errors import ConfigError
        raise ConfigError(f"demo {demo} needs the {name} learner, which is not registered")
    torch.set_num_threads(1)
    return make_learner(name, **overrides)


def main_for(module, name: str, argv) -> int:
    """Parse ``argv``, run ``module.run`` and say where the figure went."""
    args = parse(name, module.__doc__, argv)
    t0 = time.perf_counter()
    numbers = module.run(args.out, quick=args.quick, seed=args.seed)
    print(f"{name}: wrote {numbers['figure']} in {time.perf_counter() - t0:.1f}s")
    return 0


def finish(out_dir, name: str, fig, numbers: dict) -> dict:
    """Save ``fig`` as ``<out_dir>/<name>.png`` and ``numbers`` as ``<name>.json``; return numbers."""
    import matplotlib.pyplot as plt
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    numbers = {**numbers, "figure": str(path)}
    (out / f"{name}.json").write_text(json.dumps(numbers, indent=1, default=float))
    return numbers


def classification_learners() -> list[str]:
    """Every registered learner that classifies (the demos cover whatever is registered)."""
    from learners import available_learners, get_learner_class
    return [n for n in available_learners() if "classification" in get_learner_class(n).tags.tasks]
