"""Gravity attention on FlexAttention: no L x L matrix in memory, forward or backward.

FlexAttention computes ``q . k`` blockwise and hands every score to a ``score_mod``.
Appending two columns turns that dot product into the squared distance itself:
``q' = [z, |z|^2, 1]`` and ``k' = [-2 z, 1, |z|^2]`` give ``q'_i . k'_j = ||z_i - z_j||^2``,
so ``score_mod`` applies the rest of SPEC's score: ``-gamma / (d2 + eps) + beta``, the
masses and the radius, from tensors it captures (gamma and beta as per-row tables, see
``_gravity_flex``). Autograd through ``score_mod`` gives
gamma, beta, the masses and (soft cutoff) the radius their gradients; the causal mask
is a BlockMask, so blocks above the diagonal are skipped, not computed and discarded.

Attention dropout (SPEC drops attention weights after the softmax) has no slot in a
FlexAttention kernel, so it is done exactly by doubling the keys: copy 0 carries the
values and keeps the score only where the dropout mask keeps the pair, copy 1 carries
zero values and keeps the score only where the pair is dropped. The softmax's
normaliser is then the full row sum, and the output is ``dropout(A) @ V`` with a
counter-based hash as the mask, so forward and backward agree without storing it.
That costs twice the score work, in training only.

FlexAttention trains on CUDA only (no backward on CPU), but its forward runs on CPU
under torch.compile, which is how the tests check this formulation against reference.
"""

from __future__ import annotations

import functools
from typing import Optional

import torch
from torch.nn.attention.flex_attention import BlockMask, create_block_mask, flex_attention

from ngt.model.counter_dropout import dropout_keep, dropout_seed
from ngt.model.gravity import (EPS, GravitySwitches, compiled_attention, mass_scaled_values, reference_attention,
                               row_tables, score_dtype)

# The distance is a difference of large terms: TF32 dot products would cost it ~3 digits.
_KERNEL_OPTIONS = {"FLOAT32_PRECISION": "'ieee'"}
# FlexAttention's CUDA kernels refuse value heads narrower than this (torch 2.11: "NYI");
# such toy widths take the compiled path instead.
MIN_HEAD_DIM = 16


def distance_operands(zq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """q', k' with ``q'_i . k'_j == ||z_i - z_j||^2``, zero-padded to a multiple of 16
    columns (an aligned row for the GPU kernels; zeros add nothing to the dot product)."""
    sq = zq.pow(2).sum(-1, keepdim=True)
    one = torch.ones_like(sq)
    ch = zq.shape[-1] + 2
    pad = (0, -ch % 16)
    q = torch.nn.functional.pad(torch.cat([zq, sq, one], -1), pad)
    k = torch.nn.functional.pad(torch.cat([-2.0 * zq, one, sq], -1), pad)
    return q, k


def _causal(L: int):
    # Key index modulo L: with dropout the keys are two copies of the sequence.
    return lambda b, h, q_idx, kv_idx: q_idx >= kv_idx % L


@functools.lru_cache(maxsize=16)
def causal_block_mask(L: int, copies: int, device: str) -> BlockMask:
    """The causal BlockMask over ``copies`` concatenated copies of the keys; it depends on
    shapes only (never on a learned value), so it is built once and reused."""
    return create_block_mask(_causal(L), None, None, L, copies * L, device=device)


def _gravity_flex(q, k, v, block_mask, a, c, m_keys, r2, seed, sw: GravitySwitches, p: float):
    """One FlexAttention call; ``score`` arrives as the squared distance.

    ``a``, ``c`` and ``r2`` (B, H, L) are gamma and beta times the query's mass (or 1) and
    the squared radius, per query row: tables rather than per-head scalars because
    FlexAttention returns a captured tensor's gradient by atomic adds, one per score,
    and a (H,) or scalar tensor would funnel every score of a head into one address.
    """
    H, L = q.shape[1], q.shape[2]

    def score_mod(score, b, h, q_idx, kv_idx):
        j = kv_idx % L
        # A token's distance to itself is exactly 0 with no gradient, as in SPEC's difference
        # form: the identity leaves a rounding residue there, and d(score)/d(d2) is
        # gamma / eps^2 = 1e12 times gamma, which turned that residue into noise in dz.
        d2 = torch.where(q_idx == j, 0.0, torch.clamp_min(score, 0.0))
        if sw.use_rsqrt:
            inv = torch.rsqrt(d2 + EPS)
            s = -a[b, h, q_idx] * inv * inv
        else:
            s = -a[b, h, q_idx] / (d2 + EPS)
        s = s + c[b, h, q_idx]
        if sw.mass == "scores":
            s = s * m_keys[b, j]
        if sw.radius == "hard":
            s = torch.where(d2 > r2[b, h, q_idx], -float("inf"), s)
        elif sw.radius == "soft":
            s = s * torch.relu(1.0 - d2 / r2[b, h, q_idx])
        if p > 0:
            keep = dropout_keep(seed, b, h, q_idx, j, H, L, p)
            s = torch.where(keep == (kv_idx < L), s, -float("inf"))
        return s

    return flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=1.0,
                          kernel_options=_KERNEL_OPTIONS)


@functools.cache
def _compiled_flex():
    # FlexAttention only runs as its fused kernel under torch.compile (eager is a slow
    # L x L reference). The switches and p are constants of the trace.
    return torch.compile(_gravity_flex, dynamic=False)


def flex_gravity_attention(
    zq: torch.Tensor,
    v: torch.Tensor,
    m: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    r: torch.Tensor,
    sw: GravitySwitches,
    dropout_p: float = 0.0,
    diagnostics: Optional[dict] = None,
    seed: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """SPEC's attention through FlexAttention; ``seed`` fixes the dropout mask (drawn from
    torch's generator when omitted, so runs stay reproducible under ``torch.manual_seed``)."""
    if diagnostics is not None:
        return reference_attention(zq, v, m, gamma, beta, r, sw, dropout_p, diagnostics)
    if v.shape[-1] < MIN_HEAD_DIM:
        return compiled_attention(zq, v, m, gamma, beta, r, sw, dropout_p)
    L = zq.shape[2]
    f = score_dtype(zq)
    q, k = distance_operands(zq.to(f))
    vv = mass_scaled_values(v.to(f), m, sw)
    copies = 2 if dropout_p > 0 else 1
    if copies == 2:
        k = torch.cat([k, k], dim=2)
        vv = torch.cat([vv, torch.zeros_like(vv)], dim=2)
    seed = dropout_seed(seed, dropout_p, zq.device)
    block_mask = causal_block_mask(L, copies, str(zq.device))
    a, c, r2 = row_tables(m, gamma, beta, r, sw, f)
    out = _compiled_flex()(q, k, vv, block_mask, a, c, m.to(f), r2 * torch.ones_like(a), seed, sw, float(dropout_p))
    if copies == 2:
        out = out / (1.0 - dropout_p)
    return out.to(v.dtype)
