"""Typed schemas for the config groups ``loop``, ``data`` and ``network`` (hydra's ConfigStore).

Each group's YAML starts from its schema, so a value of the wrong type is refused while the
config is composed, with the key, the value and the expected type (``loop.n_epochs=abc``: "Value
'abc' of type 'str' could not be converted to Integer, full_key: loop.n_epochs"), instead of
failing later inside the loop. The schemas are made from the dataclasses the code runs
(`LoopConfig`, `NetworkSpec`), so a field added there is typed here with no second list.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from hydra.core.config_store import ConfigStore

from experiments.fit import LoopConfig
from networks import NetworkSpec


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def schema_of(cls, *, optional: bool = False, extra: tuple = ()) -> type:
    """A mutable dataclass with ``cls``'s fields, types and defaults (nested dataclasses too).

    ``optional``: every field may be null and defaults to null, for groups whose files name only
    what they change (a network preset and the fields set on top of it).
    """
    hints = typing.get_type_hints(cls)
    fields = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        inner = args[0] if len(args) == 1 and dataclasses.is_dataclass(args[0]) else None
        if inner is not None:
            kind = Optional[schema_of(inner)]
        if optional:
            fields.append((f.name, Optional[kind], dataclasses.field(default=None)))
            continue
        if f.default is not dataclasses.MISSING:
            default = _plain(f.default)
            spec = dataclasses.field(default_factory=lambda d=default: d) if isinstance(default, list) \
                else dataclasses.field(default=default)
        else:
            spec = dataclasses.field(default_factory=lambda f=f: _plain(f.default_factory()))
        fields.append((f.name, kind, spec))
    return dataclasses.make_dataclass(f"{cls.__name__}Schema", fields + list(extra))


@dataclasses.dataclass
class DataSchema:
    name: str = "digits"
    # a count of samples (an int) or a fraction of the training split (a float in (0, 1)); null: the
    # dataset's default
    val_size: Any = None
    normalize: Optional[str] = None
    options: dict[str, Any] = dataclasses.field(default_factory=dict)


LoopSchema = schema_of(LoopConfig)
NetworkSchema = schema_of(NetworkSpec, optional=True,
                          extra=(("preset", Optional[str], dataclasses.field(default=None)),))


def register() -> None:
    """Put the schemas in hydra's ConfigStore (each group's files list ``<group>_schema`` first)."""
    store = ConfigStore.instance()
    store.store(group="loop", name="loop_schema", node=LoopSchema)
    store.store(group="data", name="data_schema", node=DataSchema)
    store.store(group="network", name="network_schema", node=NetworkSchema)
