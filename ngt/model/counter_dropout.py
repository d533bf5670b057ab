"""Attention dropout as a pure function of indices, for kernels that never store the
L x L weights: whether weight (b, h, query, key) survives is a hash of those indices and
a per-call seed, so forward and backward recompute the same mask wherever they need it.

The Triton kernels (``ngt.model.triton_gravity``) compute these bits in Triton; this is
the statement of them that the tests check the kernels against.
"""

from __future__ import annotations

import torch

MIX = 0x45D9F3B  # below 2**27: every product below stays under 2**59 in int64


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixer, in int64 arithmetic that never overflows, so eager, C++ and
    Triton code all compute the same bits."""
    x = ((x >> 16) ^ x) * MIX & 0xFFFFFFFF
    x = ((x >> 16) ^ x) * MIX & 0xFFFFFFFF
    return (x >> 16) ^ x


def dropout_keep(seed: torch.Tensor, b, h, q_idx, kv_idx, n_heads: int, seq_len: int, p: float) -> torch.Tensor:
    """Whether attention weight (b, h, q, kv) survives dropout with probability ``p``."""
    stream = _hash32(seed ^ (b.to(torch.int64) * n_heads + h.to(torch.int64)))
    draw = _hash32(stream ^ (q_idx.to(torch.int64) * seq_len + kv_idx.to(torch.int64)))
    return draw >= int(p * 2**32)


def dropout_seed(seed: torch.Tensor | None, p: float, device: torch.device) -> torch.Tensor:
    """The call's seed as an int64 scalar on ``device``: the given one, else one drawn from
    ``device``'s generator (so runs stay reproducible under ``torch.manual_seed``); 0 without
    dropout, where it is never read and must not consume a draw. Made on the device, never
    copied there: a copy from the host would wait for every kernel queued before it, once
    per layer."""
    if seed is None:
        if p > 0:
            return torch.randint(0, 2**31, (), dtype=torch.int64, device=device)
        return torch.zeros((), dtype=torch.int64, device=device)
    return seed.to(device=device, dtype=torch.int64)
