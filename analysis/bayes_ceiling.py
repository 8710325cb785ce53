"""The best accuracy any classifier can reach on the synthetic two-class toys (their Bayes rate).

A learner at 97% on `moons` may be at the data's ceiling or 3 points short of it; comparisons of
rules on toys ("beats X by 2 points") mean nothing near the ceiling. The generators in
`experiments/datasets/synthetic.py` are known exactly, so the class posterior p(y | x) can be
computed: for `moons` by quadrature over the arc parameter t ~ U(0, pi) of each half circle, for
`xor` in closed form. The expected accuracy of the Bayes rule is E_x[max_y p(y | x)], estimated
here on a large sample from the generator (that average has far less variance than counting
correct predictions).

    python -m analysis.bayes_ceiling            # both toys at the noise levels the experiments use
"""
from __future__ import annotations

import argparse
import math

import numpy as np

from experiments.datasets.synthetic import moons, xor
from core.errors import unknown_name


def moons_posterior(x: np.ndarray, noise: float, n_t: int = 512) -> np.ndarray:
    """p(y = 1 | x) for `moons`: each class is a half circle blurred by N(0, noise^2 I)."""
    t = (np.arange(n_t) + 0.5) * np.pi / n_t             # midpoint rule over t ~ U(0, pi)
    arcs = [np.stack([np.cos(t), np.sin(t)], 1), np.stack([1 - np.cos(t), 0.5 - np.sin(t)], 1)]
    log_lik = []
    for arc in arcs:
        d2 = ((x[:, None, :] - arc[None]) ** 2).sum(-1) / (2 * noise ** 2)
        m = d2.min(1, keepdims=True)                        # log-mean-exp, stable far from the arc
        log_lik.append(-m[:, 0] + np.log(np.exp(-(d2 - m)).mean(1)))
    return 1.0 / (1.0 + np.exp(log_lik[0] - log_lik[1]))


def xor_posterior(x: np.ndarray, noise: float) -> np.ndarray:
    """p(y = 1 | x) for `xor`: four equally likely blobs at (+-1, +-1), class = XOR of the signs."""
    def lik(c):
        return np.exp(-((x - c) ** 2).sum(1) / (2 * noise ** 2))
    corners = [(-1.0, -1.0), (1.0, -1.0), (-1.0, 1.0), (1.0, 1.0)]
    l0 = lik(np.array(corners[0])) + lik(np.array(corners[3]))
    l1 = lik(np.array(corners[1])) + lik(np.array(corners[2]))
    return l1 / (l0 + l1)


def xor_ceiling_closed_form(noise: float) -> float:
    """The sign rule errs when exactly one coordinate crosses zero: 1 - 2q(1 - q), q = P(N(0, s^2) > 1)."""
    q = 0.5 * math.erfc(1.0 / (noise * math.sqrt(2.0)))
    return 1.0 - 2.0 * q * (1.0 - q)


def bayes_accuracy(name: str, noise: float, n: int = 200_000, seed: int = 0, chunk: int = 5_000) -> float:
    """Expected accuracy of the Bayes rule on toy ``name`` (moons | xor) at ``noise``."""
    generators = {"moons": (moons, moons_posterior), "xor": (xor, xor_posterior)}
    if name not in generators:
        raise unknown_name("toy", name, generators)
    draw, posterior = generators[name]
    x, _ = draw(n, np.random.default_rng(seed), noise=noise)
    total = 0.0
    for s in range(0, n, chunk):
        p1 = posterior(x[s:s + chunk], noise)
        total += np.maximum(p1, 1.0 - p1).sum()
    return total / n


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=200_000)
    args = parser.parse_args(argv)
    for name, noise in (("moons", 0.2), ("xor", 0.35)):
        print(f"{name} (noise {noise}): Bayes accuracy {100 * bayes_accuracy(name, noise, args.n):.2f}%")
    print(f"xor closed form: {100 * xor_ceiling_closed_form(0.35):.2f}%")


if __name__ == "__main__":
    main()
