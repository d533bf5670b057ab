"""Every attention backend against ``reference``: outputs and the gradient of every input
and parameter, for every switch combination.

Tolerances: the blocked form runs in float64 and must agree to 1e-9 (it reorders no
sum that matters). Compiled and Triton kernels run in float32 and fuse or reorder the
score math, so they get rtol 1e-4 / atol 1e-5 on outputs and 1e-3 / 1e-4 on gradients;
the inputs keep scores moderate (masses and gamma near 1, no coincident coordinates
off the diagonal), so these bounds are a property of float32, not slack for errors.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F

from ngt.config import ModelConfig, VariantConfig
from ngt.model import build_model
from ngt.model.gravity import BACKENDS, GravitySwitches, blocked_attention, can_compile, query_blocks

SWITCHES = [GravitySwitches(mass, radius, rsqrt)
            for mass, radius, rsqrt in itertools.product(["scores", "value"], ["hard", "soft", "none"], [True, False])]
DEFAULT = GravitySwitches("scores", "hard", True)  # ngt_default
NAMES = ("zq", "v", "m", "gamma", "beta", "r")
F32 = {"out": dict(rtol=1e-4, atol=1e-5), "grad": dict(rtol=1e-3, atol=1e-4)}

needs_compiler = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="no C++ compiler for inductor")


def inputs(B=2, H=2, L=40, ch=4, dh=8, dtype=torch.float64, device="cpu", seed=0) -> dict[str, torch.Tensor]:
    """L = 40 spans two query blocks of ``blocked_attention``; r = 2.2 cuts some pairs.
    Coordinates have variance 4 / ch, so squared distances average 8 at every width and
    the cutoff keeps some pairs at ch = 16 too."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "zq": torch.randn(B, H, L, ch, generator=g) * (4 / ch) ** 0.5, "v": torch.randn(B, H, L, dh, generator=g),
        "m": 0.5 + torch.rand(B, L, generator=g), "gamma": 0.5 + torch.rand(H, generator=g),
        "beta": torch.randn(H, generator=g), "r": torch.tensor(2.2),
    }
    return {k: x.to(device, dtype).requires_grad_() for k, x in t.items()}


def run(fn, x: dict, sw: GravitySwitches) -> tuple[torch.Tensor, dict]:
    """Output and gradients of a fixed random projection of it (every output element matters)."""
    out = fn(*(x[n] for n in NAMES), sw)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * w).sum(), [x[n] for n in NAMES], allow_unused=True)
    return out.detach(), dict(zip(NAMES, grads))


def assert_matches(fn, sw: GravitySwitches, out_tol: dict, grad_tol: dict, **kw) -> None:
    x = inputs(**kw)
    ref_out, ref_grads = run(BACKENDS["reference"], x, sw)
    out, grads = run(fn, x, sw)
    assert ref_grads["zq"].any(), "every pair is cut: the test would check only V"
    torch.testing.assert_close(out, ref_out, **out_tol)
    for name in NAMES:
        if ref_grads[name] is None:  # r under the hard cutoff: no gradient anywhere (SPEC)
            assert grads[name] is None or not grads[name].any(), name
        else:
            torch.testing.assert_close(grads[name], ref_grads[name], **grad_tol, msg=lambda m: f"d/d{name}: {m}")


@pytest.mark.parametrize("ch", [4, 16])
def test_the_inputs_exercise_the_cutoff(ch):
    x = inputs(ch=ch)
    d2 = torch.cdist(x["zq"], x["zq"]) ** 2
    cut = float((d2 > x["r"] ** 2).double().mean())
    assert 0.1 < cut < 0.9
    assert len(query_blocks(40)) == 2


@pytest.mark.parametrize("sw", SWITCHES, ids=str)
def test_blocked_matches_reference(sw):
    assert_matches(blocked_attention, sw, dict(rtol=1e-9, atol=1e-12), dict(rtol=1e-9, atol=1e-12))


@needs_compiler
def test_compiled_matches_reference_default_switches():
    assert_matches(BACKENDS["compiled"], DEFAULT, F32["out"], F32["grad"], dtype=torch.float32)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("sw", [s for s in SWITCHES if s != DEFAULT], ids=str)
def test_compiled_matches_reference(sw):
    assert_matches(BACKENDS["compiled"], sw, F32["out"], F32["grad"], dtype=torch.float32)


def _model_logits_and_grads(impl: str) -> tuple[torch.Tensor, dict]:
    cfg = ModelConfig(d_model=32, n_layers=2, n_heads=2, coord_dim=8, head_coord_dim=4, mlp_dim=48, context=64,
                      dropout=0.0, attn_impl=impl)
    torch.manual_seed(0)
    model = build_model(cfg, VariantConfig(radius="soft"), 50, torch.device("cpu"))
    idx = torch.randint(0, 50, (2, 48), generator=torch.Generator().manual_seed(2))
    logits, _ = model(idx)
    F.cross_entropy(logits.view(-1, 50), idx.view(-1)).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


@needs_compiler
def test_ngt_with_compiled_attention_matches_reference():
    """The whole model, soft cutoff (so the radius too has a gradient to compare)."""
    ref_logits, ref_grads = _model_logits_and_grads("reference")
    logits, grads = _model_logits_and_grads("compiled")
    torch.testing.assert_close(logits, ref_logits, **F32["out"])
    assert ref_grads.keys() == grads.keys()
    for name, g in ref_grads.items():
        torch.testing.assert_close(grads[name], g, **F32["grad"], msg=lambda m: f"{name}: {m}")
    assert ref_grads["blocks.0.attn.radius_raw"].abs() > 0


def test_compiling_leaves_room_for_every_switch_setting_and_shape(monkeypatch):
    """Twelve switch settings times a few shapes are more graphs than dynamo's default
    limit of 8, past which it would warn and quietly run eagerly (a grid in one process).
    From that default, whatever an earlier test raised it to, and a fresh compile."""
    from ngt.model.gravity import _compiled_blocks

    monkeypatch.setattr(torch._dynamo.config, "cache_size_limit", 8)  # recompile_limit's older name, an alias
    _compiled_blocks.cache_clear()
    _compiled_blocks()
    assert torch._dynamo.config.cache_size_limit >= 64
