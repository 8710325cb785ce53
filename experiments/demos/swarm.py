"""A particle swarm converging on one neuron's weights.

The neuron is ``p(y=1 | x) = sigmoid(w1 x1 + w2 x2)`` on two seeded blobs; its loss over the
(w1, w2) plane is drawn as contours. Each particle is a candidate (w1, w2); every iteration it
moves by the particle-swarm rule the ``particle_swarm`` learner uses (its own inertia, c1, c2
and velocity clamp, the kernel ``pso_move_numpy``)::

    v <- clip(w v + c1 r1 (personal best - p) + c2 r2 (swarm best - p));   p <- p + v

The frame strip (and ``swarm.gif``) shows the swarm closing in on the minimum.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from experiments.demos._common import finish, main_for


def neuron_loss(W: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Mean logistic loss of the neuron for each row of ``W`` (k, 2)."""
    z = x @ W.T                                          # (n, k)
    return np.mean(np.logaddexp(0, z) - y[:, None] * z, axis=0)


# the demo's own velocity bound: the plane spans ±6, so a step of at most 2 per coordinate lets the
# swarm cross it in a few iterations (the learner's bound is per weight of a real network)
PLANE_CLAMP = 2.0


def swarm_history(x, y, *, n_particles: int, iterations: int, seed: int):
    """Positions (iterations+1, k, 2) and the swarm-best loss per iteration."""
    from learners._kernels.swarm import pso_move_numpy
    from learners.particle_swarm import ParticleSwarm
    hp = ParticleSwarm()                                 # the learner's inertia and accelerations
    rng = np.random.default_rng(seed)
    P = rng.uniform(-6, 6, (n_particles, 2))
    V = np.zeros_like(P)
    pbest, pbest_f = P.copy(), neuron_loss(P, x, y)
    positions, best = [P.copy()], [float(pbest_f.min())]
    for _ in range(iterations):
        gbest = pbest[np.argmin(pbest_f)]
        r1, r2 = rng.random(P.shape), rng.random(P.shape)
        pso_move_numpy(P, V, pbest, gbest, r1, r2, hp.inertia, hp.c1, hp.c2, PLANE_CLAMP)
        f = neuron_loss(P, x, y)
        better = f < pbest_f
        pbest[better], pbest_f[better] = P[better], f[better]
        positions.append(P.copy())
        best.append(float(pbest_f.min()))
    return np.array(positions), np.array(best)


def run(out_dir="demos", *, quick: bool = False, seed: int = 0) -> dict:
    import matplotlib.pyplot as plt
    from matplotlib.animation import FuncAnimation, PillowWriter
    rng = np.random.default_rng([seed, 1])
    x = np.concatenate([rng.normal([1.5, 0.5], 0.8, (100, 2)), rng.normal([-1.0, -1.5], 0.8, (100, 2))])
    y = np.repeat([1.0, 0.0], 100)
    iterations = 12 if quick else 40
    positions, best = swarm_history(x, y, n_particles=20, iterations=iterations, seed=seed)
    grid = np.linspace(-7, 7, 120)
    G = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
    L = np.log(neuron_loss(G, x, y)).reshape(len(grid), len(grid))
    frames = np.unique(np.linspace(0, iterations, 6).astype(int))

    def draw(ax, t):
        ax.contourf(grid, grid, L, levels=25, cmap="Greys_r")
        ax.plot(*positions[:t + 1, :, :].transpose(2, 0, 1), color="tab:orange", lw=0.5, alpha=0.5)
        ax.scatter(*positions[t].T, color="tab:orange", edgecolors="k", s=25, zorder=3)
        ax.set_title(f"iteration {t}: best loss {best[t]:.3f}", fontsize=9)
        ax.set_xlim(-7, 7)
        ax.set_ylim(-7, 7)
        ax.set_xlabel("w1")

    fig, axes = plt.subplots(1, len(frames), figsize=(3 * len(frames), 3.2))
    for ax, t in zip(axes, frames):
        draw(ax, t)
    axes[0].set_ylabel("w2")
    fig.suptitle("Particle swarm on one neuron's weights (contours: log loss)")
    fig.tight_layout()
    spread = [float(np.linalg.norm(positions[t] - positions[t].mean(0), axis=1).mean()) for t in (0, iterations)]
    numbers = finish(out_dir, "swarm", fig, {"best_loss": best.tolist(), "spread_first_last": spread,
                                             "gif": str(Path(out_dir) / "swarm.gif")})
    if not quick:
        anim_fig, ax = plt.subplots(figsize=(4, 4))
        anim = FuncAnimation(anim_fig, lambda t: (ax.clear(), draw(ax, t)), frames=iterations + 1)
        anim.save(numbers["gif"], writer=PillowWriter(fps=4))
        plt.close(anim_fig)
    return numbers


def main(argv=None) -> int:
    return main_for(sys.modules[__name__], "swarm", argv)


if __name__ == "__main__":
    sys.exit(main())
