"""Seeds derived explicitly from (base seed, purpose, indices) with integer arithmetic.

Never Python's ``hash()`` of a string (salted per process): every process of a distributed run
and every resumed run must derive the same seed for the same purpose.
"""

from __future__ import annotations

import numpy as np
import torch

# purposes: small fixed integers, so that seeds for different uses never collide
INIT, DATA_ORDER, AUGMENT, SHUFFLE, SPLIT, REGULARIZATION, EVAL, PAIRS = range(8)


def derive(base: int, purpose: int, *indices: int) -> int:
    """A 63-bit seed from (base, purpose, indices) through numpy's SeedSequence mixing."""
    seq = np.random.SeedSequence([int(base), int(purpose), *map(int, indices)])
    return (
        int(seq.generate_state(2, np.uint32).astype(np.uint64) @ np.array([1 << 31, 1], np.uint64))
        >> 1
    )


def numpy_rng(base: int, purpose: int, *indices: int) -> np.random.Generator:
    return np.random.default_rng(
        np.random.SeedSequence([int(base), int(purpose), *map(int, indices)])
    )


def torch_generator(
    base: int, purpose: int, *indices: int, device: str | torch.device = "cpu"
) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(derive(base, purpose, *indices))
    return g
