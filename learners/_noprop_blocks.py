"""NoProp's networks: the denoising block built from a `NetworkSpec`, class embeddings, the model.

A denoising block û_θt(z, x[, t]) (paper §2.3.2, Fig. 6) reads the raw input x
through a trunk taken from the run's network spec (an MLP for `kind: mlp`, the
conv stack plus its FC layers for `kind: convnet`), the noisy label embedding z
through an FC path with a skip connection, and for CT/FM the time t through a
sinusoidal embedding and an FC layer; the features are concatenated and FC
layers output logits over the classes. DT/CT take û = softmax(logits) · W_Embed,
FM takes v̂ = logits · W_Embed (done by the learners, not here).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from core.errors import ConfigError
from networks.build import _activation, initialise
from networks.spec import NetworkSpec

EMBEDDINGS = ("one_hot", "learned", "prototype")


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Positional embedding of t in [0, 1] (t scaled by 1000, the transformer/DDPM form)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=t.dtype, device=t.device) / max(half, 1))
    angles = (1000.0 * t.reshape(-1, 1)) * freqs
    emb = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return emb if dim % 2 == 0 else torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)


def _trunk(spec: NetworkSpec) -> tuple[nn.Sequential, int]:
    """The x path: the spec's conv blocks (if any) then its FC widths; returns (module, features)."""
    layers: list[nn.Module] = []
    shape = tuple(spec.input_shape)
    if spec.kind == "convnet":
        in_ch, h, w = shape
        for i, out_ch in enumerate(spec.channels):
            layers.append(nn.Conv2d(in_ch, out_ch, spec.kernel_size, padding=spec.kernel_size // 2, bias=spec.bias))
            if spec.batch_norm:
                layers.append(nn.BatchNorm2d(out_ch))
            layers.append(_activation(spec))
            p = spec.pool[i] if spec.pool else 1
            if p > 1:
                layers.append(nn.MaxPool2d(p) if spec.pool_type == "max" else nn.AvgPool2d(p))
                h, w = h // p, w // p
            in_ch = out_ch
        shape = (in_ch, h, w)
    layers.append(nn.Flatten())
    features = int(np.prod(shape))
    for width in spec.widths:
        layers.append(nn.Linear(features, width, bias=spec.bias))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(width))
        layers.append(_activation(spec))
        features = width
    return nn.Sequential(*layers), features


class DenoisingBlock(nn.Module):
    """û_θ(z, x[, t]) -> logits over the classes (paper §2.3.2)."""

    def __init__(self, spec: NetworkSpec, embed_dim: int, n_classes: int, *, time_dim: int = 0,
                 head_widths: tuple[int, ...] = ()):
        super().__init__()
        self.x_path, width = _trunk(spec)
        norm = (lambda n: nn.BatchNorm1d(n)) if spec.batch_norm else (lambda n: nn.Identity())
        self.z_in = nn.Sequential(nn.Linear(embed_dim, width, bias=spec.bias), norm(width), _activation(spec))
        self.z_skip = nn.Sequential(nn.Linear(width, width, bias=spec.bias), norm(width), _activation(spec))
        self.time_dim = time_dim
        self.t_path = (nn.Sequential(nn.Linear(time_dim, width, bias=spec.bias), _activation(spec))
                       if time_dim else None)
        features = width * (3 if time_dim else 2)
        head: list[nn.Module] = []
        for w in head_widths or (width,):
            head += [nn.Linear(features, w, bias=spec.bias), norm(w), _activation(spec)]
            features = w
        head.append(nn.Linear(features, n_classes, bias=spec.bias))
        self.head = nn.Sequential(*head)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The x path alone; inference computes it once and reuses it at every step."""
        return self.x_path(x)

    def forward(self, x: torch.Tensor | None, z: torch.Tensor, t: torch.Tensor | None = None, *,
                hx: torch.Tensor | None = None) -> torch.Tensor:
        hz = self.z_in(z)
        hz = hz + self.z_skip(hz)
        parts = [self.x_path(x) if hx is None else hx, hz]
        if self.t_path is not None:
            parts.append(self.t_path(sinusoidal_embedding(t, self.time_dim)))
        return self.head(torch.cat(parts, dim=1))

    def weight_layers(self) -> list[nn.Module]:
        return [m for m in self.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


class ClassEmbedding(nn.Module):
    """W_Embed (m x d), paper §2.2.1: fixed one-hot, learned (orthogonal init) or prototype."""

    def __init__(self, kind: str, n_classes: int, dim: int, input_numel: int, generator: torch.Generator):
        super().__init__()
        if kind not in EMBEDDINGS:
            raise ConfigError(f"embedding={kind!r} is not known; allowed: {', '.join(EMBEDDINGS)}")
        self.kind = kind
        if kind == "one_hot":
            self.register_buffer("weight", torch.eye(n_classes))
            return
        d = dim if kind == "learned" else input_numel
        w = torch.empty(n_classes, d)
        # "orthogonal initialisation when possible": torch makes the rows orthonormal for d >= m
        # and the columns otherwise.
        nn.init.orthogonal_(w, generator=generator)
        self.weight = nn.Parameter(w)

    @property
    def dim(self) -> int:
        return self.weight.shape[1]

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.weight[y]

    @torch.no_grad()
    def set_prototypes(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Each class's image with the smallest median distance to the other images of its class."""
        flat = x.reshape(len(x), -1).to(self.weight.dtype)
        for c in torch.unique(y).tolist():
            members = flat[y == c]
            dist = torch.cdist(members, members)
            if len(members) > 1:
                # the median over the *other* images: drop each row's zero self-distance
                dist = dist.sort(dim=1).values[:, 1:]
            self.weight[c] = members[dist.median(dim=1).values.argmin()]


class NoPropModel(nn.Module):
    """Everything a NoProp learner trains: the denoising blocks, W_Embed, the output head θ_out.

    ``blocks`` are the unit of locality (DT: the T blocks; CT/FM: one shared block).
    ``schedule`` (CT's learned ᾱ) and ``mix`` (the backprop baseline's α_t) are optional.
    """

    def __init__(self, blocks: list[DenoisingBlock], embedding: ClassEmbedding, n_classes: int,
                 schedule: nn.Module | None = None, mix: nn.Parameter | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.embedding = embedding
        self.classifier = nn.Linear(embedding.dim, n_classes)   # θ_out, Eq. 14
        self.schedule = schedule
        self.mix = mix

    @property
    def n_blocks(self) -> int:
        return len(self.blocks)

    def shared_parameters(self) -> list[torch.Tensor]:
        in_blocks = {id(p) for p in self.blocks.parameters()}
        return [p for p in self.parameters() if id(p) not in in_blocks]


def build_model(spec: NetworkSpec, *, n_blocks: int, embedding: str, embedding_dim: int, seed: int,
                time_dim: int = 0, head_widths=(), batch_norm: bool | None = None,
                schedule: nn.Module | None = None, mix: nn.Parameter | None = None) -> NoPropModel:
    """The model for a resolved spec; block t is initialised from (seed, t) like `networks.build`."""
    if n_blocks < 1:
        raise ConfigError(f"n_blocks must be >= 1, got {n_blocks}")
    if batch_norm is not None:
        spec = dataclasses.replace(spec, batch_norm=bool(batch_norm))
    n_classes = int(spec.n_classes)
    gen = torch.Generator().manual_seed(int(seed))
    emb = ClassEmbedding(embedding, n_classes, int(embedding_dim), int(np.prod(spec.input_shape)), gen)
    blocks = []
    for t in range(n_blocks):
        block = DenoisingBlock(spec, emb.dim, n_classes, time_dim=time_dim, head_widths=tuple(head_widths))
        initialise(block, spec, seed=int(seed) * 1009 + t)
        blocks.append(block)
    model = NoPropModel(blocks, emb, n_classes, schedule=schedule, mix=mix)
    # θ_out starts at zero (the paper does not give its initialisation): its argmax then follows z
    # from the first steps, where a random start (entries up to ±0.3) took about a thousand Adam
    # steps at lr 1e-3 to outgrow, and the chain's accuracy is read through it.
    nn.init.zeros_(model.classifier.weight)
    nn.init.zeros_(model.classifier.bias)
    return model
