"""Every learner's declared constraints (``Learner.constraints``) name real hyperparameters, hold for its
defaults, and make ``init`` refuse a bad value with one line naming the key, the value and what is allowed."""
from __future__ import annotations

import copy
import dataclasses
import re

import pytest

from core.checks import Range
from core.errors import ConfigError
from learners import available_learners, get_learner_class, make_learner
from learners.base import DataInfo
from networks import build, get_preset

LEARNERS = available_learners()
DECLARED = [(name, path, rule) for name in LEARNERS for path, rule in get_learner_class(name).constraints.items()]
CHOICES = [(name, path, rule) for name, path, rule in DECLARED if not isinstance(rule, Range)]
# one value just outside each bound of each declared interval
OUTSIDE = [(name, path, value) for name, path, rule in DECLARED if isinstance(rule, Range)
           for value in ([] if rule.low is None else [rule.low if rule.low_open else rule.low - 1])
           + ([] if rule.high is None else [rule.high + 1])]


def _replaced(obj, path: str, value):
    """``obj`` with the attribute at dotted ``path`` set to ``value`` (frozen dataclasses, nested)."""
    head, _, rest = path.partition(".")
    return dataclasses.replace(obj, **{head: _replaced(getattr(obj, head), rest, value) if rest else value})


def _init(learner):
    spec = get_preset("mlp_small").resolve((4,), 3)
    info = DataInfo(input_shape=(4,), n_classes=3, n_train=16, batch_size=16)
    return learner.init(build(spec, 0), info, 0)


@pytest.mark.parametrize("name", LEARNERS)
def test_declared_constraints_name_fields_and_hold_for_the_defaults(name):
    cls = get_learner_class(name)
    for path, rule in cls.constraints.items():
        assert isinstance(rule, (tuple, Range)) and (isinstance(rule, Range) or rule), \
            f"{name}.{path}: a constraint is a non-empty tuple of choices or a Range, got {rule!r}"
        value = cls()
        for part in path.split("."):
            assert dataclasses.is_dataclass(value) and part in {f.name for f in dataclasses.fields(value)}, \
                f"{name}.constraints names {path!r}, but {part!r} is no hyperparameter there"
            value = getattr(value, part)
    cls().check_hyperparameters()
    make_learner(name, **copy.deepcopy(cls.contract_params)).check_hyperparameters()


@pytest.mark.parametrize("name,path,rule", CHOICES, ids=[f"{n}.{p}" for n, p, _ in CHOICES])
def test_init_refuses_an_unknown_choice_in_one_line(name, path, rule):
    learner = _replaced(make_learner(name), path, "__nope__")
    allowed = ", ".join(map(str, rule))
    with pytest.raises(ConfigError, match="^" + re.escape(f"{name}.{path}='__nope__' is not known; allowed: {allowed}")
                       + "$"):
        _init(learner)


@pytest.mark.parametrize("name,path,value", OUTSIDE, ids=[f"{n}.{p}={v!r}" for n, p, v in OUTSIDE])
def test_init_refuses_a_value_out_of_range_in_one_line(name, path, value):
    learner = _replaced(make_learner(name), path, value)
    with pytest.raises(ConfigError, match="^" + re.escape(f"{name}.{path}={value!r} is out of range; allowed: ")
                       + r"[^\n]+$"):
        _init(learner)


def test_a_range_refuses_nan_in_one_line():
    with pytest.raises(ConfigError, match=r"^lr=nan is not a number; give a finite value$"):
        Range(0, low_open=True).check("lr", float("nan"))
