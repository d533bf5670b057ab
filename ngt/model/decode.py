"""Incremental decoding: what each attention layer keeps of the tokens seen so far.

In both models a token's keys and values (for NGT: its per-head coordinates ``Zh``,
values and mass) depend only on the tokens before it, so they are computed once and
kept; a new token then costs one row of attention instead of a pass over the prefix.
The models take a ``KVCache`` in ``forward(idx, cache=...)``: ``idx`` holds only the
tokens not yet in the cache, and their positions continue from ``cache.length``.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ngt.model.gravity import Gravity, gravity_scores, mass_scaled_values, score_dtype


class LayerCache:
    """One layer's per-token tensors, sequence along dim 2, in buffers of the context's
    size: appending a token writes in place instead of copying the whole prefix."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.buffers: list[torch.Tensor] = []

    def extend(self, *xs: torch.Tensor) -> list[torch.Tensor]:
        """Append the new tokens' tensors; returns each over all tokens so far."""
        T, L = self.length, xs[0].shape[2]
        if T + L > self.capacity:
            raise ValueError(f"cache holds {T} of {self.capacity} tokens and cannot take {L} more: slide the window")
        if not self.buffers:
            self.buffers = [x.new_empty(*x.shape[:2], self.capacity, *x.shape[3:]) for x in xs]
        for buf, x in zip(self.buffers, xs):
            buf[:, :, T : T + L] = x
        self.length = T + L
        return [buf[:, :, : T + L] for buf in self.buffers]


class KVCache:
    def __init__(self, n_layers: int, capacity: int):
        self.layers = [LayerCache(capacity) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].length


def causal_mask(T: int, L: int, device: torch.device) -> Optional[torch.Tensor]:
    """(L, T + L), True where new row i (position T + i) may see key j; None for a single
    new row, which sees every key (the common decoding step skips building a mask)."""
    return torch.ones(L, T + L, dtype=torch.bool, device=device).tril(T) if L > 1 else None


def cached_gravity_attention(cache: LayerCache, zq: torch.Tensor, v: torch.Tensor, m: torch.Tensor,
                             g: Gravity) -> torch.Tensor:
    """``reference_attention`` for the new rows against every cached token and themselves."""
    T, L = cache.length, zq.shape[-2]
    v = mass_scaled_values(v, m, g.sw)  # cached already scaled, as reference scales V before A @ V
    f = score_dtype(zq)
    zq = zq.to(f)
    # |z|^2 is kept with each key, so a step computes it for the new rows only; the rest of
    # squared_distances' |q|^2 + |k|^2 - 2 q.k is one matmul against the cached keys.
    sq = zq.pow(2).sum(-1, keepdim=True)
    zk, sk, vk, mk = cache.extend(zq, sq, v, m.unsqueeze(1))
    d2 = torch.add(sq + sk.mT, zq @ zk.mT, alpha=-2.0).clamp_min_(0.0)
    score = gravity_scores(d2, m.to(f), g.to(f), m_keys=mk.squeeze(1).to(f))
    mask = causal_mask(T, L, zq.device)
    if mask is not None:
        score = score.masked_fill(~mask, float("-inf"))
    return torch.softmax(score, dim=-1).to(v.dtype) @ vk


def cached_sdpa(cache: LayerCache, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The baseline's causal attention for the new rows against every cached token and themselves."""
    T, L = cache.length, q.shape[-2]
    k, v = cache.extend(k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(T, L, q.device))
