import numpy as np
import pytest
import torch

from core.errors import ConfigError
from networks import NetworkSpec, build, from_numpy, get_preset, to_numpy


def _spec(name="mlp_small", shape=(1, 8, 8), n_classes=10):
    return get_preset(name).resolve(shape, n_classes)


def test_same_spec_and_seed_give_same_weights_and_other_seed_differs():
    a, b, c = build(_spec(), 7), build(_spec(), 7), build(_spec(), 8)
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    assert not torch.equal(next(a.parameters()), next(c.parameters()))


def test_build_does_not_touch_global_rng():
    before = torch.random.get_rng_state()
    build(_spec(), 0)
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("init", ["default", "kaiming", "xavier", "orthogonal"])
def test_inits_are_seeded(init):
    spec = get_preset("mlp_small", init=init).resolve((2,), 3)
    w1 = build(spec, 1).weight_layer(0).weight
    w2 = build(spec, 1).weight_layer(0).weight
    assert torch.equal(w1, w2)


def test_default_init_matches_torch_bounds():
    net = build(_spec(), 0)
    w = net.weight_layer(0).weight
    bound = 1 / np.sqrt(64)  # kaiming_uniform(a=sqrt(5)) gives U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    assert w.abs().max() <= bound + 1e-7
    assert w.abs().max() > 0.9 * bound


def test_blocks_run_one_at_a_time_equal_forward():
    net = build(_spec(), 0)
    x = torch.randn(5, 1, 8, 8)
    h = x
    for i in range(net.n_blocks):
        h = net.run_block(i, h)
    torch.testing.assert_close(net.head(h), net(x))
    outs = net.forward_blocks(x)
    assert [tuple(o.shape[1:]) for o in outs] == net.block_shapes


def test_convnet_blocks_and_shapes():
    spec = get_preset("smallconv").resolve((1, 28, 28), 10)
    net = build(spec, 0)
    assert net.n_blocks == 4  # conv32, conv64, conv128, fc512
    # pooling as in the LLS reference SmallConv: 2, 2, none, then adaptive 2x2 before the FC block
    assert net.block_shapes == [(32, 14, 14), (64, 7, 7), (128, 2, 2), (512,)]
    assert net.blocks[3][1].in_features == 128 * 2 * 2
    assert net(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_numpy_export_is_identical_and_round_trips():
    net = build(_spec(), 3)
    layers = to_numpy(net)
    assert len(layers) == 3
    x = np.random.default_rng(0).standard_normal((4, 64))
    h = x
    for layer in layers[:-1]:
        h = np.maximum(h @ layer["W"].T + layer["b"], 0)
    out = h @ layers[-1]["W"].T + layers[-1]["b"]
    ref = net(torch.from_numpy(x).float().reshape(4, 1, 8, 8)).detach().numpy()
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    other = build(_spec(), 4)
    from_numpy(other, layers)
    for pa, pb in zip(net.parameters(), other.parameters()):
        assert torch.equal(pa, pb)


def test_spec_validation_messages():
    with pytest.raises(ConfigError, match="unknown network 'nope'.*mlp_small"):
        get_preset("nope")
    with pytest.raises(ConfigError, match="activation='swish'.*allowed"):
        NetworkSpec(activation="swish")
    with pytest.raises(ConfigError, match="does not match the data's input shape"):
        NetworkSpec(input_shape=(784,)).resolve((1, 8, 8), 10)
    with pytest.raises(ConfigError, match="needs image data"):
        get_preset("smallconv").resolve((2,), 2)
    with pytest.raises(ConfigError, match="one pooling size per conv block"):
        NetworkSpec(kind="convnet", channels=(8, 8), pool=(2,))


def test_in_place_activation_after_batch_norm_changes_no_value_or_gradient():
    spec = get_preset("smallconv").resolve((1, 28, 28), 10)
    net, twin = build(spec, 0), build(spec, 0)
    in_place = [m for m in net.modules() if getattr(m, "inplace", False)]
    assert len(in_place) == 4                             # 3 conv blocks + the FC block, each after its norm
    for m in twin.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    x = torch.randn(8, 1, 28, 28)
    out, out_twin = net(x), twin(x)
    torch.testing.assert_close(out, out_twin)
    out.square().sum().backward()
    out_twin.square().sum().backward()
    for p, q in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    mlp = build(NetworkSpec(widths=(16,), activation="relu").resolve((4,), 3), 0)
    assert not any(getattr(m, "inplace", False) for m in mlp.modules())   # no norm: out of place


def test_elu_blocks_are_torchs_elu():
    net = build(NetworkSpec(widths=(16, 16), activation="elu").resolve((4,), 3), 0)
    assert sum(isinstance(m, torch.nn.ELU) for m in net.modules()) == 2
    x = torch.randn(32, 4)
    hidden = net.blocks[0](x)
    assert hidden.min() < 0 and torch.all(hidden > -1)        # ELU's negative side, bounded by -1
