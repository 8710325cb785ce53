import math

import pytest
import torch

from core.errors import ConfigError
from learners._optim import OptimizerConfig, lr_factor, make_optimizer, make_scheduler


def test_schedules_by_hand():
    cos = OptimizerConfig(schedule="cosine")
    assert lr_factor(cos, 0, 100) == 1.0
    assert lr_factor(cos, 50, 100) == pytest.approx(0.5)
    assert lr_factor(cos, 100, 100) == pytest.approx(0.0)
    cool = OptimizerConfig(schedule="linear_cooldown", cooldown_start=0.5)
    assert lr_factor(cool, 49, 100) == 1.0
    assert lr_factor(cool, 75, 100) == pytest.approx(0.5)
    assert lr_factor(cool, 100, 100) == pytest.approx(0.0)
    warm = OptimizerConfig(schedule="constant", warmup_steps=4)
    assert [lr_factor(warm, s, 100) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]


def test_scheduler_keeps_each_group_base_lr():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    cfg = OptimizerConfig(name="sgd", lr=0.1, schedule="cosine")
    opt = make_optimizer([{"params": [a]}, {"params": [b], "lr": 1.0}], cfg)
    sched = make_scheduler(opt, cfg, 10)
    for _ in range(5):
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.5)


@pytest.mark.parametrize("name", ["sgd", "adam", "adamw", "rmsprop"])
def test_optimizers_minimise_a_quadratic(name):
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = make_optimizer([w], OptimizerConfig(name=name, lr=0.1))
    for _ in range(200):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    assert w.abs().max() < 0.1


def test_bad_optimizer_names():
    with pytest.raises(ConfigError, match="momentum=0.0 must be in \\(0, 1\\) for sgd_schedulefree"):
        OptimizerConfig(name="sgd_schedulefree", momentum=0.0)
    with pytest.raises(ConfigError, match="optimizer.name='rprop'.*sgd, adam, adamw, rmsprop"):
        OptimizerConfig(name="rprop")
    with pytest.raises(ConfigError, match="optimizer.alpha=1.0 must be in \\[0, 1\\)"):
        OptimizerConfig(name="rmsprop", alpha=1.0)
    with pytest.raises(ConfigError, match="schedule='step'"):
        OptimizerConfig(schedule="step")


def test_adam_is_fused_by_default_on_cpu_and_can_be_turned_off():
    weights = [torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(4))]
    for name in ("adam", "adamw"):
        assert make_optimizer(weights, OptimizerConfig(name=name)).defaults["fused"] is True
        assert not make_optimizer(weights, OptimizerConfig(name=name, fused=False)).defaults["fused"]
    groups = [{"params": weights[:1], "lr": 0.1}, {"params": weights[1:]}]
    assert make_optimizer(groups, OptimizerConfig(name="adam")).defaults["fused"] is True


@pytest.mark.parametrize("name", ["adamw_schedulefree", "adamw_schedulefree_paper", "sgd_schedulefree"])
def test_schedule_free_variants_minimise_a_quadratic_at_their_averaged_weights(name):
    w = torch.nn.Parameter(torch.tensor([3.0, -2.0]))
    opt = make_optimizer([w], OptimizerConfig(name=name, lr=0.1))
    assert w.abs().max() > 1.0
    for _ in range(300):
        opt.zero_grad()
        (w ** 2).sum().backward()
        opt.step()
    opt.eval()
    assert w.abs().max() < 0.1


def test_paper_schedule_free_weights_early_iterates_by_the_bias_corrected_step_size():
    """The evaluated point x_k is the average of the z iterates with weights lr_max(k)^2. The paper
    version's step size is lr * sqrt(1 - beta2^k); the current one's is lr throughout."""
    lr, beta2, steps = 0.01, 0.999, 5
    sums = {}
    for name in ("adamw_schedulefree", "adamw_schedulefree_paper"):
        w = torch.nn.Parameter(torch.tensor([1.0]))
        opt = make_optimizer([w], OptimizerConfig(name=name, lr=lr, betas=(0.9, beta2)))
        for _ in range(steps):
            opt.zero_grad()
            (w ** 2).sum().backward()
            opt.step()
        sums[name] = opt.param_groups[0]["weight_sum"]
    assert sums["adamw_schedulefree"] == pytest.approx(steps * lr ** 2)
    by_hand = sum((lr * math.sqrt(1 - beta2 ** k)) ** 2 for k in range(1, steps + 1))
    assert sums["adamw_schedulefree_paper"] == pytest.approx(by_hand)
    assert by_hand < 0.01 * sums["adamw_schedulefree"]         # the first steps count for little


def test_rmsprop_step_is_the_hand_formula():
    """One step from a zero average: v = (1 - alpha) g², w -= lr g / (sqrt(v) + eps) (eps outside the root)."""
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0], dtype=torch.float64))
    opt = make_optimizer([w], OptimizerConfig(name="rmsprop", lr=0.01, alpha=0.9, eps=1e-3))
    (w ** 2).sum().backward()
    g = w.grad.clone()
    expected = w.detach() - 0.01 * g / ((0.1 * g ** 2).sqrt() + 1e-3)
    opt.step()
    torch.testing.assert_close(w.detach(), expected)
