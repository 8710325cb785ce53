"""Build a torch network from a `NetworkSpec`: ordered blocks plus a linear head."""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from networks.spec import NetworkSpec


class Network(nn.Module):
    """A feed-forward network as an ordered list of blocks and a head.

    ``blocks[i]`` maps the output of block i-1 (or the input) to its own
    output; blocks are the unit of locality for layer-local learners. The head
    (a plain ``nn.Linear``) maps the last block's output to ``n_classes``.
    """

    def __init__(self, spec: NetworkSpec, blocks: list[nn.Module], head: nn.Module | None,
                 block_shapes: list[tuple[int, ...]]):
        super().__init__()
        self.spec = spec
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.block_shapes = block_shapes  # output shape of each block, without the batch dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return self.head(x) if self.head is not None else x

    def run_block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return self.blocks[i](x)

    def forward_blocks(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every block's output in order (the head is not applied)."""
        outputs = []
        for block in self.blocks:
            x = block(x)
            outputs.append(x)
        return outputs

    def block_width(self, i: int) -> int:
        """Units of block i: features for a linear block, channels for a conv block."""
        return self.block_shapes[i][0]

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def weight_layer(self, i: int) -> nn.Module:
        """The Linear/Conv layer of block i."""
        return next(m for m in self.blocks[i] if isinstance(m, (nn.Linear, nn.Conv2d)))


def _activation(spec: NetworkSpec, after_norm: bool = False) -> nn.Module:
    # After batch norm, (leaky) ReLU overwrites the norm's output: nothing else holds that tensor
    # (the norm's backward needs its input, not its output), and a step saves one activation-sized
    # allocation and pass per block (~4% of an LLS step on smallconv, 1 thread). Elsewhere the input
    # may be a Linear/Conv output that hooks or callers keep (learners/ewc.py), so not in place.
    return {
        "relu": nn.ReLU(inplace=after_norm),
        "leaky_relu": nn.LeakyReLU(spec.leaky_slope, inplace=after_norm),
        "elu": nn.ELU(),
        "tanh": nn.Tanh(),
        "sigmoid": nn.Sigmoid(),
        "gelu": nn.GELU(),
        "identity": nn.Identity(),
    }[spec.activation]


def build(spec: NetworkSpec, seed: int) -> Network:
    """A freshly initialised network; the same spec and seed give the same weights."""
    if spec.input_shape is None or spec.n_classes is None:
        raise ConfigError("network spec has no input_shape/n_classes yet: call spec.resolve(input_shape, "
                          "n_classes) with the data's shape first")
    # torch's layer constructors draw their own init from the global RNG; fork it
    # so building a network never shifts anyone else's random stream.
    with torch.random.fork_rng(devices=[]):
        net = _assemble(spec)
    initialise(net, spec, seed)
    return net


def _assemble(spec: NetworkSpec) -> Network:
    blocks: list[nn.Module] = []
    shapes: list[tuple[int, ...]] = []
    shape = tuple(spec.input_shape)
    if spec.kind == "convnet":
        in_ch = shape[0]
        h, w = shape[1], shape[2]
        for i, out_ch in enumerate(spec.channels):
            layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, spec.kernel_size, padding=spec.kernel_size // 2,
                                                 bias=spec.bias)]
            if spec.batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(_activation(spec, after_norm=spec.batch_norm))
            p = spec.pool[i] if spec.pool else 1
            if p > 1:
                if h < p or w < p:
                    raise ConfigError(f"network.pool[{i}]={p} is larger than the {h}x{w} feature map")
                layers.append(nn.MaxPool2d(p) if spec.pool_type == "max" else nn.AvgPool2d(p))
                h, w = h // p, w // p
            if spec.adaptive_pool and i == len(spec.channels) - 1:
                layers.append(nn.AdaptiveAvgPool2d(spec.adaptive_pool))
                h = w = spec.adaptive_pool
            blocks.append(nn.Sequential(*layers))
            shapes.append((out_ch, h, w))
            in_ch = out_ch
        shape = (in_ch, h, w)
    in_features = int(np.prod(shape))
    for j, width in enumerate(spec.widths):
        layers = [nn.Flatten()] if j == 0 else []
        layers.append(nn.Linear(in_features, width, bias=spec.bias))
        if spec.batch_norm and spec.kind == "convnet":
            layers.append(nn.BatchNorm1d(width))
        layers.append(_activation(spec, after_norm=spec.batch_norm and spec.kind == "convnet"))
        blocks.append(nn.Sequential(*layers))
        shapes.append((width,))
        in_features = width
    head = None
    if spec.head:
        head = nn.Sequential(nn.Flatten(), nn.Linear(in_features, spec.n_classes, bias=spec.bias)) \
            if not spec.widths else nn.Linear(in_features, spec.n_classes, bias=spec.bias)
    return Network(spec, blocks, head, shapes)


def initialise(net: nn.Module, spec: NetworkSpec, seed: int) -> None:
    """Seeded initialisation, visiting layers in module order.

    ``default`` reproduces torch's own Linear/Conv init (kaiming uniform with
    a=sqrt(5), bias uniform in +-1/sqrt(fan_in)) but from an explicit generator,
    so that it does not depend on the global RNG.
    """
    gen = torch.Generator().manual_seed(int(seed))
    gain_name = {"leaky_relu": "leaky_relu", "tanh": "tanh", "sigmoid": "sigmoid"}.get(spec.activation, "relu")
    with torch.no_grad():
        for module in net.modules():
            if not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            weight = module.weight
            fan_in = weight[0].numel()
            if spec.init == "default":
                nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=gen)
            elif spec.init == "kaiming":
                nn.init.kaiming_normal_(weight, nonlinearity=gain_name, generator=gen)
            elif spec.init == "xavier":
                nn.init.xavier_uniform_(weight, generator=gen)
            elif spec.init == "orthogonal":
                nn.init.orthogonal_(weight, generator=gen)
            if module.bias is not None:
                if spec.init == "default":
                    bound = 1.0 / math.sqrt(fan_in)
                    nn.init.uniform_(module.bias, -bound, bound, generator=gen)
                else:
                    nn.init.zeros_(module.bias)


def to_numpy(net: Network) -> list[dict[str, np.ndarray]]:
    """The weights as float64 numpy arrays, one dict per Linear/Conv layer, head last.

    Each dict holds ``W`` (out, in[, kh, kw]) and ``b`` (out,) (zeros when the
    network has no bias), identical to the torch weights.
    """
    layers = []
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            W = module.weight.detach().cpu().numpy().astype(np.float64)
            b = (module.bias.detach().cpu().numpy().astype(np.float64) if module.bias is not None
                 else np.zeros(W.shape[0]))
            layers.append({"W": W, "b": b})
    return layers


def from_numpy(net: Network, layers: list[dict[str, np.ndarray]]) -> Network:
    """Write numpy weights (as produced by `to_numpy`) back into ``net`` in place."""
    modules = [m for m in net.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if len(modules) != len(layers):
        raise ValueError(f"got {len(layers)} weight layers for a network with {len(modules)}")
    with torch.no_grad():
        for module, layer in zip(modules, layers):
            module.weight.copy_(torch.as_tensor(layer["W"], dtype=module.weight.dtype))
            if module.bias is not None:
                module.bias.copy_(torch.as_tensor(layer["b"], dtype=module.bias.dtype))
    return net
