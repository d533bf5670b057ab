"""Gravity attention scores (SPEC, 'GravityAttention'), and the backends that compute them.

Every backend takes per-head coordinates ``zq`` (B, H, L, ch), values ``v``
(B, H, L, dh), token masses ``m`` (B, L), and the learned ``gamma``, ``beta`` (H,)
and ``r`` (scalar), and returns the attention output (B, H, L, dh).  They differ only
in how much of the L x L work they materialise; ``reference`` is the statement of
the math and the others are checked against it.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

EPS = 1e-6


@dataclass(frozen=True)
class GravitySwitches:
    mass: str  # "scores" | "value"
    radius: str  # "hard" | "soft" | "none"
    use_rsqrt: bool


def squared_distances(zq: torch.Tensor, zk: Optional[torch.Tensor] = None) -> torch.Tensor:
    """||a - b||^2 = |a|^2 + |b|^2 - 2 a.b: a matmul instead of a (B, H, L, L, ch) tensor.

    Between the rows of ``zq`` and those of ``zk`` (cached decoding), or ``zq`` itself.
    Clamped at 0 because cancellation can leave tiny negatives on the diagonal.
    """
    sq = zq.pow(2).sum(-1)
    sk, zk = (sq, zq) if zk is None else (zk.pow(2).sum(-1), zk)
    d2 = sq.unsqueeze(-1) + sk.unsqueeze(-2) - 2.0 * (zq @ zk.transpose(-1, -2))
    return d2.clamp_min(0.0)


def gravity_scores(
    d2: torch.Tensor,
    m: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    r: torch.Tensor,
    sw: GravitySwitches,
    m_keys: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Scores before the causal mask: (B, H, Lq, Lk); hard-cut pairs are -inf.

    ``m`` are the query rows' masses; ``m_keys`` the keys' when those are other tokens
    (cached decoding: new rows against every token so far).
    """
    g = gamma.view(1, -1, 1, 1)
    if sw.use_rsqrt:
        inv = torch.rsqrt(d2 + EPS)
        score = -g * inv * inv
    else:
        score = -g / (d2 + EPS)
    score = score + beta.view(1, -1, 1, 1)
    if sw.mass == "scores":
        mk = m if m_keys is None else m_keys
        score = score * (m.unsqueeze(-1) * mk.unsqueeze(-2)).unsqueeze(1)
    r2 = r * r
    if sw.radius == "hard":
        score = score.masked_fill(d2 > r2, float("-inf"))
    elif sw.radius == "soft":
        score = score * F.relu(1.0 - d2 / r2)
    return score


def score_dtype(x: torch.Tensor) -> torch.dtype:
    """float32 at least: -gamma / (d2 + 1e-6) reaches -1e6 on the diagonal, past float16."""
    return torch.promote_types(x.dtype, torch.float32)


def mass_scaled_values(v: torch.Tensor, m: torch.Tensor, sw: GravitySwitches) -> torch.Tensor:
    """V as attention multiplies it: each value row times its token's mass when masses
    weight the values (SPEC's ``mass_in_value``), else V itself."""
    if sw.mass != "value":
        return v
    return v * m.unsqueeze(1).unsqueeze(-1).to(v.dtype)


def row_tables(m: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, r: torch.Tensor, sw: GravitySwitches,
               f: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For kernels that see one score at a time: per query row, ``a`` = gamma and ``c`` =
    beta (B, H, L), times the query's mass when masses scale the scores, and r^2.

    m_i m_j (-gamma / (d2 + eps) + beta) = m_j (-(gamma m_i) / (d2 + eps) + beta m_i), so a
    kernel needs only these and the key's mass. r^2 is detached under the hard cutoff,
    which has no gradient (SPEC), so no kernel sums one.
    """
    B, L = m.shape
    rows = m.to(f).unsqueeze(1) if sw.mass == "scores" else torch.ones(B, 1, L, dtype=f, device=m.device)
    a = gamma.to(f).view(1, -1, 1) * rows
    c = beta.to(f).view(1, -1, 1) * rows
    r2 = (r.detach() if sw.radius == "hard" else r).to(f) ** 2
    return a, c, r2


def _causal_mask(L: int, device: torch.device) -> torch.Tensor:
    return torch.ones(L, L, dtype=torch.bool, device=device).tril()


def reference_attention(
    zq: torch.Tensor,
    v: torch.Tensor,
    m: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    r: torch.Tensor,
    sw: GravitySwitches,
    dropout_p: float = 0.0,
    diagnostics: Optional[dict] = None,
    keep: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Plain L x L attention; scores and softmax in ``score_dtype`` whatever the AMP dtype.

    ``keep`` (B, H, L, L), if given, is the dropout mask to apply instead of drawing one:
    how the tests state the kernels' counter-based dropout (ngt.model.counter_dropout)."""
    L = zq.shape[-2]
    f = score_dtype(zq)
    d2 = squared_distances(zq.to(f))
    score = gravity_scores(d2, m.to(f), gamma.to(f), beta.to(f), r.to(f), sw)
    causal = _causal_mask(L, zq.device)
    score = score.masked_fill(~causal, float("-inf"))
    attn = torch.softmax(score, dim=-1)
    if diagnostics is not None:
        _record(diagnostics, d2, attn, causal, r, sw)
    if keep is None:
        attn = F.dropout(attn, p=dropout_p, training=dropout_p > 0)
    else:
        attn = attn * keep / (1.0 - dropout_p)
    v = mass_scaled_values(v, m, sw)
    return attn.to(v.dtype) @ v


@torch.no_grad()
def _record(out: dict, d2, attn, causal, r, sw: GravitySwitches) -> None:
    pairs = causal.sum() * d2.shape[0] * d2.shape[1]
    out["mean_d2"] = float((d2 * causal).sum() / pairs)
    plogp = torch.where(attn > 0, attn * attn.clamp_min(1e-30).log(), torch.zeros_like(attn))
    out["entropy"] = float(-plogp.sum(-1).mean())
    cut = (d2 > r * r) & causal if sw.radius != "none" else torch.zeros_like(causal)
    out["cut_frac"] = float(cut.sum() / pairs)


AttentionFn = Callable[..., torch.Tensor]


def query_blocks(L: int) -> list[tuple[int, int]]:
    """Row ranges for ``blocked_attention``: about 8 blocks of at least 32 rows.

    Causal rows in block [s, e) only see keys [0, e), so n blocks compute (n + 1) / 2n
    of the L x L pairs (56% at 8); each block's tensors are also small enough to be
    reused by the allocator instead of mapped afresh. More blocks would mean more,
    smaller kernels and a longer compile for little further saving.
    """
    size = max(32, -(-L // 8))
    return [(s, min(s + size, L)) for s in range(0, L, size)]


def blocked_attention(
    zq: torch.Tensor,
    v: torch.Tensor,
    m: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    r: torch.Tensor,
    sw: GravitySwitches,
    dropout_p: float = 0.0,
) -> torch.Tensor:
    """``reference`` computed one block of query rows at a time against only the keys
    causality lets it see: the same scores and softmax, on about half the pairs."""
    f = score_dtype(zq)
    zq, m, gamma, beta, r = zq.to(f), m.to(f), gamma.to(f), beta.to(f), r.to(f)
    v = mass_scaled_values(v, m, sw)
    # Masks as an added 0 / -inf that is not differentiated: the softmax already gives
    # masked pairs a zero gradient, so backward needs no saved mask (masked_fill's does).
    smooth = replace(sw, radius="none") if sw.radius == "hard" else sw
    r2 = (r * r).detach()
    out = []
    for s, e in query_blocks(zq.shape[-2]):
        d2 = squared_distances(zq[..., s:e, :], zq[..., :e, :])
        score = gravity_scores(d2, m[:, s:e], gamma, beta, r, smooth, m_keys=m[:, :e])
        keep = torch.ones(e - s, e, dtype=torch.bool, device=zq.device).tril(s)
        if sw.radius == "hard":
            keep = keep & (d2.detach() <= r2)
        masked = torch.where(keep, 0.0, float("-inf"))
        attn = torch.softmax(score + masked, dim=-1)
        attn = F.dropout(attn, p=dropout_p, training=dropout_p > 0)
        out.append(attn.to(v.dtype) @ v[..., :e, :])
    return torch.cat(out, dim=-2)


@functools.cache
def _compiled_blocks() -> AttentionFn:
    # Static shapes: a run sees two or three (training, evaluation, a last partial batch),
    # and each gets its own fully specialised kernel instead of one slower symbolic one.
    room_for_graphs()
    return torch.compile(blocked_attention, dynamic=False)


def room_for_graphs(limit: int = 64) -> None:
    """Let dynamo keep up to ``limit`` graphs of one function. A local grid runs every
    variant in one process: each switch setting, times each shape (and the model's
    ``want_coords``), is one more graph, and past the default of 8 dynamo warns and runs
    the rest eagerly, which would time later runs differently from earlier ones."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before torch 2.7
    setattr(config, name, max(getattr(config, name), limit))


def compiled_attention(
    zq: torch.Tensor,
    v: torch.Tensor,
    m: torch.Tensor,
    gamma: torch.Tensor,
    beta: torch.Tensor,
    r: torch.Tensor,
    sw: GravitySwitches,
    dropout_p: float = 0.0,
    diagnostics: Optional[dict] = None,
) -> torch.Tensor:
    """``blocked_attention`` under torch.compile: per block, the elementwise score math,
    the masks and the softmax fused into a few loops, forward and backward, instead of
    one pass (and one saved tensor) per operation.

    The first call per shape and switch setting compiles (seconds); diagnostics stay
    on the eager reference path.
    """
    if diagnostics is not None:
        return reference_attention(zq, v, m, gamma, beta, r, sw, dropout_p, diagnostics)
    return _compiled_blocks()(zq, v, m, gamma, beta, r, sw, dropout_p)


def _triton_attention(*args, **kwargs) -> torch.Tensor:
    from ngt.model.triton_gravity import triton_gravity_attention  # imports triton: only when chosen

    return triton_gravity_attention(*args, **kwargs)


BACKENDS: dict[str, AttentionFn] = {
    "reference": reference_attention,
    "compiled": compiled_attention,
    "triton": _triton_attention,
}


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here: inductor needs Triton on CUDA and a
    C++ compiler on CPU."""
    try:
        if device.type == "cuda":
            from torch.utils._triton import has_triton

            return has_triton()
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
        return True
    except Exception:  # no compiler, or an inductor without this probe: stay eager
        return False


def available(name: str, device: torch.device) -> bool:
    if name == "reference":
        return True
    if name == "compiled":
        return can_compile(device)
    # Triton kernels run on CPU only in its interpreter (for tests): training needs CUDA.
    return name == "triton" and device.type == "cuda" and can_compile(device)


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend actually used for ``name`` on ``device``; ``auto`` picks the fastest one
    whose gradients are verified: triton on CUDA, else compiled where inductor can build
    kernels, else reference.

    On an H100 at w3_25m (block 512, batch 16, dropout 0.1) an ngt_default step took
    31.6 ms with triton against the baseline's 18.3 ms, and triton matched reference
    there in every parity test (README, 'Speed').
    """
    if name == "auto":
        return next(b for b in ("triton", "compiled", "reference") if available(b, device))
    if name not in BACKENDS:
        from ngt.errors import NGTError

        raise NGTError(f"unknown model.attn_impl '{name}' (choose from auto, {', '.join(BACKENDS)})")
    if not available(name, device):
        from ngt.errors import NGTError

        raise NGTError(f"model.attn_impl={name} cannot train on {device.type} here (use auto or reference)")
    return name
