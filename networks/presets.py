"""Named networks usable from YAML (`network=NAME`) and from Python."""
from __future__ import annotations

import dataclasses

from core.errors import unknown_name
from networks.spec import NetworkSpec

PRESETS: dict[str, NetworkSpec] = {
    "mlp_small": NetworkSpec(kind="mlp", widths=(64, 64)),
    "mlp_2x1000": NetworkSpec(kind="mlp", widths=(1000, 1000)),
    "mlp_3x1000": NetworkSpec(kind="mlp", widths=(1000, 1000, 1000)),
    "mlp_4x2000": NetworkSpec(kind="mlp", widths=(2000, 2000, 2000, 2000)),
    # Nøkland 2016 (DFA), permutation-invariant MNIST: its shallow and its deep tanh MLP
    "dfa_shallow": NetworkSpec(kind="mlp", widths=(800,), activation="tanh"),
    "dfa_deep": NetworkSpec(kind="mlp", widths=(240,) * 7, activation="tanh"),
    # LLS-DNN (mapolinario94/LLS-DNN, models/lls_smallconv.py, lls_vgg.py): conv3x3-BN-LeakyReLU
    # blocks, 2x2 max pooling where the reference pools, adaptive average pooling of the last conv
    # map to 2x2, then FC-BN-LeakyReLU blocks.
    # smallconv: conv32 -> max -> conv64 -> max -> conv128 -> avg(2x2) -> FC512
    "smallconv": NetworkSpec(kind="convnet", channels=(32, 64, 128), pool=(2, 2, 1), adaptive_pool=2,
                             widths=(512,), batch_norm=True, activation="leaky_relu"),
    # smallconv_l (the paper's Table 2): the same with 96, 192, 512 channels and FC1024
    "smallconv_l": NetworkSpec(kind="convnet", channels=(96, 192, 512), pool=(2, 2, 1), adaptive_pool=2,
                               widths=(1024,), batch_norm=True, activation="leaky_relu"),
    # vgg8: conv128, conv256, max, conv256, conv256, max, conv512, max, conv512, avg(2x2), FC1024
    "vgg8": NetworkSpec(kind="convnet", channels=(128, 256, 256, 256, 512, 512), pool=(1, 2, 1, 2, 2, 1),
                        adaptive_pool=2, widths=(1024,), batch_norm=True, activation="leaky_relu"),
}


def get_preset(name: str, **overrides) -> NetworkSpec:
    """The preset ``name`` with ``overrides`` applied (None values are ignored)."""
    if name not in PRESETS:
        raise unknown_name("network", name, PRESETS)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(PRESETS[name], **overrides) if overrides else PRESETS[name]


def register_preset(name: str, spec: NetworkSpec) -> None:
    PRESETS[name] = spec
