"""CPU cost of the paper's MNIST setting (experiment=reproduce_noprop_mnist), projected to 100 epochs.

Times one training step after a warm-up step (batch 128) and one evaluation batch of each learner with
the experiment's blocks (conv 32-64-128 + FC 256, head 256-128, T = 10) in CPU seconds of one thread
(process time, so the number does not depend on how loaded the shared machine is), and projects one
run: 100 epochs of 55000 images, each followed by an evaluation of 10000 train + 5000 val + 10000
test images with one inference run (the config's inference_runs: 5 multiplies that part by 5; CT/FM's
final 1000-step evaluation is not included).

    python benchmarks/noprop_step_time.py > benchmarks/results/noprop_step_time.txt
"""
import time

import torch

from learners import make_learner
from learners.base import DataInfo
from networks import NetworkSpec, build

torch.set_num_threads(1)
SPEC = NetworkSpec(kind="convnet", channels=(32, 64, 128), pool=(2, 2, 2), widths=(256,), batch_norm=True,
                   input_shape=(1, 28, 28), n_classes=10)
LEARNERS = {
    "noprop_dt": dict(n_blocks=10, block_schedule="all", head_widths=(256, 128)),
    "noprop_backprop": dict(n_blocks=10, head_widths=(256, 128)),
    "noprop_ct": dict(head_widths=(256, 128), batch_norm=False, eval_steps=20, inference_steps=1000),
    "noprop_fm": dict(head_widths=(256, 128), eval_steps=20, inference_steps=1000),
}
STEPS, EPOCHS, N_TRAIN, N_EVAL, BATCH = 1, 100, 55000, 25000, 128

gen = torch.Generator().manual_seed(0)
x = torch.rand(BATCH, 1, 28, 28, generator=gen)
y = torch.randint(0, 10, (BATCH,), generator=gen)
print(f"{'learner':16s} {'train s/step':>12s} {'eval s/1000 img':>16s} {'projected h (100 epochs)':>26s}")
for name, params in LEARNERS.items():
    learner = make_learner(name, **params)
    info = DataInfo(input_shape=SPEC.input_shape, n_classes=10, n_train=N_TRAIN, batch_size=BATCH,
                    steps_per_epoch=N_TRAIN // BATCH + 1, n_epochs=EPOCHS)
    state = learner.init(build(SPEC, 0), info, 0)
    learner.update(state, (x, y))          # warm-up
    t0 = time.process_time()
    for _ in range(STEPS):
        learner.update(state, (x, y))
    step = (time.process_time() - t0) / STEPS
    t0 = time.process_time()
    learner.predict(state, x)               # per-epoch evaluation (eval_steps for CT/FM)
    per_image = (time.process_time() - t0) / BATCH
    total = EPOCHS * (info.steps_per_epoch * step + N_EVAL * per_image)
    print(f"{name:16s} {step:12.2f} {1000 * per_image:16.2f} {total / 3600:26.1f}", flush=True)
