"""Tuning search spaces: what each learner declares as the few hyperparameters worth tuning.

A learner's ``search_space`` maps a dotted hyperparameter path (as in its config:
``optimizer.lr``) to one of the ranges below; the tuning driver (`experiments.tune`) turns each into
an optuna suggestion. Declared on the class, beside the defaults, so a new learner joins tuning
by declaring its own; `check_search_space` holds every path to a real hyperparameter.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True)
class Uniform:
    low: float
    high: float
    log: bool = False


def LogUniform(low: float, high: float) -> Uniform:  # noqa: N802 - reads as a distribution's name
    return Uniform(low, high, log=True)


@dataclass(frozen=True)
class IntRange:
    low: int
    high: int
    log: bool = False


@dataclass(frozen=True)
class Choice:
    options: tuple


Range = Uniform | IntRange | Choice


def check_search_space(cls) -> None:
    """Every key of ``cls.search_space`` names a hyperparameter (a field, or a field of a nested config
    dataclass; below a plain dict field any key is allowed) and every range is well formed."""
    defaults = cls()
    for path, spec in cls.search_space.items():
        node = defaults
        for part in path.split("."):
            if isinstance(node, dict):
                node = node.get(part)
                continue
            if not dataclasses.is_dataclass(node) or part not in {f.name for f in dataclasses.fields(node)}:
                raise ConfigError(f"learner {cls.name!r}: search_space key {path!r} is not a hyperparameter")
            node = getattr(node, part)
        if isinstance(spec, (Uniform, IntRange)):
            if not spec.low < spec.high or (spec.log and spec.low <= 0):
                raise ConfigError(f"learner {cls.name!r}: search_space[{path!r}] = {spec} is not a range "
                                  "(low < high, and low > 0 on a log scale)")
        elif isinstance(spec, Choice):
            if len(spec.options) < 2:
                raise ConfigError(f"learner {cls.name!r}: search_space[{path!r}] offers fewer than two options")
        else:
            raise ConfigError(f"learner {cls.name!r}: search_space[{path!r}] is a {type(spec).__name__}; "
                              "use Uniform, LogUniform, IntRange or Choice from learners.search")
