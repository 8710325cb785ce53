"""NoProp's backprop baseline (Eq. 17-19): the mixing rule, the pinned read-out, end-to-end gradients."""
from __future__ import annotations

import pytest
import torch

from learners._noprop_base import softmax_mix
from tests.learners._noprop_helpers import accuracy, make_state, train_steps, two_class_problem


def test_chain_follows_eq_18_and_reads_out_the_last_blocks_logits():
    learner, state, x, y = make_state("noprop_backprop", n_blocks=3, mix_init=0.3)
    model = state.network
    with torch.no_grad():
        z = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(0))
        for block in model.blocks:
            logits = block(x, z)
            a = torch.tanh(torch.tensor(0.3))
            z = (1 - a) * z + a * softmax_mix(logits, model.embedding.weight)
        out = learner.logits(state, x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, logits)


def test_gradient_reaches_every_block_and_the_mixing_weights():
    learner, state, x, y = make_state("noprop_backprop", n_blocks=3)
    loss = torch.nn.functional.cross_entropy(learner.logits(state, x, torch.Generator().manual_seed(0)), y)
    loss.backward()
    for block in state.network.blocks:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in block.parameters())
    assert state.network.mix.grad[:-1].abs().sum() > 0     # α_T only moves z_T, which the read-out skips


@pytest.mark.slow   # the contract suite already checks blobs and xor
def test_two_class_problem_in_seconds():
    x, y, x_test, y_test = two_class_problem()
    learner, state, _, _ = make_state("noprop_backprop", n_classes=2, dim=2, n_blocks=3,
                                      optimizer={"name": "adamw", "lr": 0.01})
    train_steps(learner, state, x, y, epochs=10)
    assert accuracy(learner, state, x_test, y_test) > 0.9
