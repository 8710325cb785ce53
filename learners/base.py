"""The `Learner` contract, its tags, the registry and the `LayerwiseLearner` base.

A learner is a frozen keyword-only dataclass of hyperparameters (every field
defaulted, no logic in construction). Training state lives in a separate
object returned by ``init``; ``update`` takes one step. Torch learners update
their state in place and return it, so ``state, metrics = learner.update(state,
batch)`` is the one idiom for all backends.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from core.checks import check_declared
from core.errors import ConfigError, unknown_name

LOCALITIES = ("global", "blockwise", "neuronwise")
BACKENDS = ("torch", "numpy")


@dataclass(frozen=True, kw_only=True)
class Tags:
    """What kind of rule a learner is; read by the fit loop, the tests and the reports."""

    locality: str                     # global | blockwise | neuronwise
    crosses_blocks: bool              # does any gradient/error signal cross a block boundary?
    backend: str = "torch"            # torch | numpy
    population: bool = False          # keeps a population of candidate weights (swarms)
    supports_conv: bool = True
    full_batch: bool = False          # wants the whole training set as one batch
    tasks: tuple[str, ...] = ("classification",)

    def __post_init__(self):
        if self.locality not in LOCALITIES:
            raise ValueError(f"locality {self.locality!r} not in {LOCALITIES}")
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r} not in {BACKENDS}")


@dataclass(frozen=True, kw_only=True)
class DataInfo:
    """What a learner may know about the data and the budget before training."""

    input_shape: tuple[int, ...]
    n_classes: int                    # classes, or outputs for regression
    n_train: int
    task: str = "classification"
    batch_size: int = 32
    steps_per_epoch: int = 1
    n_epochs: int = 1
    device: str = "cpu"

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.n_epochs


class Learner:
    """Base of every learning rule. Subclasses are ``@dataclass(frozen=True, kw_only=True)``."""

    name: ClassVar[str] = ""
    tags: ClassVar[Tags]

    # Hyperparameters the contract suite uses to check learning on toy data in
    # a few seconds (sklearn's `_get_check_params` idea); empty means defaults.
    contract_params: ClassVar[dict] = {}
    contract_epochs: ClassVar[int] = 30
    # The allowed values of hyperparameters, declared once (sklearn's parameter constraints): a
    # field name or dotted path -> a tuple of choices or a core.checks.Range. `check_hyperparameters`
    # (called by the loop before `init`) checks them all; checks that join several fields or the
    # data stay in the rule's `init`.
    constraints: ClassVar[dict] = {}
    # The few hyperparameters worth tuning, by dotted path, with their ranges (learners.search);
    # experiments.tune gives every learner the same trial budget over its own space.
    search_space: ClassVar[dict] = {}

    def check_hyperparameters(self) -> None:
        """Every declared constraint holds, or a one-line ConfigError names the key, value and allowed."""
        check_declared(self.name, self, self.constraints)

    def __init_subclass__(cls, **kwargs):
        # every rule's own `init` starts with the declared checks, whoever calls it (the loop, a test,
        # a wrapper); an override calling its parent's `init` checks once
        super().__init_subclass__(**kwargs)
        own = cls.__dict__.get("init")
        if own is None:
            return

        @functools.wraps(own)
        def checked_init(self, network, data_info, seed):
            if type(self).init is checked_init:
                self.check_hyperparameters()
            return own(self, network, data_info, seed)

        cls.init = checked_init

    def init(self, network, data_info: DataInfo, seed: int):
        raise NotImplementedError

    def update(self, state, batch) -> tuple[Any, dict[str, float]]:
        raise NotImplementedError

    def predict(self, state, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def begin_task(self, state, task):
        return state

    def end_task(self, state, task):
        return state

    def block_metrics(self, state, x: torch.Tensor, y: torch.Tensor) -> dict[str, list[float]]:
        """Per-block evaluation metrics (e.g. probe accuracy), computed once per epoch."""
        return {}

    def task_metrics(self, state) -> dict[str, list[float]]:
        """Per-layer metrics recorded after each ``end_task`` of a continual run (e.g. subspace sizes)."""
        return {}

    def block_parameters(self, state) -> list[list[torch.Tensor]]:
        """The trainable tensors of each block, for the locality checks."""
        return [list(block.parameters()) for block in state.network.blocks]

    # Hooks through which generic code (the loop, the observers, wrappers such as the Hebbian
    # projection) asks a rule about its state, so that nothing outside the rule reads the state's fields.

    def trainable_modules(self, state) -> list[torch.nn.Module]:
        """Every module whose parameters the rule trains: its network and what it adds (projections,
        local heads), for counting parameters. The default reads a `TorchState`."""
        own = getattr(state, "network", None)
        modules = [own] if isinstance(own, torch.nn.Module) else []
        extra = getattr(state, "extra", None) or {}
        return modules + [v for v in extra.values() if isinstance(v, torch.nn.Module)]

    def optimizers(self, state) -> list[torch.optim.Optimizer]:
        """The torch optimisers the rule steps (a continual wrapper resets them at a task boundary).
        The default reads a `TorchState`'s ``extra`` and an ``optimizer`` field."""
        found = []
        extra = getattr(state, "extra", None) or {}
        for value in list(extra.values()) + [getattr(state, "optimizer", None)]:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                if isinstance(item, torch.optim.Optimizer) and item not in found:
                    found.append(item)
        return found

    def network_input(self, state, x: torch.Tensor) -> torch.Tensor:
        """What the network's first block reads for input ``x`` at prediction time (a rule that embeds a
        label into the input gives its neutral label); the observers feed backprop's twin with it."""
        return x

    def hyperparameters(self) -> dict:
        return _to_plain(dataclasses.asdict(self))


def _to_plain(value):
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


@dataclass
class TorchState:
    """Training state of a torch learner: the network plus whatever the rule keeps."""

    network: torch.nn.Module
    step: int = 0
    extra: dict = dataclasses.field(default_factory=dict)


class LayerwiseLearner(Learner):
    """Base of layer-local rules: one pass over the blocks, each updated on a detached input.

    Subclasses implement ``update_block(state, i, h, batch) -> (h_next, metrics)``,
    where ``h_next`` must already be detached; the base loops, prefixes metric
    names with the block index and counts steps. ``first_input`` and
    ``after_blocks`` (e.g. to train a readout on detached features) are hooks.
    """

    def first_input(self, state, batch):
        return batch[0]

    def update_block(self, state, i: int, h, batch):
        raise NotImplementedError

    def after_blocks(self, state, h, batch) -> dict[str, float]:
        return {}

    def blocks_to_update(self, state) -> range:
        """All blocks (simultaneous schedule); greedy schedules override this."""
        return range(state.network.n_blocks)

    def update(self, state, batch):
        h = self.first_input(state, batch)
        metrics: dict[str, float] = {}
        active = self.blocks_to_update(state)
        last = max(active) if len(active) else -1
        for i in range(last + 1):
            if i in active:
                h, block_metrics = self.update_block(state, i, h, batch)
                for key, value in block_metrics.items():
                    metrics[f"{key}/{i}"] = value
            else:
                h = self.forward_frozen_block(state, i, h)
        metrics.update(self.after_blocks(state, h, batch))
        state.step += 1
        return state, metrics

    def forward_frozen_block(self, state, i, h):
        with torch.no_grad():
            return state.network.run_block(i, h)


@contextlib.contextmanager
def evaluating(module: torch.nn.Module):
    """Eval mode and no autograd for the duration, restoring the previous mode."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, type[Learner]] = {}


def register(name: str):
    """Class decorator: ``@register("forward_forward")``."""
    def wrap(cls):
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"learner name {name!r} registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return wrap


def available_learners() -> list[str]:
    _import_all()
    return sorted(_REGISTRY)


def get_learner_class(name: str) -> type[Learner]:
    _import_all()
    if name not in _REGISTRY:
        raise unknown_name("learner", name, _REGISTRY)
    return _REGISTRY[name]


def make_learner(name: str, **params) -> Learner:
    """Construct a learner by name, turning nested dicts into nested config dataclasses."""
    cls = get_learner_class(name)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ConfigError(f"learner {name!r} has no hyperparameter(s) {', '.join(unknown)}; "
                          f"known: {', '.join(sorted(fields))}")
    defaults = cls()
    for key, value in list(params.items()):
        default = getattr(defaults, key)
        if dataclasses.is_dataclass(default) and isinstance(value, dict):
            sub = {f.name for f in dataclasses.fields(default)}
            bad = sorted(set(value) - sub)
            if bad:
                raise ConfigError(f"learner {name!r}: {key} has no key(s) {', '.join(bad)}; "
                                  f"known: {', '.join(sorted(sub))}")
            params[key] = dataclasses.replace(default, **value)
        elif isinstance(value, list) and isinstance(default, tuple):
            params[key] = tuple(value)
    return cls(**params)


def _import_all():
    # Learners register on import; importing the package imports every rule module.
    import learners  # noqa: F401
