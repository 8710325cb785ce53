"""What the NoProp learners (DT, CT, FM and the same-architecture backprop baseline) share.

Hyperparameters common to all variants, building the model from the run's
`NetworkSpec`, seeded randomness, the prototype embedding, the optimiser step and
stochastic inference averaged over runs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch.nn import functional as F

from core.checks import Range
from core.errors import ConfigError
from core.seeding import seed_stream
from learners._noprop_blocks import EMBEDDINGS, NoPropModel, build_model
from learners._optim import OptimizerConfig, make_optimizer, make_scheduler, optimizer_step
from learners.base import Learner, evaluating

@dataclass
class NoPropState:
    """A NoProp run: the model, one optimiser and schedule per parameter group (in the order the
    update steps them), and what rebuilds its random streams."""

    network: NoPropModel
    optimizers: list[torch.optim.Optimizer]
    schedulers: list
    seed: int
    total_steps: int
    prototypes_set: bool
    step: int = 0


@dataclass(frozen=True, kw_only=True)
class NoPropBase(Learner):
    """Fields every NoProp variant has.

    ``embedding``: one_hot (fixed, d = classes), learned (d = ``embedding_dim``,
    orthogonal init) or prototype (d = input size, initialised with each class's
    most central image). ``head_widths``: the block's FC layers after the
    concatenation (empty = one layer as wide as the trunk). ``batch_norm``: None
    keeps the network spec's setting. ``inference_runs``: stochastic inference
    runs averaged by ``predict`` (and whose spread ``block_metrics`` records).
    ``detach_target``: stop the gradient into W_Embed through the MSE target u_y
    (spec open question 2; the default lets it flow through every term).
    """

    embedding: str = "one_hot"
    embedding_dim: int = 20
    head_widths: tuple[int, ...] = ()
    batch_norm: bool | None = None
    inference_runs: int = 1
    detach_target: bool = False
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(name="adam", lr=1e-3,
                                                                               weight_decay=1e-3))

    constraints = {"embedding": EMBEDDINGS, "embedding_dim": Range(1), "inference_runs": Range(1)}

    # ------------------------------------------------------------------ set-up
    def build(self, network, data_info, seed, **kwargs) -> NoPropModel:
        # per entry, which a declared Range cannot say
        if any(w < 1 for w in self.head_widths):
            raise ConfigError(f"{self.name}.head_widths={self.head_widths!r} has a width below 1; give widths "
                              ">= 1, or () for one layer as wide as the trunk")
        if data_info.task != "classification":
            raise ConfigError(f"learner {self.name!r} does classification only, not {data_info.task}")
        spec = network.spec
        return build_model(spec, embedding=self.embedding, embedding_dim=self.embedding_dim, seed=seed,
                           head_widths=self.head_widths, batch_norm=self.batch_norm, **kwargs)

    def make_state(self, model: NoPropModel, data_info, seed: int, param_groups: list[list[torch.Tensor]],
                   state_type: type[NoPropState] = NoPropState, **fields) -> NoPropState:
        """One optimiser (and schedule) per parameter group, in the order the update steps them;
        ``fields`` fill what a variant's ``state_type`` adds."""
        model = model.to(data_info.device)
        optimizers = [fast_optimizer(group, self.optimizer) for group in param_groups]
        schedulers = [make_scheduler(opt, self.optimizer, data_info.total_steps) for opt in optimizers]
        return state_type(network=model, optimizers=optimizers, schedulers=schedulers, seed=int(seed),
                          total_steps=int(data_info.total_steps),
                          prototypes_set=self.embedding != "prototype", **fields)

    def trainable_modules(self, state: NoPropState) -> list[torch.nn.Module]:
        return [state.network]

    def optimizers(self, state: NoPropState) -> list[torch.optim.Optimizer]:
        return list(state.optimizers)

    # --------------------------------------------------------------- randomness
    @staticmethod
    def generator(state: NoPropState, purpose: str, device) -> torch.Generator:
        """A generator determined by (seed, step, purpose): the state stays a pure record."""
        gen = torch.Generator(device=device)
        gen.manual_seed(seed_stream(state.seed, f"noprop.{purpose}", state.step))
        return gen

    def begin_update(self, state: NoPropState, x, y) -> torch.Generator:
        if not state.prototypes_set:
            # Departure (§2.2.1): the paper picks each class's prototype from the whole training set;
            # a learner only sees batches, so the first batch's most central image per class is used.
            state.network.embedding.set_prototypes(x, y)
            state.prototypes_set = True
        state.network.train()
        return self.generator(state, "update", x.device)

    def end_update(self, state: NoPropState) -> None:
        for sched in state.schedulers:
            sched.step()
        state.step += 1

    def step_group(self, state: NoPropState, index: int, loss: torch.Tensor) -> None:
        optimizer_step(state.optimizers[index], loss)

    # ------------------------------------------------------------------ training
    def loss(self, state: NoPropState, x, y, gen) -> tuple[torch.Tensor, dict[str, float]]:
        """The variant's whole objective on a batch and its parts (CT, FM, the backprop baseline)."""
        raise NotImplementedError

    def update(self, state: NoPropState, batch):
        """One step of the one parameter group on the variant's loss (DT steps its blocks apart)."""
        x, y = batch
        gen = self.begin_update(state, x, y)
        loss, metrics = self.loss(state, x, y, gen)
        self.step_group(state, 0, loss)
        self.end_update(state)
        return state, {"loss": loss.item(), **metrics}

    # --------------------------------------------------------------- inference
    def final_evaluation(self, state) -> bool:
        """True once training is over: CT/FM then integrate with their full step count."""
        return state.step >= state.total_steps

    def sample_scores(self, state, x, gen, **kwargs) -> torch.Tensor:
        """Class scores (log-probabilities) of one stochastic inference run."""
        raise NotImplementedError

    def predict(self, state, x):
        gen = self.generator(state, "predict", x.device)
        with evaluating(state.network):
            probs = sum(self.sample_scores(state, x, gen).softmax(1) for _ in range(self.inference_runs))
        return torch.log(probs / self.inference_runs + 1e-12)

    def run_spread(self, state, x, y, **kwargs) -> dict[str, list[float]]:
        """Mean and spread of accuracy over ``inference_runs`` single runs (paper Table 1 averages 5)."""
        gen = self.generator(state, "spread", x.device)
        with evaluating(state.network):
            accs = torch.tensor([(self.sample_scores(state, x, gen, **kwargs).argmax(1) == y).float().mean().item()
                                 for _ in range(self.inference_runs)])
        return {"run_accuracy": [accs.mean().item()], "run_accuracy_std": [accs.std(unbiased=False).item()]}


def fast_optimizer(params, cfg: OptimizerConfig) -> torch.optim.Optimizer:
    """`make_optimizer`, but Adam/AdamW in torch's fused form.

    NoProp-DT steps two optimisers per block per batch (Algorithm 1), so the
    per-tensor Python loop of the default Adam dominated a CPU step; the fused
    kernel is the same algorithm, about 6x faster here.
    """
    params = list(params)
    if cfg.name == "sgd" or not params:
        return make_optimizer(params, cfg)
    cls = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return cls(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay, fused=True)


def softmax_mix(logits: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """û = softmax(logits) · W_Embed: a convex combination of the class embeddings (§2.3.2)."""
    return F.softmax(logits, dim=1) @ weight

