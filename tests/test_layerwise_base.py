"""The LayerwiseLearner base: block loop, detached inputs, metric naming, greedy schedules."""
import dataclasses

import torch
import torch.nn.functional as F

from experiments.datasets import load_dataset
from experiments.fit import LoopConfig, fit
from learners.base import LayerwiseLearner, Tags, TorchState, evaluating
from networks import build, get_preset


@dataclasses.dataclass(frozen=True, kw_only=True)
class LocalProbes(LayerwiseLearner):
    """Each block trained through its own linear probe (a minimal layer-local rule)."""

    lr: float = 0.05
    greedy_steps: int = 0   # > 0: train block k only during steps [k * greedy_steps, (k+1) * greedy_steps)

    tags = Tags(locality="blockwise", crosses_blocks=False)

    def init(self, network, data_info, seed):
        gen = torch.Generator().manual_seed(seed)
        probes = torch.nn.ModuleList(torch.nn.Linear(w[0], data_info.n_classes) for w in network.block_shapes)
        for p in probes.parameters():
            torch.nn.init.normal_(p, std=0.01, generator=gen)
        params = list(network.parameters()) + list(probes.parameters())
        return TorchState(network=network, extra={"probes": probes, "opt": torch.optim.SGD(params, lr=self.lr)})

    def blocks_to_update(self, state):
        if not self.greedy_steps:
            return range(state.network.n_blocks)
        k = min(state.step // self.greedy_steps, state.network.n_blocks - 1)
        return range(k, k + 1)

    def update_block(self, state, i, h, batch):
        assert not h.requires_grad, "the base must hand each block a detached input"
        out = state.network.run_block(i, h)
        loss = F.cross_entropy(state.extra["probes"][i](out), batch[1])
        state.extra["opt"].zero_grad()
        loss.backward()
        state.extra["opt"].step()
        return out.detach(), {"loss": loss.item()}

    def predict(self, state, x):
        with evaluating(state.network) as net:
            feats = net.forward_blocks(x)[-1]
            return state.extra["probes"][-1](feats)


LocalProbes.name = "local_probes"


def _state(learner, seed=0):
    from learners.base import DataInfo
    spec = get_preset("mlp_small").resolve((2,), 3)
    net = build(spec, seed)
    return learner.init(net, DataInfo(input_shape=(2,), n_classes=3, n_train=64), seed)


def test_metrics_are_named_per_block_and_steps_counted():
    learner = LocalProbes()
    state = _state(learner)
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    state, metrics = learner.update(state, (x, y))
    assert set(metrics) == {"loss/0", "loss/1"} and state.step == 1


def test_greedy_schedule_trains_only_the_current_block():
    learner = LocalProbes(greedy_steps=2)
    state = _state(learner)
    x, y = torch.randn(16, 2), torch.randint(0, 3, (16,))
    w0, w1 = (state.network.weight_layer(i).weight.clone() for i in (0, 1))
    for _ in range(2):
        state, metrics = learner.update(state, (x, y))
        assert set(metrics) == {"loss/0"}
    assert not torch.equal(w0, state.network.weight_layer(0).weight)
    assert torch.equal(w1, state.network.weight_layer(1).weight)
    w0 = state.network.weight_layer(0).weight.clone()
    state, metrics = learner.update(state, (x, y))
    assert set(metrics) == {"loss/1"}
    assert torch.equal(w0, state.network.weight_layer(0).weight)


def test_block_metrics_are_recorded_along_the_block_dim_and_it_learns(capsys):
    data = load_dataset("blobs", seed=0, n_train=300, n_test=200)
    res = fit(LocalProbes(), "mlp_small", data, seed=0, loop=LoopConfig(n_epochs=8, progress=True)).results
    assert res["block_loss"].dims == ("epoch", "block") and res.sizes["block"] == 2
    assert float(res["block_loss"][-1, 0]) < float(res["block_loss"][0, 0])
    assert float(res["accuracy"].sel(split="test")[-1]) > 0.9
    assert "local_probes" in capsys.readouterr().err  # the progress bar names the learner


def test_declared_constraints_are_checked_by_the_base_class_before_any_init():
    """A rule declares its allowed values once; the base class checks them when the rule's own init is
    called, whoever calls it, and once for an override that calls its parent's init (EWC on backprop)."""
    import pytest

    from core.errors import ConfigError
    from learners import make_learner
    from learners.base import DataInfo
    from networks import build, get_preset
    net = build(get_preset("mlp_small").resolve((4,), 3), 0)
    info = DataInfo(input_shape=(4,), n_classes=3, n_train=10)
    with pytest.raises(ConfigError, match=r"^ewc.fisher='nope' is not known; allowed: empirical, true$"):
        make_learner("ewc", fisher="nope").init(net, info, 0)
    with pytest.raises(ConfigError, match=r"^ewc.bn_refresh_batches=-2 is out of range; allowed: >= 0$"):
        make_learner("ewc", bn_refresh_batches=-2).init(net, info, 0)   # the parent's constraint, inherited
    with pytest.raises(ConfigError, match=r"^forward_forward.peer_norm_momentum=2.0 is out of range"):
        make_learner("forward_forward", peer_norm_momentum=2.0).init(net, info, 0)
    calls = []
    learner = make_learner("ewc")
    object.__setattr__(learner, "check_hyperparameters", lambda: calls.append(1))
    learner.init(net, info, 0)
    assert calls == [1]
