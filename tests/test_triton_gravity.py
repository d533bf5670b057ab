"""The Triton kernels (ngt.model.triton_gravity) against ``reference``: outputs and the
gradient of every input and parameter, for every switch setting, with and without dropout.

On a GPU they run as compiled CUDA kernels. Without one, Triton's interpreter runs the
same kernel code on CPU tensors (numpy underneath), which checks their math, masks and
tiling. The interpreter must be chosen before Triton sees a kernel, so
``test_kernels_under_the_interpreter`` runs this file again in a subprocess with
TRITON_INTERPRET=1; that is the CPU twin of the CUDA tests, and runs in the default suite.
Tolerances are test_backends' float32 ones. Each gradient test runs both backwards:
the default one pass, and the two passes taken under torch.use_deterministic_algorithms.
"""

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ngt.config import ModelConfig, VariantConfig
from ngt.model import NGT
from ngt.model.counter_dropout import dropout_keep
from ngt.model.gravity import BACKENDS, GravitySwitches, available
from test_backends import DEFAULT, F32, NAMES, SWITCHES, assert_matches, inputs, run

pytest.importorskip("triton")
import triton  # noqa: E402

import ngt.model.triton_gravity as tg  # noqa: E402  (defines kernels, compiles none)

INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRETED else "cuda"
on_kernels = pytest.mark.skipif(
    not INTERPRETED and not (torch.cuda.is_available() and available("triton", torch.device("cuda"))),
    reason="Triton kernels need CUDA, or TRITON_INTERPRET=1 (test_kernels_under_the_interpreter)")


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


def triton_attention(*args, **kwargs):
    return tg.triton_gravity_attention(*args, **kwargs)


@on_kernels
@pytest.mark.parametrize("sw", SWITCHES, ids=str)
def test_matches_reference(sw, backward):
    """L = 40 leaves every tile of the forward (64 rows) and backward (32) partly past the end;
    coordinate width 4 and value width 8 are padded to the kernels' 16."""
    assert_matches(triton_attention, sw, F32["out"], F32["grad"], dtype=torch.float32, device=DEVICE)


@on_kernels
@pytest.mark.parametrize("sw", [DEFAULT, GravitySwitches("value", "soft", False)], ids=str)
def test_matches_reference_over_several_tiles(sw, backward):
    """L = 100: two row tiles forward, four key tiles, and backward's loops over several."""
    assert_matches(triton_attention, sw, F32["out"], F32["grad"], dtype=torch.float32, device=DEVICE, L=100,
                   ch=16, dh=16)


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
    bf16 under AMP, or by a GPU fusing V_i / (1 - p) - O into a multiply-add (the CUDA
    tests caught that; the interpreter never fuses). Here O in those rows moves by bf16's
    rounding before the backward, and no gradient may notice."""
    x = inputs(L=40, dh=16, dtype=torch.float32, device=DEVICE)
    out = triton_attention(*(x[n] for n in NAMES), DEFAULT, dropout_p=dropout_p, seed=torch.tensor(5))
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
    can break this: the interpreter runs programs one after another."""
    x = inputs(L=100, ch=16, dh=16, dtype=torch.float32, device=DEVICE)
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
        run(triton_attention, inputs(L=40, dtype=torch.float32, device=DEVICE), DEFAULT)
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
    assert_matches(triton_attention, GravitySwitches("scores", "soft", True), F32["out"], F32["grad"],
                   dtype=torch.float32, device=DEVICE, L=100, ch=16, dh=16)


def _keep_mask(seed: torch.Tensor, B: int, H: int, L: int, p: float) -> torch.Tensor:
    """counter_dropout's mask over every (b, h, query, key): what the kernels must draw."""
    b, h, q, k = torch.meshgrid(*(torch.arange(n) for n in (B, H, L, L)), indexing="ij")
    return dropout_keep(seed.cpu(), b, h, q, k, H, L, p)


@on_kernels
@pytest.mark.parametrize("sw", [DEFAULT, GravitySwitches("value", "soft", True)], ids=str)
def test_dropout_is_the_counter_mask_applied_after_the_softmax(sw, backward):
    """Against reference with the same mask stated densely: outputs and every gradient."""
    p, seed = 0.25, torch.tensor(123)
    x = inputs(L=40, dtype=torch.float32, device=DEVICE)
    B, H, L = x["zq"].shape[:3]
    keep = _keep_mask(seed, B, H, L, p).to(DEVICE)
    assert 0.65 < float(keep.float().mean()) < 0.85

    def reference(*args):
        return BACKENDS["reference"](*args, dropout_p=p, keep=keep)

    def kernels(*args):
        return triton_attention(*args, dropout_p=p, seed=seed)

    ref_out, ref_grads = run(reference, x, sw)
    out, grads = run(kernels, x, sw)
    torch.testing.assert_close(out, ref_out, **F32["out"])
    for name in NAMES:
        if ref_grads[name] is not None:
            torch.testing.assert_close(grads[name], ref_grads[name], **F32["grad"], msg=lambda m: f"d/d{name}: {m}")


@on_kernels
def test_dropout_seed_fixes_the_mask():
    x = [t.detach() for t in inputs(L=40, dtype=torch.float32, device=DEVICE).values()]
    a, b, c = (triton_attention(*x, DEFAULT, dropout_p=0.25, seed=torch.tensor(s)) for s in (7, 7, 8))
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
    step = torch.compile(lambda *a: triton_attention(*a, DEFAULT, dropout_p=0.25), mode="reduce-overhead")
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
    ref_out, ref_grads = run(BACKENDS["reference"], x, DEFAULT)
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
def test_whole_model_matches_reference(backward):
    """An NGT model on the kernels, soft cutoff so the radius has a gradient too."""
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, coord_dim=8, head_coord_dim=4, mlp_dim=48, context=64,
                      dropout=0.0)
    idx = torch.randint(0, 50, (2, 48), generator=torch.Generator().manual_seed(2)).to(DEVICE)
    results = []
    for backend in ("reference", "triton"):
        torch.manual_seed(0)
        model = NGT(cfg, VariantConfig(radius="soft"), 50, backend).to(DEVICE)
        logits, _ = model(idx)
        F.cross_entropy(logits.view(-1, 50), idx.view(-1)).backward()
        results.append((logits.detach(), {n: p.grad for n, p in model.named_parameters()}))
    (ref_logits, ref_grads), (logits, grads) = results
    torch.testing.assert_close(logits, ref_logits, **F32["out"])
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, **F32["grad"], msg=lambda m: f"{name}: {m}")
    assert ref_grads["blocks.0.attn.radius_raw"].abs() > 0


@pytest.mark.skipif(INTERPRETED, reason="this is the driver of the interpreted run")
def test_kernels_under_the_interpreter():
    """Every test above, on CPU, through Triton's interpreter, in a fresh process."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-o", "addopts=", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                           "-k", "not under_the_interpreter and not bf16 and not cuda_graphs"],
                          cwd=Path(__file__).parents[1], env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) == 50, tail
    assert "skipped" not in proc.stdout, tail
