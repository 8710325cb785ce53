"""NoProp-CT: the learned schedule (Eq. 65–67), its SNR', the loss's reach and inference."""
from __future__ import annotations

import re

import pytest
import torch

from core.errors import ConfigError
from learners._noprop_base import softmax_mix
from learners._noprop_schedules import LearnedSchedule
from tests.learners._noprop_helpers import (ForwardCalls, OracleBlock, accuracy, make_state, one_hot_inputs,
                                            train_steps, two_class_problem)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_learned_schedule_is_monotone_with_fixed_ends(seed):
    schedule = LearnedSchedule(hidden=16, gamma_noise=6.0, gamma_label=-5.0, seed=seed).double()
    with torch.no_grad():   # random positive weights of any size keep γ monotone
        for p in schedule.parameters():
            p.normal_(0, 3, generator=torch.Generator().manual_seed(seed))
        schedule.gamma_0.fill_(-5.0)
        schedule.gamma_1.fill_(6.0)
        t = torch.linspace(0, 1, 201, dtype=torch.float64)
        gamma = schedule.gamma(t)
        ab = schedule.alpha_bar(t)
    assert torch.all(gamma[1:] <= gamma[:-1] + 1e-6)
    assert torch.all(ab[1:] >= ab[:-1] - 1e-12)
    # Eq. 65 as written: γ(0) = γ_1 (the noise end) and γ(1) = γ_0 (the label end)
    assert gamma[0].item() == pytest.approx(6.0, abs=1e-5)
    assert gamma[-1].item() == pytest.approx(-5.0, abs=1e-5)
    torch.testing.assert_close(schedule.snr(t), torch.exp(-gamma), rtol=1e-5, atol=0)


def test_snr_derivative_matches_autograd_and_finite_differences():
    schedule = LearnedSchedule(hidden=8, seed=5).double()
    t = torch.tensor([0.05, 0.3, 0.5, 0.8, 0.97], dtype=torch.float64)
    _, deriv = schedule.snr_and_derivative(t)
    t_req = t.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(schedule.snr(t_req).sum(), t_req)
    torch.testing.assert_close(deriv, auto, rtol=1e-9, atol=0)
    h = 1e-6
    finite = (schedule.snr(t + h) - schedule.snr(t - h)) / (2 * h)
    torch.testing.assert_close(deriv, finite, rtol=1e-5, atol=0)
    assert torch.all(deriv > 0)        # SNR increases from noise to label


def test_loss_reaches_network_head_embedding_and_schedule():
    learner, state, x, y = make_state("noprop_ct", embedding="learned", embedding_dim=4, eval_steps=3)
    loss, metrics = learner.loss(state, x, y, torch.Generator().manual_seed(0))
    loss.backward()
    model = state.network
    for part in (model.blocks[0], model.classifier, model.embedding, model.schedule):
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in part.parameters())
    assert any(p.grad.abs().sum() > 0 for p in model.schedule.parameters())
    assert 0 < metrics["alpha_bar_0"] < metrics["alpha_bar_1"] < 1


def test_denoiser_output_is_in_the_convex_hull_of_the_embeddings():
    learner, state, x, y = make_state("noprop_ct", embedding="learned", embedding_dim=8)
    W = state.network.embedding.weight.detach()
    t = torch.rand(len(x))
    u_hat = softmax_mix(state.network.blocks[0](x, torch.randn(len(x), 8), t), W).detach()
    weights = u_hat @ W.T          # rows of W are orthonormal
    assert torch.all(weights >= -1e-6)
    torch.testing.assert_close(weights.sum(1), torch.ones(len(x)))


@pytest.mark.parametrize("integrator", ["ancestral", "ddim"])
def test_oracle_denoiser_lands_on_the_label(integrator):
    learner, state, _, _ = make_state("noprop_ct", integrator=integrator, eval_steps=30)
    x, y = one_hot_inputs(3, 400)
    state.network.blocks = torch.nn.ModuleList([OracleBlock(scale=1e4)])
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        z0 = torch.randn(len(x), 3, generator=torch.Generator().manual_seed(0))
        logp = learner.sample_scores(state, x, gen, steps=30)
        state.network.classifier.weight.copy_(10 * torch.eye(3))
        state.network.classifier.bias.zero_()
        assert accuracy(learner, state, x, y) == 1.0
        if integrator == "ddim":
            # with û = u_y the probability flow keeps ε̂ fixed: z_1 = √ᾱ_1 u + √(1−ᾱ_1) ε̂_0 exactly
            ab = state.network.schedule.alpha_bar(torch.tensor([0.0, 1.0]))
            u = state.network.embedding(y)
            eps = (z0 - ab[0].sqrt() * u) / (1 - ab[0]).sqrt()
            expected = ab[1].sqrt() * u + (1 - ab[1]).sqrt() * eps
            z1 = torch.log_softmax(state.network.classifier(expected), 1)
            torch.testing.assert_close(learner.sample_scores(state, x, torch.Generator().manual_seed(0), steps=30),
                                       z1, rtol=1e-4, atol=1e-4)
    assert logp.shape == (len(x), 3)


def test_many_steps_only_at_the_end_of_training():
    learner, state, x, y = make_state("noprop_ct", eval_steps=4, inference_steps=9, n_epochs=1)
    with ForwardCalls([state.network.blocks[0].head[-1]]) as calls:
        learner.predict(state, x)
    assert calls.counts[0] == 4              # one call of the output layer per integration step
    state.step = state.total_steps
    with ForwardCalls([state.network.blocks[0].head[-1]]) as calls:
        learner.predict(state, x)
    assert calls.counts[0] == 9


def test_spread_over_inference_runs_is_recorded():
    learner, state, x, y = make_state("noprop_ct", eval_steps=3, inference_runs=3)
    metrics = learner.block_metrics(state, x, y)
    assert set(metrics) == {"run_accuracy", "run_accuracy_std"}
    assert metrics["run_accuracy_std"][0] >= 0


@pytest.mark.parametrize("key,value,allowed", [
    ("integrator", "rk4", "is not known; allowed: ancestral, ddim"),
    ("time_sampling", "beta", "is not known; allowed: uniform, snr"),
    ("weighting", "elbo", "is not known; allowed: log_snr, snr"),
    ("eval_steps", 0, "is out of range; allowed: >= 1"),
    ("gamma_noise_init", -10.0, "must exceed gamma_label_init=-4.0 (γ decreases from noise at t=0 to label at t=1); "
                                "raise gamma_noise_init or lower gamma_label_init")])
def test_bad_settings_name_the_key(key, value, allowed):
    with pytest.raises(ConfigError, match="^" + re.escape(f"noprop_ct.{key}={value!r} {allowed}") + "$"):
        make_state("noprop_ct", **{key: value})


@pytest.mark.slow   # the contract suite already checks blobs and xor
def test_two_class_problem_in_seconds():
    """Two Gaussian blobs. On the moons of the other learners' smoke tests CT with Eq. 9's weighting
    (``weighting="snr"``) stays near 76% after 15 epochs: its SNR' weight is ~1e4 times larger near
    t = 1 than near t = 0, so the one shared network learns to read the label off z long before it
    learns to read it off x (docs/noprop.md; the default weighting learns them, see below)."""
    learner, state, x, y = make_state("noprop_ct", n_classes=2, dim=2, n=512, inference_steps=50,
                                      optimizer={"name": "adam", "lr": 0.01, "schedule": "constant"})
    train_steps(learner, state, x[:256], y[:256], epochs=10)
    assert accuracy(learner, state, x[256:], y[256:]) > 0.9


def test_snr_time_sampling_inverts_the_schedule_and_keeps_the_expectation():
    """Importance sampling of t (SNR uniform) lands on the requested SNR, and the weighted
    estimate of Eq. 9's denoising integral agrees with the paper's uniform-t estimate."""
    from learners._noprop_schedules import times_uniform_in_snr
    schedule = LearnedSchedule(hidden=8, gamma_noise=5.0, gamma_label=-3.0, seed=3).double()
    gen = torch.Generator().manual_seed(0)
    u = torch.rand(4000, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        t, _ = times_uniform_in_snr(schedule, u)
        ends = schedule.snr(torch.tensor([0.0, 1.0], dtype=torch.float64))
        torch.testing.assert_close(schedule.snr(t), ends[0] + u * (ends[1] - ends[0]), rtol=1e-9, atol=1e-12)

        def err(tt):                       # any smooth stand-in for ‖û − u_y‖² along t
            return torch.cos(3 * tt) ** 2 + tt

        uniform = torch.rand(400_000, generator=gen, dtype=torch.float64)
        _, slope = schedule.snr_and_derivative(uniform)
        paper = (slope * err(uniform)).mean()
        t_is, _ = times_uniform_in_snr(schedule, torch.rand(400_000, generator=gen, dtype=torch.float64))
        sampled = ((ends[1] - ends[0]) * err(t_is)).mean()
        fine = torch.linspace(0, 1, 200_001, dtype=torch.float64)
        exact = torch.trapezoid(schedule.snr_and_derivative(fine)[1] * err(fine), fine)
    assert sampled.item() == pytest.approx(exact.item(), rel=5e-3)
    assert paper.item() == pytest.approx(exact.item(), rel=5e-2)   # same target, far noisier


@pytest.mark.slow
def test_snr_time_sampling_learns_two_blobs():
    learner, state, x, y = make_state("noprop_ct", n_classes=2, dim=2, n=512, inference_steps=50,
                                      time_sampling="snr", optimizer={"name": "adam", "lr": 0.01, "schedule": "constant"})
    train_steps(learner, state, x[:256], y[:256], epochs=10)
    assert accuracy(learner, state, x[256:], y[256:]) > 0.9


def test_weightings_are_snr_derivative_and_minus_gamma_derivative():
    """``snr`` weighs by Eq. 9's SNR'(t), ``log_snr`` by −γ'(t) = d log SNR / dt; both reach ψ, and
    with t drawn SNR-uniform both are divided by the density SNR'(t) / span."""
    from learners import make_learner
    schedule = LearnedSchedule(hidden=8, gamma_noise=7.0, gamma_label=-4.0, seed=1).double()
    t = torch.linspace(0.01, 0.99, 50, dtype=torch.float64)
    gamma, slope = schedule.gamma_and_slope(t)
    snr_t, snr_prime = schedule.snr_and_derivative(t)
    paper, log_snr = make_learner("noprop_ct", weighting="snr"), make_learner("noprop_ct")
    assert log_snr.weighting == "log_snr"
    torch.testing.assert_close(paper.time_weight(snr_t, snr_prime), snr_prime)
    weight = log_snr.time_weight(snr_t, snr_prime)
    torch.testing.assert_close(weight, -slope)
    assert torch.all(weight > 0)
    weight.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in schedule.parameters())
    span = torch.tensor(3.0, dtype=torch.float64)
    with torch.no_grad():
        density = snr_prime / span
        for learner in (paper, log_snr):
            torch.testing.assert_close(learner.time_weight(snr_t, snr_prime, span) * density,
                                       learner.time_weight(snr_t, snr_prime))


def test_default_weighting_learns_two_moons_in_seconds():
    """Two moons, on which the same run with Eq. 9's weighting (``weighting="snr"``) ends at 66%:
    with −γ'(t) the one network learns to read x at every noise level, not only to copy a clean z."""
    x, y, x_test, y_test = two_class_problem()
    # a constant lr: make_state's schedule spans 2 steps, this trains 10 epochs of batches
    learner, state, _, _ = make_state("noprop_ct", n_classes=2, dim=2, inference_steps=50,
                                      optimizer={"name": "adam", "lr": 0.01, "schedule": "constant"})
    train_steps(learner, state, x, y, epochs=10)
    assert accuracy(learner, state, x_test, y_test) > 0.9
