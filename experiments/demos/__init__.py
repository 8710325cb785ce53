"""Classroom demos: ``altlearn demo NAME [--out DIR] [--quick]`` or ``python -m experiments.demos.NAME``.

Each demo is one short module with ``run(out_dir, quick=False) -> dict`` (the numbers behind its
figure, also written next to it as ``<name>.json``) and ``main(argv)``. ``--quick`` shrinks the
budget to a few seconds (the tests and the notebooks use it); without it a demo takes about a
minute on a laptop CPU. Every demo covers every registered learner it applies to.
"""
from __future__ import annotations

import importlib
import sys

DEMOS = {
    "boundaries": "every learner's decision boundary on moons and spirals",
    "forward_forward": "positive vs negative goodness per block over training",
    "swarm": "a particle swarm converging on a neuron's weights",
    "noprop": "the denoising chain carrying noise to a class embedding",
    "forgetting": "permuted-digit accuracy matrices with and without Hebbian projection",
    "locality": "which parameters each learner's single update touches",
    "alignment": "random feedback: forward weights and errors turning towards backprop's",
    "predictive_coding": "the energy settling and the value nodes moving towards the clamped label",
}


def get_demo(name: str):
    """The demo module ``name``; a clear error naming the known demos otherwise."""
    if name not in DEMOS:
        from core.errors import ConfigError
        raise ConfigError(f"unknown demo {name!r}; known demos: {', '.join(DEMOS)}")
    return importlib.import_module(f"experiments.demos.{name}")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "list"):
        print("usage: altlearn demo NAME [--out DIR] [--quick]\n\ndemos:")
        for name, what in DEMOS.items():
            print(f"  {name:16s} {what}")
        return 0 if argv else 2
    from core.errors import AltlearnError
    try:
        return get_demo(argv[0]).main(argv[1:])
    except AltlearnError as err:
        print(f"altlearn demo: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
