"""NoProp-DT: its testable properties (Li, Teh, Pascanu 2025) and learning."""
from __future__ import annotations

import math
import re

import pytest
import torch

from core.errors import ConfigError
from learners._noprop_base import softmax_mix
from learners._noprop_blocks import ClassEmbedding
from learners._noprop_schedules import (alphas_from_alpha_bar, cosine_alpha_bar, kl_to_standard_normal,
                                        posterior_coefficients, sample_marginal, snr)
from tests.learners._noprop_helpers import (ForwardCalls, OracleBlock, accuracy, make_state, one_hot_inputs,
                                            train_steps, two_class_problem)


@pytest.mark.parametrize("T", [3, 10])
def test_cosine_schedule_increases_from_noise_to_label(T):
    ab = cosine_alpha_bar(T)
    assert ab.shape == (T + 1,)
    assert torch.all(ab[1:] > ab[:-1])
    assert torch.all(snr(ab)[1:] - snr(ab)[:-1] > 0)
    assert ab[0].item() == pytest.approx(1e-4) and ab[-1].item() == pytest.approx(0.9999)
    # a middle value by hand: ᾱ_t = f(T − t)/f(0), f(k) = cos²(((k/T) + s)/(1 + s) π/2)
    t, s = 1, 0.008
    f = lambda k: math.cos(((k / T) + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    assert ab[t].item() == pytest.approx(f(T - t) / f(0), rel=1e-12)


def test_alpha_bar_is_the_product_of_the_alphas():
    ab = cosine_alpha_bar(6)
    alphas = alphas_from_alpha_bar(ab)
    for t in range(7):
        assert ab[t].item() == pytest.approx(torch.prod(alphas[t:]).item(), rel=1e-10)


def test_posterior_coefficients_match_eq_40_41_and_preserve_the_marginal():
    ab = cosine_alpha_bar(5)
    alphas = alphas_from_alpha_bar(ab)
    a, b, c = posterior_coefficients(ab[:-1], ab[1:])
    for t in range(1, 6):
        ap = alphas[t - 1].item()
        abt, abp = ab[t].item(), ab[t - 1].item()
        assert a[t - 1].item() == pytest.approx(math.sqrt(abt) * (1 - ap) / (1 - abp), rel=1e-10)
        assert b[t - 1].item() == pytest.approx(math.sqrt(ap) * (1 - abt) / (1 - abp), rel=1e-10)
        assert c[t - 1].item() == pytest.approx((1 - abt) * (1 - ap) / (1 - abp), rel=1e-10)
    # z_{t−1} ~ q(z_{t−1}|y) pushed through the posterior with û = u_y has the marginal q(z_t|y):
    # mean a + b √ᾱ_{t−1} = √ᾱ_t and variance b² (1 − ᾱ_{t−1}) + c = 1 − ᾱ_t.
    torch.testing.assert_close(a + b * ab[:-1].sqrt(), ab[1:].sqrt(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(b ** 2 * (1 - ab[:-1]) + c, 1 - ab[1:], rtol=1e-10, atol=1e-12)


def test_chain_with_exact_denoiser_has_the_marginals_monte_carlo():
    learner, state, _, _ = make_state("noprop_dt", n_blocks=4)
    x, y = one_hot_inputs(3, 6000)
    state.network.blocks = torch.nn.ModuleList([OracleBlock(scale=1e4) for _ in range(4)])
    zs = learner.chain(state, x, torch.Generator().manual_seed(0))
    u = state.network.embedding(y)
    for t, z in enumerate(zs, start=1):
        ab = state.alpha_bar[t]
        resid = z - ab.sqrt() * u
        assert resid.mean().abs().item() < 0.03
        assert resid.var().item() == pytest.approx((1 - ab).item(), abs=0.03)


def test_oracle_denoiser_lands_on_the_true_label():
    learner, state, _, _ = make_state("noprop_dt", n_blocks=5)
    x, y = one_hot_inputs(3, 500)
    state.network.blocks = torch.nn.ModuleList([OracleBlock() for _ in range(5)])
    with torch.no_grad():                        # θ_out reads the one-hot z_T directly
        state.network.classifier.weight.copy_(10 * torch.eye(3))
        state.network.classifier.bias.zero_()
    assert accuracy(learner, state, x, y) == 1.0


def test_kl_closed_form_matches_monte_carlo():
    gen = torch.Generator().manual_seed(0)
    u = torch.randn(4, 6, generator=gen, dtype=torch.float64)
    ab = torch.tensor(0.3, dtype=torch.float64)
    z = sample_marginal(u.expand(50000, 4, 6), ab, gen)
    q = torch.distributions.Normal(ab.sqrt() * u, (1 - ab).sqrt())
    p = torch.distributions.Normal(torch.zeros(()), torch.ones(()))
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(mc, kl_to_standard_normal(u, ab), rtol=0.03, atol=0.03)


@pytest.mark.parametrize("embedding", ["one_hot", "learned"])
def test_denoiser_output_is_in_the_convex_hull_of_the_embeddings(embedding):
    learner, state, x, y = make_state("noprop_dt", n_blocks=2, embedding=embedding, embedding_dim=8)
    W = state.network.embedding.weight.detach()
    z = torch.randn(len(x), W.shape[1])
    u_hat = softmax_mix(state.network.blocks[0](x, z), W).detach()
    # the rows of W are orthonormal here, so û W^T gives back the mixing weights
    torch.testing.assert_close(W @ W.T, torch.eye(3), atol=1e-5, rtol=0)
    weights = u_hat @ W.T
    assert torch.all(weights >= -1e-6)
    torch.testing.assert_close(weights.sum(1), torch.ones(len(x)))
    torch.testing.assert_close(weights @ W, u_hat, atol=1e-5, rtol=0)


@pytest.mark.parametrize("embedding", ["one_hot", "learned"])
def test_block_loss_reads_and_moves_only_its_own_block(embedding):
    learner, state, x, y = make_state("noprop_dt", n_blocks=4, embedding=embedding)
    blocks = state.network.blocks
    for t in range(1, 5):
        state.network.zero_grad(set_to_none=True)
        with ForwardCalls(blocks) as calls:
            term, _ = learner.block_loss(state, t, x, y, torch.Generator().manual_seed(t))
        assert calls.counts[t - 1] > 0
        assert [c for i, c in enumerate(calls.counts) if i != t - 1] == [0, 0, 0]
        term.backward()
        for s, block in enumerate(blocks):
            grads = [p.grad for p in block.parameters()]
            if s == t - 1:
                assert any(g is not None and g.abs().sum() > 0 for g in grads)
            else:
                assert all(g is None for g in grads), f"block {s + 1} got a gradient from L_{t}"


def test_update_runs_each_block_once_on_a_sampled_input_never_another_blocks_output():
    learner, state, x, y = make_state("noprop_dt", n_blocks=3)
    seen = {}
    handles = [block.register_forward_hook(lambda m, inp, out, i=i: seen.setdefault(i, []).append(inp[1]))
               for i, block in enumerate(state.network.blocks)]
    outputs = []
    handles += [block.register_forward_hook(lambda m, inp, out: outputs.append(out))
                for block in state.network.blocks]
    learner.update(state, (x, y))
    for h in handles:
        h.remove()
    assert {i: len(v) for i, v in seen.items()} == {0: 1, 1: 1, 2: 1}
    for i, (z,) in seen.items():
        assert not any(z is out for out in outputs)
        assert z.grad_fn is None or not _depends_on(z.grad_fn, state.network.blocks)


def _depends_on(fn, blocks, depth=0) -> bool:
    """Whether an autograd graph reaches a parameter of any block."""
    params = {id(p) for p in blocks.parameters()}
    stack, seen = [fn], set()
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None and id(var) in params:
            return True
        stack.extend(n for n, _ in node.next_functions)
    return False


def test_prototype_embedding_is_the_most_central_image_of_each_class():
    # on a line: class 0 at 0, 2, 3, 10 (median distances to the others 3, 2, 3, 8: the image at 2);
    # class 1 at 20, 21, 25, 40 (medians 5, 4, 5, 19: the image at 21, where a mean would tie)
    points = [0.0, 2.0, 3.0, 10.0, 20.0, 21.0, 25.0, 40.0]
    x = torch.tensor([[p, 1.0] for p in points])
    y = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    emb = ClassEmbedding("prototype", 2, 0, 2, torch.Generator().manual_seed(0))
    emb.set_prototypes(x, y)
    torch.testing.assert_close(emb.weight.data, torch.tensor([[2.0, 1.0], [21.0, 1.0]]))


def test_prototype_embedding_is_set_from_the_first_batch():
    learner, state, x, y = make_state("noprop_dt", n_blocks=2, embedding="prototype")
    assert state.network.embedding.dim == x.shape[1]
    learner.update(state, (x, y))
    assert state.prototypes_set


def test_block_metrics_give_one_value_per_block():
    learner, state, x, y = make_state("noprop_dt", n_blocks=3, inference_runs=2)
    metrics = learner.block_metrics(state, x, y)
    assert set(metrics) == {"chain_accuracy", "chain_accuracy_std", "val_denoise_loss"}
    assert all(len(v) == 3 for v in metrics.values())


@pytest.mark.parametrize("key,value,allowed", [
    ("embedding", "random", "is not known; allowed: one_hot, learned, prototype"),
    ("block_schedule", "backwards", "is not known; allowed: all, random"),
    ("n_blocks", 0, "is out of range; allowed: >= 1"), ("eta", -1.0, "is out of range; allowed: > 0"),
    ("head_widths", (8, 0), "has a width below 1; give widths >= 1, or () for one layer as wide as the trunk")])
def test_bad_settings_name_the_key(key, value, allowed):
    with pytest.raises(ConfigError, match="^" + re.escape(f"noprop_dt.{key}={value!r} {allowed}") + "$"):
        make_state("noprop_dt", **{key: value})


def test_two_class_problem_in_seconds():
    x, y, x_test, y_test = two_class_problem()
    # a constant lr: make_state's schedule spans 2 steps, this trains 10 epochs of batches
    learner, state, _, _ = make_state("noprop_dt", n_classes=2, dim=2, n_blocks=3,
                                      optimizer={"name": "adamw", "lr": 0.01, "schedule": "constant"})
    train_steps(learner, state, x, y, epochs=10)
    assert accuracy(learner, state, x_test, y_test) > 0.9


@pytest.mark.parametrize("schedule,steps", [("all", 3), ("random", 1)])
def test_head_and_embedding_step_once_per_block_loss(schedule, steps):
    """Algorithm 1 steps {θ_t, θ_out, W_Embed} after each L_t: θ_out and W_Embed take T steps per
    batch with every block trained, the blocks one step each (together, on their own L_t)."""
    learner, state, x, y = make_state("noprop_dt", n_blocks=3, embedding="learned", block_schedule=schedule)
    block_opt, shared_opt = state.optimizers
    block_params = {id(p) for p in state.network.blocks.parameters()}
    assert {id(p) for g in block_opt.param_groups for p in g["params"]} == block_params
    shared = {id(p) for g in shared_opt.param_groups for p in g["params"]}
    assert shared == {id(p) for p in state.network.parameters()} - block_params
    assert id(state.network.embedding.weight) in shared and id(state.network.classifier.weight) in shared
    counts = {"blocks": 0, "shared": 0}
    for key, opt in (("blocks", block_opt), ("shared", shared_opt)):
        opt.register_step_post_hook(lambda *_, key=key: counts.__setitem__(key, counts[key] + 1))
    learner.update(state, (x, y))
    assert counts == {"blocks": 1, "shared": steps}


@pytest.mark.parametrize("name", ["noprop_dt", "noprop_ct", "noprop_fm"])
def test_output_head_starts_at_zero(name):
    """θ_out starts neutral, so its argmax follows z_T from the first steps (docs/noprop.md)."""
    _, state, _, _ = make_state(name)
    assert not state.network.classifier.weight.any() and not state.network.classifier.bias.any()
