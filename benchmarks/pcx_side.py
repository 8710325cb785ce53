"""Predictive coding (PC-SE, or iPC-SE with ``--mode incremental``) trained with pcx, the JAX
predictive-coding library, on arrays that benchmarks/bench_pcx.py prepares; prints one JSON line per
epoch.

Runs in an environment of its own (pcx 0.6 pins jax < 0.5), never imported by altlearn:

    python -m venv pcx-env && pcx-env/bin/pip install "jax[cpu]>=0.4.33,<0.5" pcx==0.6.3
    pcx-env/bin/python benchmarks/pcx_side.py --data arrays.npz --seed 0 --epochs 5

The model is the MLP of pcx's discriminative benchmark (examples/s4_1_discriminative_mode/MLP, written
against pcx's current API): Linear layers, each hidden one followed by the activation and a value node,
a last Linear into an output node with the squared-error energy whose value is clamped to the one-hot
target while training. One batch: forward initialisation, T inference steps of SGD with momentum on
the hidden nodes (each sample's own energy), then one AdamW step on the weights with the batch-mean
energy's gradient. iPC (pcx's iPC_SE.py): at each of the T steps one gradient of the energy at the
current nodes and weights moves both, the nodes by SGD as above and the weights by one AdamW step on
the batch mean, so a batch takes T weight steps. The weight schedule is a cosine from lr to 0.1 lr over
all weight steps (pcx's scripts warm up to 1.1 lr over the first 10% of steps; altlearn's run has no
warm-up, so neither has this one).
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="npz with x_train, y_train, x_test, y_test (flattened)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--widths", default="128,128,128")
    parser.add_argument("--activation", default="gelu")
    parser.add_argument("--mode", choices=("standard", "incremental"), default="standard")
    parser.add_argument("--T", type=int, default=8)
    parser.add_argument("--lr-x", type=float, default=0.0105)
    parser.add_argument("--momentum-x", type=float, default=0.65)
    parser.add_argument("--lr-w", type=float, default=2.97e-4)
    parser.add_argument("--wd-w", type=float, default=3.55e-4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    incremental = args.mode == "incremental"
    if args.threads == 1:
        # XLA's CPU client otherwise runs its matmuls on every core
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax
    import pcx as px
    import pcx.functional as pxf
    import pcx.nn as pxnn
    import pcx.predictive_coding as pxc
    import pcx.utils as pxu

    class MLP(pxc.EnergyModule):
        def __init__(self, sizes, act_fn):
            super().__init__()
            self.act_fn = px.static(act_fn)
            self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
            self.vodes = [pxc.Vode() for _ in sizes[1:-1]] + [pxc.Vode(pxc.se_energy)]
            self.vodes[-1].h.frozen = True          # the output node is clamped, never relaxed

        def __call__(self, x, y):
            for vode, layer in zip(self.vodes[:-1], self.layers[:-1]):
                x = vode(self.act_fn(layer(x)))
            self.vodes[-1](self.layers[-1](x))
            if y is not None:
                self.vodes[-1].set("h", y)
            return self.vodes[-1].get("u")

    nodes = pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0))

    @pxf.vmap(nodes, in_axes=(0, 0), out_axes=0)
    def forward(x, y, *, model):
        return model(x, y)

    @pxf.vmap(nodes, in_axes=(0,), out_axes=(None, 0), axis_name="batch")
    def energy(x, *, model):
        out = model(x, None)
        return jax.lax.psum(model.energy(), "batch"), out

    @pxf.jit(static_argnums=0)
    def train_on_batch(T, x, y, *, model, optim_w, optim_h):
        model.train()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            forward(x, y, model=model)
        optim_h.init(pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
        if incremental:
            both = (pxu.M_hasnot(pxc.VodeParam, frozen=True) | pxu.M(pxnn.LayerParam)).to([False, True])
            for _ in range(T):
                with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                    _, g = pxf.value_and_grad(both, has_aux=True)(energy)(x, model=model)
                # each optimiser takes its own parameters' gradients from the one tree
                optim_h.step(model, g["model"])
                optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])
            optim_h.clear()
            return
        for _ in range(T):
            with pxu.step(model, clear_params=pxc.VodeParam.Cache):
                # the summed energy: each node moves along its own sample's gradient
                _, g = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]),
                                          has_aux=True)(energy)(x, model=model)
            optim_h.step(model, g["model"])
        optim_h.clear()
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(x, model=model)
        optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])     # the batch mean

    @pxf.jit()
    def predict(x, *, model):
        model.eval()
        with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
            return forward(x, None, model=model).argmax(axis=-1)

    arrays = np.load(args.data)
    x_train, y_train = arrays["x_train"].astype(np.float32), arrays["y_train"].astype(np.int32)
    x_test, y_test = arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int32)
    n_classes = int(max(y_train.max(), y_test.max())) + 1
    px.RKG.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    sizes = [x_train.shape[1], *map(int, args.widths.split(",")), n_classes]
    model = MLP(sizes, getattr(jax.nn, args.activation))
    B = args.batch_size
    steps = len(x_train) // B                     # the last partial batch is dropped, as pcx's loaders do
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(jnp.zeros((B, sizes[0])), None, model=model)
        weight_steps = steps * args.epochs * (args.T if incremental else 1)
        schedule = optax.cosine_decay_schedule(args.lr_w, decay_steps=weight_steps, alpha=0.1)
        optim_h = pxu.Optim(lambda: optax.sgd(args.lr_x, momentum=args.momentum_x))
        optim_w = pxu.Optim(lambda: optax.adamw(schedule, weight_decay=args.wd_w), pxu.M(pxnn.LayerParam)(model))

    def test_accuracy():
        hits = 0
        for i in range(0, len(x_test), B):
            x = x_test[i:i + B]
            n = len(x)
            # the last batch padded to the compiled shape; only its real samples count
            x = np.concatenate([x, np.zeros((B - n, x.shape[1]), x.dtype)]) if n < B else x
            hits += int((np.asarray(predict(x, model=model))[:n] == y_test[i:i + n]).sum())
        return hits / len(x_test)

    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(len(x_train))
        t0 = time.perf_counter()
        for s in range(steps):
            idx = order[s * B:(s + 1) * B]
            train_on_batch(args.T, x_train[idx], jax.nn.one_hot(y_train[idx], n_classes), model=model,
                           optim_w=optim_w, optim_h=optim_h)
        jax.block_until_ready(model.layers[0].nn.weight.get())
        train_s = time.perf_counter() - t0
        print(json.dumps({"epoch": epoch, "train_s": train_s, "test_accuracy": test_accuracy(),
                          "jax": jax.__version__, "pcx": _version("pcx")}), flush=True)


def _version(dist: str) -> str:
    from importlib.metadata import version
    return version(dist)


if __name__ == "__main__":
    main()
