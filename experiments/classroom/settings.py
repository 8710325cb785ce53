"""What a teacher chooses for one run, and the knobs each rule offers (from its ``search_space``).

No web imports: the page builds its widgets from `Knob`, the controller trains from `Settings`.
A rule starts from its ``contract_params`` (the settings with which it learns toy sets in seconds,
which is what a lesson wants) over its class defaults; the knobs override those.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

from learners import available_learners, get_learner_class, make_learner
from learners.search import Choice, IntRange, Uniform
from networks import NetworkSpec

DATASETS = ("moons", "circles", "xor", "spirals", "blobs", "digits")
# a log-scaled range offers this many values, so a slider shows round numbers
LOG_STEPS = 13


@dataclass(frozen=True)
class Knob:
    """One tunable hyperparameter as a widget needs it: ``kind`` is ``log`` (``options`` holds the
    geometric grid), ``float``, ``int`` or ``choice``; ``default`` is the rule's classroom value."""

    path: str
    kind: str
    default: object
    low: float | None = None
    high: float | None = None
    options: tuple = ()


@dataclass(frozen=True)
class Settings:
    """One run: rule, data, network, knob values by dotted path, seed and budget."""

    learner: str
    dataset: str = "moons"
    width: int = 32
    depth: int = 2
    knobs: dict = field(default_factory=dict)
    seed: int = 0
    epochs: int = 60
    batch_size: int = 32
    # slow motion: each epoch is shown for at least this long (the page waits; learning is unchanged)
    min_epoch_s: float = 0.0

    def network(self) -> NetworkSpec:
        return NetworkSpec(kind="mlp", widths=(int(self.width),) * int(self.depth))


def learners() -> list[str]:
    """The rules a page offers: every registered classification learner, read when asked, so a rule
    added later appears on the next page load."""
    return [n for n in available_learners() if "classification" in get_learner_class(n).tags.tasks]


def describe(name: str) -> str:
    """One line on a rule: its docstring's first line and its locality."""
    cls = get_learner_class(name)
    doc = (cls.__doc__ or "").strip().splitlines()
    first = doc[0].strip() if doc else name
    return f"{first} (locality: {cls.tags.locality})"


def classroom_params(name: str) -> dict:
    return copy.deepcopy(get_learner_class(name).contract_params)


def knobs(name: str) -> list[Knob]:
    """The rule's declared search space as widgets need it, with its classroom defaults."""
    cls = get_learner_class(name)
    base = make_learner(name, **classroom_params(name))
    out = []
    for path, spec in cls.search_space.items():
        default = _lookup(base, path)
        if isinstance(spec, Choice):
            options = tuple(spec.options)
            out.append(Knob(path, "choice", default if default in options else options[0], options=options))
        elif isinstance(spec, IntRange):
            value = int(min(max(default if isinstance(default, (int, float)) else spec.low, spec.low), spec.high))
            if spec.log:
                grid = tuple(sorted({int(round(v)) for v in _geometric(spec.low, spec.high)} | {value}))
                out.append(Knob(path, "choice", value, spec.low, spec.high, options=grid))
            else:
                out.append(Knob(path, "int", value, spec.low, spec.high))
        elif isinstance(spec, Uniform):
            value = float(default) if isinstance(default, (int, float)) else spec.low
            value = min(max(value, spec.low), spec.high)
            if spec.log:
                grid = _geometric(spec.low, spec.high)
                # the default stays selectable exactly: a rule's tested setting is the lesson's start
                options = tuple(sorted(set(grid) | {_round(value)}))
                out.append(Knob(path, "log", _round(value), spec.low, spec.high, options=options))
            else:
                out.append(Knob(path, "float", value, spec.low, spec.high))
    return out


def learner_params(name: str, values: dict) -> dict:
    """Keyword arguments for `make_learner`: the classroom defaults with ``values`` (dotted paths) set.

    A path below a plain-dict hyperparameter (``base_params.optimizer.lr``) is merged into that
    dict's default rather than replacing it.
    """
    cls = get_learner_class(name)
    params = classroom_params(name)
    defaults = cls()
    for path, value in values.items():
        head, *rest = path.split(".")
        if not rest:
            params[head] = value
            continue
        if head not in params:
            default = getattr(defaults, head)
            params[head] = copy.deepcopy(default) if isinstance(default, dict) else {}
        node = params[head]
        for part in rest[:-1]:
            node = node.setdefault(part, {})
        node[rest[-1]] = value
    return params


def _lookup(obj, path: str):
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, dict) else getattr(obj, part, None)
    return obj


def _geometric(low: float, high: float) -> tuple:
    ratio = math.log(high / low)
    return tuple(_round(low * math.exp(ratio * i / (LOG_STEPS - 1))) for i in range(LOG_STEPS))


def _round(value: float) -> float:
    return float(f"{value:.2g}")
