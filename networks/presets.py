"""Named networks usable from YAML (`network=NAME`) and from Python."""
from __future__ import annotations

import dataclasses

from experiments.errors import unknown_name
from networks.spec import NetworkSpec

PRESETS: dict[str, NetworkSpec] = {
    "mlp_small": NetworkSpec(kind="mlp", widths=(64, 64)),
    "mlp_2x1000": NetworkSpec(kind="mlp", widths=(1000, 1000)),
    "mlp_3x1000": NetworkSpec(kind="mlp", widths=(1000, 1000, 1000)),
    "mlp_4x2000": NetworkSpec(kind="mlp", widths=(2000, 2000, 2000, 2000)),
    # LLS spec, "smallconv": conv32-conv64-conv128 + FC512, batch norm, leaky ReLU,
    # pooling after every conv block.
    "smallconv": NetworkSpec(kind="convnet", channels=(32, 64, 128), pool=(2, 2, 2), widths=(512,),
                             batch_norm=True, activation="leaky_relu"),
}


def get_preset(name: str, **overrides) -> NetworkSpec:
    """The preset ``name`` with ``overrides`` applied (None values are ignored)."""
    if name not in PRESETS:
        raise unknown_name("network", name, PRESETS)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def register_preset(name: str, spec: NetworkSpec) -> None:
    PRESETS[name] = spec
