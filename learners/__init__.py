"""Learning rules behind one interface. Every module here that defines a rule registers it."""
import importlib
import pkgutil

from learners.base import (DataInfo, LayerwiseLearner, Learner, Tags, TorchState, available_learners,
                           evaluating, get_learner_class, make_learner, register)

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_") and _module.name != "base":
        importlib.import_module(f"learners.{_module.name}")

__all__ = ["DataInfo", "LayerwiseLearner", "Learner", "Tags", "TorchState", "available_learners",
           "evaluating", "get_learner_class", "make_learner", "register"]
