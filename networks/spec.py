"""`NetworkSpec`: a frozen description of a network, shared by every learner."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from core.checks import check_choice
from core.errors import ConfigError

KINDS = ("mlp", "convnet")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "gelu", "identity")
INITS = ("default", "kaiming", "xavier", "orthogonal")


@dataclass(frozen=True, kw_only=True)
class NetworkSpec:
    """What a network is, without its weights.

    ``input_shape`` and ``n_classes`` may stay ``None`` in presets; they are
    filled from the data with :meth:`resolve` before building.

    MLP: ``widths`` are the hidden layers; each is one block.
    ConvNet: ``channels`` are conv blocks (conv, optional batch norm,
    activation, pooling ``pool[i]``, 1 = none), then ``widths`` are fully
    connected blocks. ``adaptive_pool`` = s > 0 ends the last conv block with an
    adaptive average pooling to s x s (LLS-DNN's SmallConv and VGG8). Both end
    in a linear ``head`` to ``n_classes`` unless ``head`` is False.
    """

    kind: str = "mlp"
    input_shape: tuple[int, ...] | None = None
    widths: tuple[int, ...] = (100,)
    channels: tuple[int, ...] = ()
    kernel_size: int = 3
    pool: tuple[int, ...] = ()
    pool_type: str = "max"
    adaptive_pool: int = 0              # convnet: average-pool the last conv block to s x s (0 = none)
    n_classes: int | None = None
    activation: str = "relu"
    leaky_slope: float = 0.01
    batch_norm: bool = False
    bias: bool = True
    head: bool = True
    init: str = "default"

    def __post_init__(self):
        # lists arrive from YAML; a frozen spec keeps tuples so it hashes.
        for name in ("widths", "channels", "pool"):
            value = getattr(self, name)
            object.__setattr__(self, name, tuple(int(v) for v in (value or ())))
        if self.input_shape is not None:
            object.__setattr__(self, "input_shape", tuple(int(v) for v in self.input_shape))
        check_choice("network.kind", self.kind, KINDS)
        check_choice("network.activation", self.activation, ACTIVATIONS)
        check_choice("network.init", self.init, INITS)
        check_choice("network.pool_type", self.pool_type, ("max", "avg"))
        if self.kind == "mlp" and self.channels:
            raise ConfigError(f"network.channels={list(self.channels)} is only for kind=convnet; "
                              "an MLP takes its hidden sizes in network.widths")
        if self.kind == "convnet":
            if not self.channels:
                raise ConfigError("network.kind=convnet needs network.channels (e.g. [32, 64, 128])")
            if self.pool and len(self.pool) != len(self.channels):
                raise ConfigError(f"network.pool has {len(self.pool)} entries but network.channels has "
                                  f"{len(self.channels)}; give one pooling size per conv block (1 = none)")
        if self.adaptive_pool < 0 or (self.adaptive_pool and self.kind != "convnet"):
            raise ConfigError(f"network.adaptive_pool={self.adaptive_pool} must be 0 (none) or, for kind=convnet, "
                              "the positive side of the last conv block's pooled map")
        if any(w <= 0 for w in self.widths + self.channels):
            raise ConfigError(f"network widths/channels must be positive, got {self.widths + self.channels}")

    @property
    def n_blocks(self) -> int:
        return len(self.channels) + len(self.widths)

    def resolve(self, input_shape, n_classes) -> "NetworkSpec":
        """Fill the data-dependent fields, refusing a spec that contradicts the data."""
        input_shape = tuple(int(v) for v in input_shape)
        if self.input_shape is not None and _numel(self.input_shape) != _numel(input_shape):
            raise ConfigError(
                f"network.input_shape={list(self.input_shape)} does not match the data's input shape "
                f"{list(input_shape)}; remove network.input_shape to take it from the data")
        if self.n_classes is not None and n_classes is not None and self.n_classes != n_classes:
            raise ConfigError(f"network.n_classes={self.n_classes} but the data has {n_classes} classes/outputs; "
                              "remove network.n_classes to take it from the data")
        if self.kind == "convnet" and len(input_shape) != 3:
            raise ConfigError(f"network.kind=convnet needs image data (channels, height, width); the data has "
                              f"input shape {list(input_shape)}: use an MLP preset such as mlp_small")
        shape = self.input_shape if self.input_shape is not None and len(self.input_shape) == len(input_shape) else input_shape
        return dataclasses.replace(self, input_shape=shape,
                                   n_classes=self.n_classes if n_classes is None else int(n_classes))

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self)}


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n

