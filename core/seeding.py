"""Named random streams: every random number of a run comes from its seed and the stream's name.

``seed_stream(seed, "mono_forward.projections")`` is an integer seed drawn by numpy's
``SeedSequence`` from the run's seed and the name's CRC-32, so streams are independent of each
other and of their order of use, and a new stream never shifts an old one (unlike seed + offset,
where two offsets can collide with another run's seed).
"""
from __future__ import annotations

import zlib

import numpy as np


def seed_stream(seed: int, name: str, *keys: int) -> int:
    """A 32-bit seed for the stream ``name`` of a run seeded with ``seed``; ``keys`` (such as the step)
    index independent sub-streams, so a generator can be rebuilt from the run's position alone."""
    entropy = [int(seed), zlib.crc32(name.encode()), *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
