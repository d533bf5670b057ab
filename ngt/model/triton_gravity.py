"""Gravity attention as Triton kernels of our own: flash-attention style, forward and backward.

Why not FlexAttention (docs/performance.md#flexattention-dropped): its kernels compute
every matmul in the inputs' dtype, so the float32 that the distances need also puts the
P @ V product off the tensor cores; attention dropout has no slot in it; and the
gradients of the per-row tables it captures arrive by one atomic add per score. Here

- squared distances come from float32 ``|z_i|^2 + |z_j|^2 - 2 z_i . z_j`` in IEEE
  precision (a difference of large terms), a token's distance to itself is exactly 0 with
  no gradient (as in docs/model.md#distances' difference form), and the softmax is float32;
- P @ V and the backward's products with V and dO run in the values' dtype: bf16 on
  tensor cores under AMP, float32 (IEEE) otherwise;
- dropout keeps or drops each weight by a counter-based hash of (seed, batch, head,
  query, key), the same mask as ``ngt.model.counter_dropout``, recomputed in backward,
  never stored;
- the backward recomputes the scores once, by key block (as flash attention does): dV,
  the key side of dz, the key masses' and the soft radius's gradients are summed in
  registers along the keys a program owns; the query side of dz and the gradients of the
  per-row tables (gamma and beta times the masses) are added up across programs by atomic
  adds, as flash attention adds up dQ, so their float sums round in the order the GPU
  runs them. Under ``torch.use_deterministic_algorithms`` (``train.deterministic``) the
  backward takes two passes instead, one over query blocks and one over key blocks, each
  writing only what it owns, and every kernel runs at one fixed tile shape rather than
  the one a timing picked (the shape sets the order of the sums): the same bits on every
  run on one GPU and software stack, for the cost of computing the scores twice.

Nothing L x L is stored: forward keeps the output, and per row a log-sum-exp and the
ALONE flag (_delta_own).

Kernels are written for CUDA; with ``TRITON_INTERPRET=1`` set before this module is
imported, Triton runs the same kernels on CPU tensors, which is how the tests check them
against ``reference`` on a machine without a GPU (tests/test_triton_gravity.py).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ngt.config import Mass, Radius
from ngt.model.counter_dropout import dropout_seed
from ngt.model.gravity import Gravity, GravitySwitches, mass_scaled_values, row_tables, score_dtype

LOG2E: tl.constexpr = tl.constexpr(1.4426950408889634)
_RADIUS = {Radius.none: 0, Radius.hard: 1, Radius.soft: 2}


def _tuned(kernel, *shapes: tuple[int, int, int, int], restore: tuple[str, ...] = (), key: tuple[str, ...] = ()):
    """``kernel`` autotuned over tile shapes (rows, keys, warps, pipeline stages), once per
    length, widths and switch setting; ``key`` adds the kernel's own switches. The first
    shape is the only one under the interpreter (it cannot time anything) and with
    ``NGT_TRITON_AUTOTUNE=0``, which the CUDA parity tests use: they meet some 30 (length,
    switches) keys, and tuning each compiles every shape. ``restore`` names the outputs a
    kernel adds into, which tuning's repeated runs must find as they were."""
    configs = [triton.Config({"BM": bm, "BN": bn}, num_warps=w, num_stages=st) for bm, bn, w, st in shapes]
    if os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("NGT_TRITON_AUTOTUNE") == "0":
        configs = configs[:1]
    return triton.autotune(configs=configs, key=["L", "CH", "DV", "MASS_SCORES", "RADIUS", "RSQRT", "DROPOUT", *key],
                           restore_value=list(restore))(kernel)


def _launch(kernel, tuned, shape: tuple[int, int, int, int], deterministic: bool, grid, *args, **meta) -> None:
    """Run ``kernel`` over ``grid(tile)``: at the shape its autotuner ``tuned`` times
    best, or at ``shape`` under deterministic algorithms (or without an autotuner). The
    shape sets the order in which floats are summed, so there no timing may choose it."""
    if tuned is not None and not deterministic:
        tuned[grid](*args, **meta)
        return
    bm, bn, warps, stages = shape
    kernel[grid({"BM": bm, "BN": bn})](*args, **meta, BM=bm, BN=bn, num_warps=warps, num_stages=stages)


# Forward keeps a few L x L tiles alive, backward about ten: the shapes are those that
# compile for sm_90a with few or no registers spilled (scripts/kernel_report.py prints
# what each spills; docs/performance.md#kernel-instruction-counts). Wider key blocks mean
# fewer of the one-pass backward's atomic adds per pair (they go as 1 / BN).
_FWD_SHAPES = ((64, 32, 4, 2), (64, 64, 4, 2), (128, 64, 8, 2), (128, 32, 4, 3))
_KEYS_SHAPES = ((32, 32, 4, 2), (16, 32, 4, 2), (32, 32, 8, 2), (32, 64, 8, 2), (32, 64, 8, 3), (32, 32, 4, 3))
_QUERIES_SHAPE = (32, 32, 4, 2)  # the query pass runs only in the deterministic backward, at one shape
_ROWS_BM = 64  # the one-pass backward's row pass: one load of dO, O and V per row, nothing to tune


@triton.jit
def _hash32(x):
    """``counter_dropout._hash32`` in uint32, whose products wrap exactly as its int64 ones
    masked to 32 bits do: the same bits, in half the registers of int64 arithmetic."""
    x = ((x >> 16) ^ x) * 0x45D9F3B
    x = ((x >> 16) ^ x) * 0x45D9F3B
    return (x >> 16) ^ x


@triton.jit
def _stream(SEED, bh):
    """The per-(batch, head) hash that ``_keep`` mixes with (query, key)."""
    return _hash32((tl.load(SEED) ^ bh).to(tl.uint32))


@triton.jit
def _keep(stream, rows, cols, L, threshold):
    """Whether each (query, key) weight survives dropout: ``counter_dropout.dropout_keep``."""
    draw = _hash32(stream ^ (rows[:, None] * L + cols[None, :]).to(tl.uint32))
    return draw >= threshold


@triton.jit
def _query_rows(Z, A, C, bh, rows, L, CH: tl.constexpr):
    """A block of query rows' coordinates (BM, CH) and row tables; zeros past the end."""
    in_rows = rows < L
    ch = tl.arange(0, CH)
    zi = tl.load(Z + (bh * L + rows[:, None]) * CH + ch[None, :], mask=in_rows[:, None], other=0.0)
    a_i = tl.load(A + bh * L + rows, mask=in_rows, other=0.0)
    c_i = tl.load(C + bh * L + rows, mask=in_rows, other=0.0)
    return zi, a_i, c_i


@triton.jit
def _key_cols(Z, V, MK, bh, b, cols, L, CH: tl.constexpr, DV: tl.constexpr, MASS_SCORES: tl.constexpr):
    """A block of keys: coordinates transposed (CH, BN), values (BN, DV) and masses (zeros
    where scores do not use them); zeros past the end."""
    in_cols = cols < L
    ch = tl.arange(0, CH)
    dv = tl.arange(0, DV)
    zjT = tl.load(Z + (bh * L + cols[None, :]) * CH + ch[:, None], mask=in_cols[None, :], other=0.0)
    v = tl.load(V + (bh * L + cols[:, None]) * DV + dv[None, :], mask=in_cols[:, None], other=0.0)
    if MASS_SCORES:
        m_j = tl.load(MK + b * L + cols, mask=in_cols, other=0.0)
    else:
        m_j = tl.zeros_like(cols.to(tl.float32))
    return zjT, v, m_j


@triton.jit
def _do_rows(DO, bh, rows, L, DV: tl.constexpr):
    """A block of query rows' dO (BM, DV); zeros past the end."""
    dv = tl.arange(0, DV)
    return tl.load(DO + (bh * L + rows[:, None]) * DV + dv[None, :], mask=(rows < L)[:, None], other=0.0)


@triton.jit
def _lse_do(LSE, DO, bh, rows, L, DV: tl.constexpr):
    """A block of query rows' log-sum-exp and dO (BM, DV)."""
    lse = tl.load(LSE + bh * L + rows, mask=rows < L, other=0.0)
    return lse, _do_rows(DO, bh, rows, L, DV)


@triton.jit
def _delta_own(O, V, ALONE, do, DELTA, OWN, bh, rows, L, rescale, DV: tl.constexpr):
    """Per query row, in float32, written to DELTA and OWN and returned: delta = dO . O,
    which is sum_j dP_ij P_ij with or without dropout, and ``own`` = dO . (V_i / (1 - p) - O)
    (see _probabilities), set to 0 in the rows the forward found ALONE: where their own
    key is kept, O is V_i / (1 - p) in exact arithmetic only; as stored it is rounded (to
    bf16 under AMP), and a GPU may fuse V_i / (1 - p) - O into a multiply-add. (Where it
    is dropped, O = 0 and _probabilities uses -delta = 0 instead.)"""
    in_rows = rows < L
    dv = tl.arange(0, DV)
    at = (bh * L + rows[:, None]) * DV + dv[None, :]
    o = tl.load(O + at, mask=in_rows[:, None], other=0.0).to(tl.float32)
    v = tl.load(V + at, mask=in_rows[:, None], other=0.0).to(tl.float32)
    do = do.to(tl.float32)
    delta = tl.sum(do * o, 1)
    own = tl.sum(do * (v * tl.cast(rescale, tl.float32) - o), 1)
    own = tl.where(tl.load(ALONE + bh * L + rows, mask=in_rows, other=0) != 0, 0.0, own)
    tl.store(DELTA + bh * L + rows, delta, mask=in_rows)
    tl.store(OWN + bh * L + rows, own, mask=in_rows)
    return delta, own


@triton.jit
def _dot_v(a, b, IEEE_PV: tl.constexpr):
    """A product with values or their gradients: IEEE for float32 values (as torch's
    default matmul), tensor cores otherwise."""
    if IEEE_PV:
        out = tl.dot(a, b, input_precision="ieee")
    else:
        out = tl.dot(a, b)
    return out


@triton.jit
def _scores(zi, zjT, rows, cols, a_i, c_i, m_j, r2, L,
            MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr, RSQRT: tl.constexpr, EDGE: tl.constexpr):
    """The scores (docs/model.md#scores) for one (query block, key block) tile, with the
    intermediates backward needs. On an EDGE tile (one the diagonal or the end of the keys
    crosses) the causal and length masks are applied (-inf) and the diagonal's distance is
    0; every other tile lies wholly below the diagonal, so it needs none of that: most of a
    long sequence's tiles, each a few instructions a pair shorter (scripts/kernel_report.py
    counts them).

    Returns (s, d2, g, t, s1, f, live): g = 1 / (d2 + eps), t = c_i - a_i g (the score
    before the key's mass), s1 = t m_j or t, f the soft cutoff's factor, live where the
    distance has a gradient (off the diagonal, and not clamped at 0).
    """
    sq_i = tl.sum(zi * zi, 1)
    sq_j = tl.sum(zjT * zjT, 0)
    raw = sq_i[:, None] + sq_j[None, :] - 2.0 * tl.dot(zi, zjT, input_precision="ieee")
    if EDGE:
        diagonal = rows[:, None] == cols[None, :]
        live = (raw >= 0.0) & (~diagonal)
        d2 = tl.where(diagonal, 0.0, tl.maximum(raw, 0.0))
    else:
        live = raw >= 0.0
        d2 = tl.maximum(raw, 0.0)
    if RSQRT:
        inv = tl.rsqrt(d2 + 1e-6)
        g = inv * inv
    else:
        g = 1.0 / (d2 + 1e-6)
    t = c_i[:, None] - a_i[:, None] * g
    if MASS_SCORES:
        s1 = t * m_j[None, :]
    else:
        s1 = t
    f = s1 * 0.0 + 1.0
    if RADIUS == 1:
        s = tl.where(d2 > r2, float("-inf"), s1)
    elif RADIUS == 2:
        # One division a tile, not one a pair: a GPU's divide is a reciprocal (on the same
        # few special-function units as exp2 and rsqrt) and a multiply.
        f = tl.maximum(1.0 - d2 * (1.0 / r2), 0.0)
        s = s1 * f
    else:
        s = s1
    if EDGE:
        visible = (cols[None, :] <= rows[:, None]) & (rows[:, None] < L) & (cols[None, :] < L)
        s = tl.where(visible, s, float("-inf"))
    return s, d2, g, t, s1, f, live


@triton.jit
def _score_grads(ds, d2, g, t, s1, f, live, a_i, m_j, r2,
                 MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr):
    """From dL/ds of a tile to (w, dt, dm, dr2): dL/d(d2) on live pairs, dL/dt (whose row
    sums are dc, and with -g da), and the per-pair terms of the key masses' and the soft
    radius's gradients."""
    ds1 = ds
    w = tl.zeros_like(ds)
    dr2 = tl.zeros_like(ds)
    if RADIUS == 2:
        ds1 = ds * f
        inv_r2 = 1.0 / r2  # as in _scores
        u = tl.where(f > 0.0, ds * s1 * inv_r2, 0.0)  # dL/df is ds s1, and df/d(d2) is -1 / r2 inside
        w = -u
        dr2 = u * d2 * inv_r2
    if MASS_SCORES:
        dt = ds1 * m_j[None, :]
        dm = ds1 * t
    else:
        dt = ds1
        dm = tl.zeros_like(ds)
    w = tl.where(live, w + dt * a_i[:, None] * g * g, 0.0)
    return w, dt, dm, dr2


@triton.jit
def _fwd_tile(start, Z, V, MK, bh, H, L, zi, rows, a_i, c_i, r2, stream, threshold, top, total, itself, acc,
              CH: tl.constexpr, DV: tl.constexpr, BN: tl.constexpr, MASS_SCORES: tl.constexpr,
              RADIUS: tl.constexpr, RSQRT: tl.constexpr, DROPOUT: tl.constexpr, IEEE_PV: tl.constexpr,
              EDGE: tl.constexpr):
    """The forward's online softmax over one block of keys: the running row maximum
    ``top`` (in the scores' units), the sum of weights ``total``, the weight on the row's
    own key ``itself`` (only EDGE tiles hold the diagonal; the interior ones come first,
    while it is still 0) and ``acc`` = sum P V."""
    cols = start + tl.arange(0, BN)
    zjT, v, m_j = _key_cols(Z, V, MK, bh, bh // H, cols, L, CH, DV, MASS_SCORES)
    s, d2, g, t, s1, f, live = _scores(zi, zjT, rows, cols, a_i, c_i, m_j, r2, L, MASS_SCORES, RADIUS, RSQRT, EDGE)
    # Subtract, then scale to base 2: the row's largest score then weighs exactly 1, and
    # ``scale`` is exactly 1 where the maximum did not move. s * LOG2E - shift would let the
    # GPU fuse a multiply-add (the interpreter does not), leaving 2^(rounding of s LOG2E),
    # a few percent off at a diagonal's -1e6: a row that sees only itself then gets O != V,
    # and dO . (V - O) times that score's 1e6 sensitivity is gamma's and the masses'
    # gradient noise (docs/performance.md#rows-that-see-only-themselves).
    new_top = tl.maximum(top, tl.max(s, 1))
    # A row whose every key so far is cut keeps -inf: subtract 0 instead (no inf - inf).
    shift = tl.where(new_top == float("-inf"), 0.0, new_top)
    p = tl.math.exp2((s - shift[:, None]) * LOG2E)
    scale = tl.math.exp2((top - shift) * LOG2E)
    total = total * scale + tl.sum(p, 1)
    if EDGE:
        itself = itself * scale + tl.sum(tl.where(rows[:, None] == cols[None, :], p, 0.0), 1)
    if DROPOUT:
        p = tl.where(_keep(stream, rows, cols, L, threshold), p, 0.0)
    acc = acc * scale[:, None] + _dot_v(p.to(v.dtype), v, IEEE_PV)
    return new_top, total, itself, acc


@triton.jit
def _fwd_kernel(Z, V, A, C, MK, R2, SEED, OUT, LSE, ALONE, H, L, threshold, rescale,
                CH: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr, RSQRT: tl.constexpr,
                DROPOUT: tl.constexpr, IEEE_PV: tl.constexpr):
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    zi, a_i, c_i = _query_rows(Z, A, C, bh, rows, L, CH)
    r2 = tl.load(R2)
    stream = _stream(SEED, bh)

    top = tl.zeros([BM], dtype=tl.float32) + float("-inf")
    total = tl.zeros([BM], dtype=tl.float32)
    itself = tl.zeros([BM], dtype=tl.float32)
    acc = tl.zeros([BM, DV], dtype=tl.float32)
    below = (pid_m * BM // BN) * BN  # keys before the block's first row: every row sees them all
    for start in range(0, below, BN):
        top, total, itself, acc = _fwd_tile(start, Z, V, MK, bh, H, L, zi, rows, a_i, c_i, r2, stream, threshold,
                                            top, total, itself, acc, CH, DV, BN, MASS_SCORES, RADIUS, RSQRT,
                                            DROPOUT, IEEE_PV, False)
    for start in range(below, tl.minimum((pid_m + 1) * BM, L), BN):
        top, total, itself, acc = _fwd_tile(start, Z, V, MK, bh, H, L, zi, rows, a_i, c_i, r2, stream, threshold,
                                            top, total, itself, acc, CH, DV, BN, MASS_SCORES, RADIUS, RSQRT,
                                            DROPOUT, IEEE_PV, True)
    out = acc * (tl.cast(rescale, tl.float32) / total)[:, None]  # float32: torch.compile passes floats as fp64
    in_rows = rows < L
    dv = tl.arange(0, DV)
    tl.store(OUT + (bh * L + rows[:, None]) * DV + dv[None, :], out.to(OUT.dtype.element_ty), mask=in_rows[:, None])
    # Natural units: backward's exp2((s - lse) LOG2E) is then exactly 1 where a row's
    # weight is all on one key (total = 1, log 1 = 0), whatever the GPU fuses.
    tl.store(LSE + bh * L + rows, top + tl.log(total), mask=in_rows)
    # Rows whose other keys add nothing to the total: all cut (row 0; rows the radius leaves
    # alone), or under half an ulp of the own key's weight, where their true share of
    # dL/ds is below float32's rounding of it anyway.
    tl.store(ALONE + bh * L + rows, (itself == total).to(tl.int8), mask=in_rows)


_fwd_tuned = _tuned(_fwd_kernel, *_FWD_SHAPES)


@triton.jit
def _probabilities(s, lse, do, v, delta, own, stream, rows, cols, L, threshold, rescale,
                   DROPOUT: tl.constexpr, IEEE_PV: tl.constexpr, EDGE: tl.constexpr):
    """Backward's recomputation for a tile: the kept, rescaled weights (what multiplied V)
    and dL/ds = P (dP - dO_i . O_i), from the scores, the forward's log-sum-exp and dO.

    On the diagonal (only EDGE tiles have one) that difference is ``own`` instead
    (_delta_own): where a token attends only to itself it is exactly 0, as the softmax's
    true gradient is, where dO_i . V_i - dO_i . O_i would leave a rounding residue, and
    that score's sensitivity to gamma and the masses is 1 / eps = 1e6.
    """
    p = tl.math.exp2((s - lse[:, None]) * LOG2E)
    dp = _dot_v(do, tl.trans(v), IEEE_PV)
    if DROPOUT:
        keep = _keep(stream, rows, cols, L, threshold)
        rescale = tl.cast(rescale, tl.float32)  # torch.compile passes Python floats as fp64
        kept = tl.where(keep, p * rescale, 0.0)
        dp = tl.where(keep, dp * rescale, 0.0)
        own_term = tl.where(keep, own[:, None], -delta[:, None])
    else:
        kept = p
        own_term = own[:, None]
    if EDGE:
        ds = p * tl.where(rows[:, None] == cols[None, :], own_term, dp - delta[:, None])
    else:
        ds = p * (dp - delta[:, None])
    return kept, ds


@triton.jit
def _query_dz(zi, zjT, w):
    """A tile's share of the query side of dz: d(d2_ij)/dz_i = 2 (z_i - z_j), summed over the keys j."""
    return 2.0 * (zi * tl.sum(w, 1)[:, None] - tl.dot(w, tl.trans(zjT), input_precision="ieee"))


@triton.jit
def _keys_tile(start, Z, A, C, DO, LSE, DELTA, OWN, DZ, DA, DC, bh, L, zjT, v, m_j, cols, r2, stream, threshold,
               rescale, dv_acc, dzT_acc, dm_acc, dr2_acc, CH: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr,
               MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr, RSQRT: tl.constexpr, DROPOUT: tl.constexpr,
               IEEE_PV: tl.constexpr, ONE_PASS: tl.constexpr, EDGE: tl.constexpr):
    """_bwd_keys_kernel's work for one block of queries against its block of keys. Rows
    past the end need no mask where _scores applies none: their coordinates, row tables,
    dO and delta load as zeros, so each of their scores is 0 or -inf, and every term they
    add is a product with dO = 0 or with dL/ds = P (0 - 0)."""
    rows = start + tl.arange(0, BM)
    in_rows = rows < L
    zi, a_i, c_i = _query_rows(Z, A, C, bh, rows, L, CH)
    lse, do = _lse_do(LSE, DO, bh, rows, L, DV)
    delta = tl.load(DELTA + bh * L + rows, mask=in_rows, other=0.0)
    own = tl.load(OWN + bh * L + rows, mask=in_rows, other=0.0)
    s, d2, g, t, s1, f, live = _scores(zi, zjT, rows, cols, a_i, c_i, m_j, r2, L, MASS_SCORES, RADIUS, RSQRT, EDGE)
    kept, ds = _probabilities(s, lse, do, v, delta, own, stream, rows, cols, L, threshold, rescale, DROPOUT, IEEE_PV,
                              EDGE)
    dv_acc += _dot_v(tl.trans(kept).to(do.dtype), do, IEEE_PV)
    w, dt, dm, dr2 = _score_grads(ds, d2, g, t, s1, f, live, a_i, m_j, r2, MASS_SCORES, RADIUS)
    # d(d2_ij)/dz_j = 2 (z_j - z_i), summed over the queries i
    dzT_acc += 2.0 * (zjT * tl.sum(w, 0)[None, :] - tl.dot(tl.trans(zi), w, input_precision="ieee"))
    dm_acc += tl.sum(dm, 0)
    if ONE_PASS:
        ch = tl.arange(0, CH)
        tl.atomic_add(DZ + (bh * L + rows[:, None]) * CH + ch[None, :], _query_dz(zi, zjT, w),
                      mask=in_rows[:, None], sem="relaxed")
        tl.atomic_add(DA + bh * L + rows, -tl.sum(dt * g, 1), mask=in_rows, sem="relaxed")
        tl.atomic_add(DC + bh * L + rows, tl.sum(dt, 1), mask=in_rows, sem="relaxed")
        dr2_acc += tl.sum(dr2, 0)
    return dv_acc, dzT_acc, dm_acc, dr2_acc


@triton.jit
def _bwd_keys_kernel(Z, V, A, C, MK, R2, SEED, DO, LSE, DELTA, OWN, DZ, DVAL, DMK, DA, DC, DR2, H, L, threshold,
                     rescale, CH: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                     MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr, RSQRT: tl.constexpr,
                     DROPOUT: tl.constexpr, IEEE_PV: tl.constexpr, ONE_PASS: tl.constexpr):
    """One block of keys against every query that sees it: dV, the key side of dz (added
    to DZ) and the key masses' gradient, from the rows' DELTA and OWN written before.

    With ONE_PASS it is the whole backward: each tile's query-side terms (dz, the row
    tables' gradients) are added to DZ, DA and DC (zeros before) by atomic adds, as flash
    attention adds up dQ, and the radius's by key into DR2. Else _bwd_queries_kernel has
    written those, and no two programs write one place."""
    pid_n = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    cols = pid_n * BN + tl.arange(0, BN)
    zjT, v, m_j = _key_cols(Z, V, MK, bh, bh // H, cols, L, CH, DV, MASS_SCORES)
    r2 = tl.load(R2)
    stream = _stream(SEED, bh)

    dv_acc = tl.zeros([BN, DV], dtype=tl.float32)
    dzT_acc = tl.zeros([CH, BN], dtype=tl.float32)
    dm_acc = tl.zeros([BN], dtype=tl.float32)
    dr2_acc = tl.zeros([BN], dtype=tl.float32)
    # Query blocks from ``below`` on lie wholly below this block of keys' diagonal.
    below = ((pid_n + 1) * BN + BM - 1) // BM * BM
    for start in range((pid_n * BN // BM) * BM, tl.minimum(below, L), BM):
        dv_acc, dzT_acc, dm_acc, dr2_acc = _keys_tile(
            start, Z, A, C, DO, LSE, DELTA, OWN, DZ, DA, DC, bh, L, zjT, v, m_j, cols, r2, stream, threshold,
            rescale, dv_acc, dzT_acc, dm_acc, dr2_acc, CH, DV, BM, MASS_SCORES, RADIUS, RSQRT, DROPOUT, IEEE_PV,
            ONE_PASS, True)
    for start in range(below, L, BM):
        dv_acc, dzT_acc, dm_acc, dr2_acc = _keys_tile(
            start, Z, A, C, DO, LSE, DELTA, OWN, DZ, DA, DC, bh, L, zjT, v, m_j, cols, r2, stream, threshold,
            rescale, dv_acc, dzT_acc, dm_acc, dr2_acc, CH, DV, BM, MASS_SCORES, RADIUS, RSQRT, DROPOUT, IEEE_PV,
            ONE_PASS, False)
    ch = tl.arange(0, CH)
    in_cols = cols < L
    dv = tl.arange(0, DV)
    tl.store(DVAL + (bh * L + cols[:, None]) * DV + dv[None, :], dv_acc.to(DVAL.dtype.element_ty), mask=in_cols[:, None])
    dz_at = DZ + (bh * L + cols[None, :]) * CH + ch[:, None]
    if ONE_PASS:
        tl.atomic_add(dz_at, dzT_acc, mask=in_cols[None, :], sem="relaxed")
        tl.store(DR2 + bh * L + cols, dr2_acc, mask=in_cols)
    else:
        tl.store(dz_at, tl.load(dz_at, mask=in_cols[None, :], other=0.0) + dzT_acc, mask=in_cols[None, :])
    tl.store(DMK + bh * L + cols, dm_acc, mask=in_cols)


_bwd_keys_tuned = _tuned(_bwd_keys_kernel, *_KEYS_SHAPES, restore=("DZ", "DA", "DC"), key=("ONE_PASS",))


@triton.jit
def _bwd_rows_kernel(O, V, ALONE, DO, DELTA, OWN, L, rescale, DV: tl.constexpr, BM: tl.constexpr):
    """The one-pass backward's first step: every row's delta and ``own``."""
    bh = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    _delta_own(O, V, ALONE, _do_rows(DO, bh, rows, L, DV), DELTA, OWN, bh, rows, L, rescale, DV)


@triton.jit
def _queries_tile(start, Z, V, MK, bh, H, L, zi, rows, a_i, c_i, lse, do, delta, own, r2, stream, threshold, rescale,
                  dz_acc, da_acc, dc_acc, dr2_acc, CH: tl.constexpr, DV: tl.constexpr, BN: tl.constexpr,
                  MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr, RSQRT: tl.constexpr, DROPOUT: tl.constexpr,
                  IEEE_PV: tl.constexpr, EDGE: tl.constexpr):
    """_bwd_queries_kernel's work for its block of queries against one block of keys."""
    cols = start + tl.arange(0, BN)
    zjT, v, m_j = _key_cols(Z, V, MK, bh, bh // H, cols, L, CH, DV, MASS_SCORES)
    s, d2, g, t, s1, f, live = _scores(zi, zjT, rows, cols, a_i, c_i, m_j, r2, L, MASS_SCORES, RADIUS, RSQRT, EDGE)
    kept, ds = _probabilities(s, lse, do, v, delta, own, stream, rows, cols, L, threshold, rescale, DROPOUT, IEEE_PV,
                              EDGE)
    w, dt, dm, dr2 = _score_grads(ds, d2, g, t, s1, f, live, a_i, m_j, r2, MASS_SCORES, RADIUS)
    dz_acc += _query_dz(zi, zjT, w)
    da_acc -= tl.sum(dt * g, 1)
    dc_acc += tl.sum(dt, 1)
    dr2_acc += tl.sum(dr2, 1)
    return dz_acc, da_acc, dc_acc, dr2_acc


@triton.jit
def _bwd_queries_kernel(Z, V, A, C, MK, R2, SEED, DO, LSE, DELTA, OWN, O, ALONE, DZ, DA, DC, DR2, H, L,
                        threshold, rescale, CH: tl.constexpr, DV: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
                        MASS_SCORES: tl.constexpr, RADIUS: tl.constexpr, RSQRT: tl.constexpr,
                        DROPOUT: tl.constexpr, IEEE_PV: tl.constexpr):
    """The deterministic backward's first pass: one block of queries against every key it
    sees, writing the query side of dz, the row tables' gradients and this block's share
    of the radius's. First it computes its rows' delta and ``own`` for _bwd_keys_kernel."""
    pid_m = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    rows = pid_m * BM + tl.arange(0, BM)
    zi, a_i, c_i = _query_rows(Z, A, C, bh, rows, L, CH)
    lse, do = _lse_do(LSE, DO, bh, rows, L, DV)
    delta, own = _delta_own(O, V, ALONE, do, DELTA, OWN, bh, rows, L, rescale, DV)
    r2 = tl.load(R2)
    stream = _stream(SEED, bh)

    dz_acc = tl.zeros([BM, CH], dtype=tl.float32)
    da_acc = tl.zeros([BM], dtype=tl.float32)
    dc_acc = tl.zeros([BM], dtype=tl.float32)
    dr2_acc = tl.zeros([BM], dtype=tl.float32)
    below = (pid_m * BM // BN) * BN  # as in _fwd_kernel
    for start in range(0, below, BN):
        dz_acc, da_acc, dc_acc, dr2_acc = _queries_tile(
            start, Z, V, MK, bh, H, L, zi, rows, a_i, c_i, lse, do, delta, own, r2, stream, threshold, rescale,
            dz_acc, da_acc, dc_acc, dr2_acc, CH, DV, BN, MASS_SCORES, RADIUS, RSQRT, DROPOUT, IEEE_PV, False)
    for start in range(below, tl.minimum((pid_m + 1) * BM, L), BN):
        dz_acc, da_acc, dc_acc, dr2_acc = _queries_tile(
            start, Z, V, MK, bh, H, L, zi, rows, a_i, c_i, lse, do, delta, own, r2, stream, threshold, rescale,
            dz_acc, da_acc, dc_acc, dr2_acc, CH, DV, BN, MASS_SCORES, RADIUS, RSQRT, DROPOUT, IEEE_PV, True)
    in_rows = rows < L
    ch = tl.arange(0, CH)
    tl.store(DZ + (bh * L + rows[:, None]) * CH + ch[None, :], dz_acc, mask=in_rows[:, None])
    tl.store(DA + bh * L + rows, da_acc, mask=in_rows)
    tl.store(DC + bh * L + rows, dc_acc, mask=in_rows)
    tl.store(DR2 + bh * L + rows, dr2_acc, mask=in_rows)


def _launch_args(sw: GravitySwitches, dropout_p: float, v: torch.Tensor) -> tuple[int, float, dict]:
    """The dropout threshold (``counter_dropout.dropout_keep``'s), the inverted-dropout factor, and
    the kernels' compile-time switches."""
    switches = dict(MASS_SCORES=sw.mass == Mass.scores, RADIUS=_RADIUS[sw.radius], RSQRT=sw.use_rsqrt,
                    DROPOUT=dropout_p > 0, IEEE_PV=v.dtype == torch.float32)
    return int(dropout_p * 2**32), 1.0 / (1.0 - dropout_p), switches


class _GravityAttention(torch.autograd.Function):
    """Inputs as the kernels want them: z (B, H, L, CH) float32 and v (B, H, L, DV), both
    contiguous with CH and DV powers of two >= 16; a, c (B, H, L) and m (B, L) float32;
    r2 a float32 scalar tensor; seed an int64 scalar tensor."""

    @staticmethod
    def forward(ctx, z, v, a, c, m, r2, sw: GravitySwitches, dropout_p: float, seed):
        B, H, L, CH = z.shape
        DV = v.shape[-1]
        threshold, rescale, switches = _launch_args(sw, dropout_p, v)
        out = torch.empty_like(v)
        lse = torch.empty(B, H, L, dtype=torch.float32, device=z.device)
        alone = torch.empty(B, H, L, dtype=torch.int8, device=z.device)
        # Atomic adds sum in whatever order the GPU runs them, and timing picks the tile
        # shapes: under torch.use_deterministic_algorithms, neither.
        ctx.deterministic = torch.are_deterministic_algorithms_enabled()
        _launch(_fwd_kernel, _fwd_tuned, _FWD_SHAPES[0], ctx.deterministic, _by_rows(L, B * H),
                z, v, a, c, m, r2, seed, out, lse, alone, H, L, threshold, rescale, CH=CH, DV=DV, **switches)
        ctx.save_for_backward(z, v, a, c, m, r2, seed, out, lse, alone)
        ctx.sw, ctx.dropout_p = sw, dropout_p
        return out

    @staticmethod
    def backward(ctx, dout):
        z, v, a, c, m, r2, seed, out, lse, alone = ctx.saved_tensors
        B, H, L, CH = z.shape
        DV = v.shape[-1]
        threshold, rescale, switches = _launch_args(ctx.sw, ctx.dropout_p, v)
        one_pass = not ctx.deterministic
        dout = dout.to(v.dtype).contiguous()
        # One pass adds into dz, da and dc from many programs: they start at zero.
        new = torch.zeros if one_pass else torch.empty
        dz = new(z.shape, dtype=z.dtype, device=z.device)
        da, dc = (new(B, H, L, dtype=torch.float32, device=z.device) for _ in range(2))
        delta, own, dm, dr2 = (torch.empty(B, H, L, dtype=torch.float32, device=z.device) for _ in range(4))
        dv = torch.empty_like(v)
        common = (z, v, a, c, m, r2, seed, dout, lse, delta, own)
        if one_pass:
            _bwd_rows_kernel[(triton.cdiv(L, _ROWS_BM), B * H)](out, v, alone, dout, delta, own, L, rescale, DV=DV,
                                                                BM=_ROWS_BM)
        else:  # the query side first: it writes the rows' delta and own, which the keys kernel reads
            _launch(_bwd_queries_kernel, None, _QUERIES_SHAPE, True, _by_rows(L, B * H),
                    *common, out, alone, dz, da, dc, dr2, H, L, threshold, rescale, CH=CH, DV=DV, **switches)
        _launch(_bwd_keys_kernel, _bwd_keys_tuned, _KEYS_SHAPES[0], ctx.deterministic, _by_keys(L, B * H),
                *common, dz, dv, dm, da, dc, dr2, H, L, threshold, rescale, CH=CH, DV=DV, ONE_PASS=one_pass,
                **switches)
        return dz, dv, da, dc, dm.sum(1), dr2.sum().reshape(r2.shape), None, None, None


def _by_rows(L: int, heads: int):
    """A grid of one program per block of query rows (BM) per (batch, head)."""
    return lambda tile: (triton.cdiv(L, tile["BM"]), heads)


def _by_keys(L: int, heads: int):
    """A grid of one program per block of keys (BN) per (batch, head)."""
    return lambda tile: (triton.cdiv(L, tile["BN"]), heads)


def _padded(x: torch.Tensor) -> torch.Tensor:
    """``x`` contiguous, its last dimension zero-padded to the kernels' tile width: a power
    of two, at least 16 (tl.dot's minimum). Zero columns change no distance and no output,
    and autograd drops their gradients. Widths already fit (the shipped sizes' 16 and 64)
    cost no pad and its backward's slice, one copy fewer each way per layer."""
    n = x.shape[-1]
    width = max(16, triton.next_power_of_2(n))
    return x.contiguous() if width == n else F.pad(x, (0, width - n)).contiguous()


def triton_gravity_attention(zq: torch.Tensor, v: torch.Tensor, m: torch.Tensor, g: Gravity,
                             dropout_p: float = 0.0, seed: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Gravity attention through the kernels above; ``seed`` fixes the dropout mask (drawn
    from torch's generator when omitted, so runs stay reproducible under ``torch.manual_seed``)."""
    f = score_dtype(zq)
    dh = v.shape[-1]
    z = _padded(zq.to(dtype=f, memory_format=torch.contiguous_format))  # one copy, not a cast and then a copy
    vv = _padded(mass_scaled_values(v, m, g.sw))
    a, c, r2 = row_tables(m, g, f)
    out = _GravityAttention.apply(z, vv, a.contiguous(), c.contiguous(), m.to(f).contiguous(), r2.reshape(()),
                                  g.sw, float(dropout_p), dropout_seed(seed, dropout_p, zq.device))
    return out if out.shape[-1] == dh else out[..., :dh]
