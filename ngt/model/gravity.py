"""Gravity attention, the math (docs/model.md#gravity-attention).

Per head, coordinates ``zq`` (B, H, L, ch), values ``v`` (B, H, L, dh) and the tokens'
masses ``m`` (B, L); per layer, the learned kernel ``Gravity``. With eps = 1e-6:

    d2[i, j]    = ||zq[i] - zq[j]||^2
    score[i, j] = (-gamma / (d2 + eps) + beta) m_i m_j        masses here under mass = scores
                  then -inf where d2 > r^2 (radius = hard), or times relu(1 - d2 / r^2) (soft)
    A[i, j]     = dropout(softmax over j <= i of score[i, j])
    out[i]      = sum over j of A[i, j] V[j] m_j                masses here under mass = value

``reference_attention`` is that statement; ``blocked_attention`` computes the same over
causal blocks of query rows; ``row_tables`` is the factoring the Triton kernels use.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Optional

import torch
import torch.nn.functional as F

from ngt.config import Mass, Radius

EPS = 1e-6


@dataclass(frozen=True)
class GravitySwitches:
    """A variant's choices for the kernel (docs/model.md#variants); hashable, so a compiled
    graph and a kernel build are specialised per setting."""

    mass: Mass
    radius: Radius
    use_rsqrt: bool


@dataclass(frozen=True)
class Gravity:
    """One layer's kernel: strength ``gamma`` and offset ``beta`` per head (H,), the cutoff
    radius ``r`` (a scalar) and the switches (docs/model.md#learned-scalars)."""

    gamma: torch.Tensor
    beta: torch.Tensor
    r: torch.Tensor
    sw: GravitySwitches

    def to(self, dtype: torch.dtype) -> Gravity:
        return Gravity(self.gamma.to(dtype), self.beta.to(dtype), self.r.to(dtype), self.sw)


def squared_distances(zq: torch.Tensor, zk: Optional[torch.Tensor] = None) -> torch.Tensor:
    """||a - b||^2 = |a|^2 + |b|^2 - 2 a.b: a matmul instead of a (B, H, L, L, ch) tensor.

    Between the rows of ``zq`` and those of ``zk`` (cached decoding), or ``zq`` itself.
    Clamped at 0 because cancellation can leave tiny negatives on the diagonal.
    """
    sq = zq.pow(2).sum(-1)
    sk, zk = (sq, zq) if zk is None else (zk.pow(2).sum(-1), zk)
    d2 = sq.unsqueeze(-1) + sk.unsqueeze(-2) - 2.0 * (zq @ zk.transpose(-1, -2))
    return d2.clamp_min(0.0)


def gravity_scores(d2: torch.Tensor, m: torch.Tensor, g: Gravity,
                   m_keys: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Scores before the causal mask: (B, H, Lq, Lk); hard-cut pairs are -inf.

    ``m`` are the query rows' masses; ``m_keys`` the keys' when those are other tokens
    (cached decoding: new rows against every token so far).
    """
    gamma = g.gamma.view(1, -1, 1, 1)
    if g.sw.use_rsqrt:  # the same quantity through a reciprocal square root (docs/model.md#scores)
        inv = torch.rsqrt(d2 + EPS)
        score = -gamma * inv * inv
    else:
        score = -gamma / (d2 + EPS)
    score = score + g.beta.view(1, -1, 1, 1)
    if g.sw.mass == Mass.scores:
        mk = m if m_keys is None else m_keys
        score = score * (m.unsqueeze(-1) * mk.unsqueeze(-2)).unsqueeze(1)
    r2 = g.r * g.r
    if g.sw.radius == Radius.hard:
        score = score.masked_fill(d2 > r2, float("-inf"))
    elif g.sw.radius == Radius.soft:
        score = score * F.relu(1.0 - d2 / r2)
    return score


def score_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: -gamma / (d2 + 1e-6) reaches -1e6 on the diagonal, past float16."""
    return torch.promote_types(x.dtype, torch.float32)


def mass_scaled_values(v: torch.Tensor, m: torch.Tensor, sw: GravitySwitches) -> torch.Tensor:
    """V as attention multiplies it: each value row times its token's mass when masses
    weight the values (docs/model.md#mass), else V itself."""
    # Not ``!= Mass.value``: dynamo reads ``Mass.value`` as Enum's ``value`` property.
    if sw.mass == Mass.scores:
        return v
    return v * m.unsqueeze(1).unsqueeze(-1).to(v.dtype)


def row_tables(m: torch.Tensor, g: Gravity, f: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For kernels that see one score at a time: per query row, ``a`` = gamma and ``c`` =
    beta (B, H, L), times the query's mass when masses scale the scores, and r^2.

    m_i m_j (-gamma / (d2 + eps) + beta) = m_j (-(gamma m_i) / (d2 + eps) + beta m_i), so a
    kernel needs only these and the key's mass. r^2 is detached under the hard cutoff,
    which has no gradient (docs/model.md#radius-cutoff), so no kernel sums one.
    """
    B, L = m.shape
    rows = m.to(f).unsqueeze(1) if g.sw.mass == Mass.scores else torch.ones(B, 1, L, dtype=f, device=m.device)
    a = g.gamma.to(f).view(1, -1, 1) * rows
    c = g.beta.to(f).view(1, -1, 1) * rows
    r2 = (g.r.detach() if g.sw.radius == Radius.hard else g.r).to(f) ** 2
    return a, c, r2


def reference_attention(zq: torch.Tensor, v: torch.Tensor, m: torch.Tensor, g: Gravity, dropout_p: float = 0.0,
                        diagnostics: Optional[dict] = None, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain L x L attention; scores and softmax in ``score_dtype`` whatever the AMP dtype.

    ``diagnostics``, if given, is filled with the layer's statistics (``_record``).
    ``keep`` (B, H, L, L), if given, is the dropout mask to apply instead of drawing one:
    how the tests state the kernels' counter-based dropout (ngt.model.counter_dropout)."""
    L = zq.shape[-2]
    f = score_dtype(zq)
    d2 = squared_distances(zq.to(f))
    score = gravity_scores(d2, m.to(f), g.to(f))
    causal = torch.ones(L, L, dtype=torch.bool, device=zq.device).tril()
    score = score.masked_fill(~causal, float("-inf"))
    attn = torch.softmax(score, dim=-1)
    if diagnostics is not None:
        _record(diagnostics, d2, attn, causal, g)
    if keep is None:
        attn = F.dropout(attn, p=dropout_p, training=dropout_p > 0)
    else:
        attn = attn * keep / (1.0 - dropout_p)
    v = mass_scaled_values(v, m, g.sw)
    return attn.to(v.dtype) @ v


@torch.no_grad()
def _record(out: dict, d2: torch.Tensor, attn: torch.Tensor, causal: torch.Tensor, g: Gravity) -> None:
    """The layer's statistics (docs/model.md#diagnostics), from the L x L tensors only the
    reference path holds."""
    pairs = causal.sum() * d2.shape[0] * d2.shape[1]
    out["mean_d2"] = float((d2 * causal).sum() / pairs)
    plogp = torch.where(attn > 0, attn * attn.clamp_min(1e-30).log(), torch.zeros_like(attn))
    out["entropy"] = float(-plogp.sum(-1).mean())
    cut = (d2 > g.r * g.r) & causal if g.sw.radius != Radius.none else torch.zeros_like(causal)
    out["cut_frac"] = float(cut.sum() / pairs)
    out.update(gamma_mean=float(g.gamma.mean()), gamma_std=float(g.gamma.std()), beta_mean=float(g.beta.mean()),
               radius=float(g.r))


def query_blocks(L: int) -> list[tuple[int, int]]:
    """Row ranges for ``blocked_attention``: about 8 blocks of at least 32 rows.

    Causal rows in block [s, e) only see keys [0, e), so n blocks compute (n + 1) / 2n
    of the L x L pairs (56% at 8); each block's tensors are also small enough to be
    reused by the allocator instead of mapped afresh. More blocks would mean more,
    smaller kernels and a longer compile for little further saving.
    """
    size = max(32, -(-L // 8))
    return [(s, min(s + size, L)) for s in range(0, L, size)]


def blocked_attention(zq: torch.Tensor, v: torch.Tensor, m: torch.Tensor, g: Gravity,
                      dropout_p: float = 0.0) -> torch.Tensor:
    """``reference_attention`` computed one block of query rows at a time against only the
    keys causality lets it see: the same scores and softmax, on about half the pairs."""
    f = score_dtype(zq)
    zq, m, g = zq.to(f), m.to(f), g.to(f)
    v = mass_scaled_values(v, m, g.sw)
    # Masks as an added 0 / -inf that is not differentiated: the softmax already gives
    # masked pairs a zero gradient, so backward needs no saved mask (masked_fill's does).
    hard = g.sw.radius == Radius.hard
    smooth = replace(g, sw=replace(g.sw, radius=Radius.none)) if hard else g
    r2 = (g.r * g.r).detach()
    out = []
    for s, e in query_blocks(zq.shape[-2]):
        d2 = squared_distances(zq[..., s:e, :], zq[..., :e, :])
        score = gravity_scores(d2, m[:, s:e], smooth, m_keys=m[:, :e])
        keep = torch.ones(e - s, e, dtype=torch.bool, device=zq.device).tril(s)
        if hard:
            keep = keep & (d2.detach() <= r2)
        masked = torch.where(keep, 0.0, float("-inf"))
        attn = torch.softmax(score + masked, dim=-1)
        attn = F.dropout(attn, p=dropout_p, training=dropout_p > 0)
        out.append(attn.to(v.dtype) @ v[..., :e, :])
    return torch.cat(out, dim=-2)
