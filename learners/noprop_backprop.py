"""NoProp's backprop baseline (Li, Teh, Pascanu 2025, Eq. 17–19): the same T blocks, trained end to end.

z_0 ~ N(0, I), z_t = (1 − α_t) z_{t−1} + α_t û_θt(z_{t−1}, x) with α_t = tanh(w_t)
learnable and û_θt = softmax(logits_t) · W_Embed, as in NoProp-DT; the
cross-entropy is read from the last block's logits and the gradient runs back
through the whole chain.

The read-out is pinned: a separate linear head on z_T was seen to
stall near 68% on MNIST, so the loss and the prediction use logits_T itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from core.checks import Range
from learners._noprop_base import NoPropBase, softmax_mix
from learners._optim import OptimizerConfig
from learners.base import Tags, register
from learners.search import LogUniform


@register("noprop_backprop")
@dataclass(frozen=True, kw_only=True)
class NoPropBackprop(NoPropBase):
    """``n_blocks`` is T; ``mix_init`` is the initial w_t of α_t = tanh(w_t) (not given in the
    paper; 1.0 puts α_t at 0.76). The optimiser defaults to NoProp-DT's (Table 3: "same
    optimiser settings")."""

    n_blocks: int = 10
    mix_init: float = 1.0
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adamw", lr=1e-3,
                                                                               weight_decay=1e-3))

    tags = Tags(locality="global", crosses_blocks=True, backend="torch")
    contract_params = {"n_blocks": 3, "optimizer": {"name": "adamw", "lr": 0.005, "weight_decay": 1e-3}}
    contract_epochs = 12
    # tuned by experiments.tune, the same trial budget for every learner
    search_space = {"optimizer.lr": LogUniform(1e-4, 1e-2), "optimizer.weight_decay": LogUniform(1e-5, 1e-2)}
    constraints = {**NoPropBase.constraints, "n_blocks": Range(1)}

    def init(self, network, data_info, seed):
        mix = nn.Parameter(torch.full((self.n_blocks,), float(self.mix_init)))
        model = self.build(network, data_info, seed, n_blocks=self.n_blocks, mix=mix)
        # θ_out (the linear head on z_T) is built but not trained: the read-out is logits_T.
        params = [p for name, p in model.named_parameters() if not name.startswith("classifier.")]
        return self.make_state(model, data_info, seed, [params])

    def logits(self, state, x, gen) -> torch.Tensor:
        model = state.network
        W = model.embedding.weight
        z = torch.randn(len(x), W.shape[1], generator=gen, device=x.device)
        alpha = torch.tanh(model.mix)
        for t, block in enumerate(model.blocks):
            logits = block(x, z)
            z = (1 - alpha[t]) * z + alpha[t] * softmax_mix(logits, W)   # Eq. 18
        return logits

    def loss(self, state, x, y, gen):
        return F.cross_entropy(self.logits(state, x, gen), y), {}

    def sample_scores(self, state, x, gen, **kwargs):
        return F.log_softmax(self.logits(state, x, gen), dim=1)

    def block_metrics(self, state, x, y):
        return self.run_spread(state, x, y)
