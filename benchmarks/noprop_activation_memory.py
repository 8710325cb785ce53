"""Activation memory of one training step: NoProp-DT against the same-architecture backprop baseline.

The RSS peak that `fit` records on CPU is dominated by the parameters and optimiser state, which the
two learners share (same T blocks), so it cannot show the paper's Table 2 effect. This counts the
bytes autograd keeps for the backward pass (saved tensors, via torch.autograd.graph.saved_tensors_hooks)
at their peak during one step: the whole chain for backprop, one block at a time for DT (each block's
graph is freed by its backward before the next block runs). Deterministic; no timing involved.

    python benchmarks/noprop_activation_memory.py > benchmarks/results/noprop_activation_memory.md
"""
import torch

from learners import make_learner
from learners.base import DataInfo
from networks import NetworkSpec, build

SETTINGS = {
    "noprop_mnist_mlp_cpu (MLP 784-128, batch 64)":
        (NetworkSpec(kind="mlp", widths=(128,), input_shape=(1, 28, 28), n_classes=10), {}, 64),
    "noprop_mnist_mlp (MLP 784-256-256, batch 128)":
        (NetworkSpec(kind="mlp", widths=(256, 256), input_shape=(1, 28, 28), n_classes=10), {}, 128),
    "reproduce_noprop_mnist (conv 32-64-128 + FC 256, batch 128)":
        (NetworkSpec(kind="convnet", channels=(32, 64, 128), pool=(2, 2, 2), widths=(256,), batch_norm=True,
                     input_shape=(1, 28, 28), n_classes=10), {"head_widths": (256, 128)}, 128),
}


class SavedBytes:
    """Live bytes of tensors saved for backward, and their peak."""

    def __init__(self):
        self.live = self.peak = 0

    def pack(self, t):
        n = t.numel() * t.element_size()
        self.live += n
        self.peak = max(self.peak, self.live)
        return (t, n)

    def unpack(self, packed):
        return packed[0]


def peak_saved(name, spec, params, batch):
    learner = make_learner(name, n_blocks=10, **params)
    info = DataInfo(input_shape=spec.input_shape, n_classes=10, n_train=batch, batch_size=batch,
                    steps_per_epoch=1, n_epochs=1)
    state = learner.init(build(spec, 0), info, 0)
    gen = torch.Generator().manual_seed(0)
    x, y = torch.rand(batch, *spec.input_shape, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    meter = SavedBytes()
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        if name == "noprop_dt":
            for t in range(1, 11):                 # as NoPropDT.update: a block's graph dies with its backward
                term, _ = learner.block_loss(state, t, x, y, gen)
                term.backward()
                meter.live = 0
        else:
            loss = torch.nn.functional.cross_entropy(learner.logits(state, x, gen), y)
            loss.backward()
    return meter.peak


print("| setting | NoProp-DT (MiB) | backprop baseline (MiB) | ratio |")
print("|---|---|---|---|")
for label, (spec, params, batch) in SETTINGS.items():
    dt, bp = (peak_saved(n, spec, params, batch) / 2**20 for n in ("noprop_dt", "noprop_backprop"))
    print(f"| {label} | {dt:.2f} | {bp:.2f} | {dt / bp:.2f} |")
