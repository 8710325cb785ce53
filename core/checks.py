"""Checks of configured values, each failing with one line that names the key, the value and what is
allowed (written once here: the network specs and every learner use them)."""
from __future__ import annotations

from core.errors import ConfigError


def check_choice(key: str, value, allowed) -> None:
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not known; allowed: {', '.join(map(str, allowed))}")


def check_range(key: str, value, low=None, high=None, *, low_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` with ``low_open``); None leaves a side unbounded."""
    if value != value:   # NaN passes every comparison below
        raise ConfigError(f"{key}={value!r} is not a number; give a finite value")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and value > high
    if too_low or too_high:
        lower = "" if low is None else f"{'>' if low_open else '>='} {low}"
        upper = "" if high is None else f"<= {high}"
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {' and '.join(p for p in (lower, upper) if p)}")


def check_positive(key: str, value, minimum=1) -> None:
    if not value >= minimum:
        raise ConfigError(f"{key} must be >= {minimum}, got {value!r}")


class Range:
    """An allowed interval of a numeric hyperparameter, for a learner's declared ``constraints``."""

    def __init__(self, low=None, high=None, *, low_open: bool = False):
        self.low, self.high, self.low_open = low, high, low_open

    def check(self, key: str, value) -> None:
        check_range(key, value, self.low, self.high, low_open=self.low_open)

    def __repr__(self) -> str:
        return f"Range({self.low}, {self.high}{', low_open=True' if self.low_open else ''})"


def check_declared(owner: str, values, constraints: dict) -> None:
    """Every ``constraints`` entry (a field name or dotted path -> a tuple of choices or a `Range`)
    against the attribute of ``values`` it names; errors read ``<owner>.<key>=<value>``."""
    for path, rule in constraints.items():
        value = values
        for part in path.split("."):
            value = getattr(value, part)
        key = f"{owner}.{path}"
        if isinstance(rule, Range):
            rule.check(key, value)
        else:
            check_choice(key, value, tuple(rule))
