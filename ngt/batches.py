"""Batches of (input, target) windows cut from a 1-D array of token ids.

Three streams, three generators: training batches (``data_seed``), the fixed
evaluation batches (``eval_seed``, drawn once so every evaluation of every run in a
sweep scores the same tokens) and repulsion sampling (in the trainer).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from ngt.errors import NGTError

Batch = tuple[torch.Tensor, torch.Tensor]


def check_fits(ids: np.ndarray, split: str, batch_size: int, block_size: int) -> None:
    need = batch_size * (block_size + 1)
    if len(ids) < need:
        raise NGTError(
            f"the {split} split has {len(ids):,} tokens, fewer than one batch needs "
            f"(train.batch_size={batch_size} x (train.block_size={block_size} + 1) = {need:,}); "
            "use a smaller batch or block, or more data"
        )


def windows(ids: np.ndarray, starts: torch.Tensor, block_size: int) -> Batch:
    rows = np.stack([np.asarray(ids[s : s + block_size + 1], dtype=np.int64) for s in starts.tolist()])
    t = torch.from_numpy(rows)
    return t[:, :-1], t[:, 1:]


def random_starts(ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator) -> torch.Tensor:
    """Where a random batch's windows start: what a batch draws from its generator."""
    return torch.randint(len(ids) - block_size, (batch_size,), generator=generator)


def random_batch(ids: np.ndarray, batch_size: int, block_size: int, generator: torch.Generator) -> Batch:
    return windows(ids, random_starts(ids, batch_size, block_size, generator), block_size)


def fixed_batches(ids: np.ndarray, n: int, batch_size: int, block_size: int, seed: int) -> list[Batch]:
    g = torch.Generator().manual_seed(seed)
    return [random_batch(ids, batch_size, block_size, g) for _ in range(n)]


def full_pass(ids: np.ndarray, batch_size: int, block_size: int) -> Iterator[Batch]:
    """Every non-overlapping window of the split once, in order."""
    starts = torch.arange(0, len(ids) - block_size, block_size)
    for chunk in starts.split(batch_size):
        yield windows(ids, chunk, block_size)
