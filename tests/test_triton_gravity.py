"""The Triton kernels (ngt.model.triton_gravity) against ``reference``: outputs and the
gradient of every input and parameter, for every switch setting, with and without dropout.

On a GPU they run as compiled CUDA kernels. Without one, Triton's interpreter runs the
same kernel code on CPU tensors (numpy underneath), which checks their math, masks and
tiling. The interpreter must be chosen before Triton is imported (torch imports it), so
``test_kernels_under_the_interpreter`` runs this file again in a subprocess with
TRITON_INTERPRET=1; that is the CPU twin of the CUDA tests, and runs in the default suite.
The interpreter runs one program after another, so there tests that need only the tiling
run one (batch, head) pair (the batch and head indexing is checked where dropout's
per-(batch, head) draws are, and in the whole model). Tolerances are test_backends' float32 ones. Each gradient test runs
both backwards: the default one pass, and the two passes taken under
torch.use_deterministic_algorithms.
"""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ngt.config import Mass, Radius
from ngt.model.backends import available
from ngt.model.counter_dropout import dropout_keep
from ngt.model.gravity import Gravity, GravitySwitches, reference_attention
from test_backends import (DEFAULT, F32, NAMES, SWITCHES, assert_matches, assert_same_model_results, attend, inputs,
                           logits_and_grads, run, small_model, switch_id)

pytest.importorskip("triton")
import triton  # noqa: E402

import ngt.model.triton_gravity as tg  # noqa: E402  (defines kernels, compiles none)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
on_kernels = pytest.mark.skipif(
    not INTERPRETED and not (torch.cuda.is_available() and available("triton", torch.device("cuda"))),
    reason="Triton kernels need CUDA, or TRITON_INTERPRET=1 (test_kernels_under_the_interpreter)")
SMALL = dict(B=1, H=1) if INTERPRETED else {}  # one (batch, head) pair: a quarter of the interpreter's time


@contextlib.contextmanager
def deterministic(on: bool):
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(on, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture(params=["one_pass", "two_pass"])
def backward(request):
    """Which backward the kernels take: one pass adding the query side up by atomic adds
    (the default), or two passes, under torch.use_deterministic_algorithms."""
    with deterministic(request.param == "two_pass"):
        yield request.param


triton_attention = tg.triton_gravity_attention


@on_kernels
@pytest.mark.parametrize("sw", SWITCHES, ids=switch_id)
def test_matches_reference(sw, backward):
    """L = 40 leaves every tile of the forward (64 rows) and backward (32) partly past the end,
    and gives the backward an interior tile; coordinate width 4 and value width 8 are padded
    to the kernels' 16."""
    assert_matches(triton_attention, sw, F32["out"], F32["grad"], dtype=torch.float32, device=DEVICE, **SMALL)


@on_kernels
@pytest.mark.parametrize("sw", [DEFAULT, GravitySwitches(Mass.value, Radius.soft, False)], ids=switch_id)
def test_matches_reference_over_several_tiles(sw, backward):
    """L = 100: two row tiles forward, four key tiles, and backward's loops over several."""
    assert_matches(triton_attention, sw, F32["out"], F32["grad"], dtype=torch.float32, device=DEVICE, L=100,
                   ch=16, dh=16, **SMALL)


@on_kernels
def test_a_row_that_sees_only_itself_gives_no_gradient_noise(backward):
    """Row 0 attends only to itself, so its weights have no gradient; the score's sensitivity
    to gamma there is 1 / eps = 1e6, so a rounding residue in dL/ds would show up in gamma's
    and the masses' gradients (the reason for ``own`` in the kernels)."""
    x = inputs(L=1, dtype=torch.float32, device=DEVICE)
    _, grads = run(triton_attention, x, DEFAULT)
    for name in ("zq", "m", "gamma", "beta"):
        assert not grads[name].any(), name


@on_kernels
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_rows_that_see_only_themselves_ignore_how_o_was_rounded(dropout_p, backward):
    """Row 0, and rows whose other keys the hard radius cuts, attend only to themselves. The
    forward flags them (ALONE), and their dL/ds is exactly 0 however O was rounded: to
    bf16 under AMP, or by a GPU fusing V_i / (1 - p) - O into a multiply-add (which the
    interpreter never does). Here O in those rows moves by bf16's
    rounding before the backward, and no gradient may notice."""
    x = inputs(L=40, dh=16, dtype=torch.float32, device=DEVICE, **SMALL)
    out = attend(triton_attention, x, DEFAULT, dropout_p=dropout_p, seed=torch.tensor(5))
    alone = out.grad_fn.saved_tensors[-1].bool()
    d2 = torch.cdist(x["zq"], x["zq"]).detach() ** 2
    others = (d2 <= x["r"].detach() ** 2).tril(-1).any(-1)
    assert torch.equal(alone, ~others) and alone[..., 1:].any(), "row 0 and the rows the radius leaves alone"
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    wanted = [n for n in NAMES if n != "r"]
    before = torch.autograd.grad((out * w).sum(), [x[n] for n in wanted], retain_graph=True)
    out.data[alone] *= 1 + 2.0**-9
    after = torch.autograd.grad((out * w).sum(), [x[n] for n in wanted])
    for name, b, a in zip(wanted, before, after):
        torch.testing.assert_close(a, b, **F32["grad"], msg=lambda m: f"d/d{name}: {m}")


@on_kernels
def test_deterministic_backward_gives_the_same_bits_every_run():
    """Under torch.use_deterministic_algorithms each gradient element is written by one
    program, summed in a fixed order, at fixed tile shapes: two runs agree bit for bit (the
    one-pass backward's atomic adds need not, so it only matches reference). Only a GPU
    can break this: the interpreter runs programs one after another (so it checks only
    the plumbing, on fewer of them)."""
    size = dict(L=40, **SMALL) if INTERPRETED else dict(L=100)
    x = inputs(ch=16, dh=16, dtype=torch.float32, device=DEVICE, **size)
    with deterministic(True):
        (out_a, grads_a), (out_b, grads_b) = (run(triton_attention, x, DEFAULT) for _ in range(2))
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0)
    for name in NAMES:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=0, atol=0, msg=lambda m: f"d/d{name}: {m}")


class _Launches:
    """A kernel that counts its launches, and runs."""

    def __init__(self, kernel):
        self.kernel, self.count = kernel, 0

    def __getitem__(self, grid):
        self.count += 1
        return self.kernel[grid]


@on_kernels
@pytest.mark.parametrize("on", [False, True], ids=["default", "deterministic"])
def test_deterministic_algorithms_choose_two_passes_at_fixed_tile_shapes(on, monkeypatch):
    """By default the forward and the one-pass backward run at the shapes their autotuners
    pick; under deterministic algorithms the query pass runs too, and nothing is tuned."""
    names = ("_fwd_kernel", "_fwd_tuned", "_bwd_rows_kernel", "_bwd_queries_kernel", "_bwd_keys_kernel",
             "_bwd_keys_tuned")
    spies = {name: _Launches(getattr(tg, name)) for name in names}
    for name, spy in spies.items():
        monkeypatch.setattr(tg, name, spy)
    with deterministic(on):
        run(triton_attention, inputs(L=40, dtype=torch.float32, device=DEVICE, **SMALL), DEFAULT)
    launched = {name: spy.count for name, spy in spies.items() if spy.count}
    if on:
        assert launched == {"_fwd_kernel": 1, "_bwd_queries_kernel": 1, "_bwd_keys_kernel": 1}
    else:
        assert launched == {"_fwd_tuned": 1, "_bwd_rows_kernel": 1, "_bwd_keys_tuned": 1}


@on_kernels
@pytest.mark.parametrize("shape", tg._KEYS_SHAPES, ids=str)
def test_every_tile_shape_of_the_one_pass_backward(shape, monkeypatch):
    """Each shape the autotuner may pick, pinned in turn: L = 100 leaves every one's last
    row and key blocks partly past the end."""
    bm, bn, warps, stages = shape
    monkeypatch.setattr(tg._bwd_keys_tuned, "configs",
                        [triton.Config({"BM": bm, "BN": bn}, num_warps=warps, num_stages=stages)])
    assert_matches(triton_attention, GravitySwitches(Mass.scores, Radius.soft, True), F32["out"], F32["grad"],
                   dtype=torch.float32, device=DEVICE, L=100, ch=16, dh=16, **SMALL)


def _keep_mask(seed: torch.Tensor, B: int, H: int, L: int, p: float) -> torch.Tensor:
    """counter_dropout's mask over every (b, h, query, key): what the kernels must draw."""
    b, h, q, k = torch.meshgrid(*(torch.arange(n) for n in (B, H, L, L)), indexing="ij")
    return dropout_keep(seed.cpu(), b, h, q, k, H, L, p)


@on_kernels
@pytest.mark.parametrize("sw", [DEFAULT, GravitySwitches(Mass.value, Radius.soft, True)], ids=switch_id)
def test_dropout_is_the_counter_mask_applied_after_the_softmax(sw, backward):
    """Against reference with the same mask stated densely: outputs and every gradient."""
    p, seed = 0.25, torch.tensor(123)
    x = inputs(L=40, dtype=torch.float32, device=DEVICE)
    B, H, L = x["zq"].shape[:3]
    keep = _keep_mask(seed, B, H, L, p).to(DEVICE)
    assert 0.65 < float(keep.float().mean()) < 0.85

    ref_out, ref_grads = run(reference_attention, x, sw, dropout_p=p, keep=keep)
    out, grads = run(triton_attention, x, sw, dropout_p=p, seed=seed)
    torch.testing.assert_close(out, ref_out, **F32["out"])
    for n in NAMES:
        if ref_grads[n] is not None:
            torch.testing.assert_close(grads[n], ref_grads[n], **F32["grad"], msg=lambda m: f"d/d{n}: {m}")


@on_kernels
def test_dropout_seed_fixes_the_mask():
    x = {k: t.detach() for k, t in inputs(L=40, dtype=torch.float32, device=DEVICE).items()}
    a, b, c = (attend(triton_attention, x, DEFAULT, dropout_p=0.25, seed=torch.tensor(s)) for s in (7, 7, 8))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


@on_kernels
@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="CUDA graphs need CUDA; test_dropout_seed_fixes_the_mask is the CPU twin")
def test_cuda_graphs_draw_a_new_dropout_mask_every_step():
    """Under CUDA graphs (train.compile_mode's default on CUDA) the dropout seed is drawn
    inside the recorded graph: every replay must draw anew, as torch's generator goes on,
    and the same draws follow the same torch.manual_seed."""
    x = [t.detach() for t in inputs(L=64, dtype=torch.float32, device=DEVICE).values()]
    step = torch.compile(lambda zq, v, m, gamma, beta, r: triton_attention(zq, v, m, Gravity(gamma, beta, r, DEFAULT),
                                                                           dropout_p=0.25), mode="reduce-overhead")
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        # Warm-up, recording, then replays; each replay reuses its output's memory: copies kept.
        runs.append([step(*x).clone() for _ in range(4)])
    assert all(not torch.equal(a, b) for a, b in zip(runs[0], runs[0][1:])), "a replay repeated the last mask"
    for a, b in zip(*runs):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@on_kernels
@pytest.mark.gpu
@pytest.mark.skipif(INTERPRETED, reason="the interpreter's bf16 tl.dot is wrong (triton 3.9): CUDA only")
def test_bf16_values_as_under_amp(backward):
    """Under AMP the values arrive in bf16: P @ V and the products with dO run on tensor
    cores, distances and softmax stay float32, as reference does with bf16 values."""
    x = inputs(B=4, H=4, L=256, ch=16, dh=64, dtype=torch.float32, device=DEVICE)
    x["v"] = x["v"].detach().to(torch.bfloat16).requires_grad_()
    ref_out, ref_grads = run(reference_attention, x, DEFAULT)
    out, grads = run(triton_attention, x, DEFAULT)
    assert out.dtype == torch.bfloat16 and grads["v"].dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out, rtol=2e-2, atol=2e-2)
    for name in NAMES:
        if ref_grads[name] is not None:
            scale = float(ref_grads[name].abs().max())
            assert scale > 0, f"d/d{name} is 0: the test would check nothing"
            torch.testing.assert_close(grads[name].float(), ref_grads[name].float(), rtol=5e-2, atol=2e-2 * scale,
                                       msg=lambda m: f"d/d{name}: {m}")


@on_kernels
def test_whole_model_matches_reference():
    """An NGT model on the kernels, soft cutoff so the radius has a gradient too. The
    default backward: the model passes the kernels the same inputs either way, and each
    backward is checked against reference above."""
    kernels = logits_and_grads(small_model("triton", Radius.soft).to(DEVICE))
    reference = logits_and_grads(small_model("reference", Radius.soft).to(DEVICE))
    assert_same_model_results(kernels, reference)
    assert reference[1]["blocks.0.attn.radius_raw"].abs() > 0


@pytest.mark.skipif(INTERPRETED, reason="this is the driver of the interpreted run")
def test_kernels_under_the_interpreter():
    """Every test above, on CPU, through Triton's interpreter, in a fresh process."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-p", "no:cacheprovider",
                           "-W", "ignore", "-k", "not under_the_interpreter and not bf16 and not cuda_graphs"],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == 49, tail
    assert "skipped" not in proc.stdout, tail
