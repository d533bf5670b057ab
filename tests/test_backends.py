"""Every attention backend against ``reference``: outputs and the gradient of every input
and parameter, for every switch setting.

Tolerances: the blocked form runs in float64 and must agree to 1e-9 (it reorders no
sum that matters). Compiled and Triton kernels run in float32 and fuse or reorder the
score math, so they get rtol 1e-4 / atol 1e-5 on outputs and 1e-3 / 1e-4 on gradients;
the inputs keep scores moderate (masses and gamma near 1, no coincident coordinates
off the diagonal), so these bounds are a property of float32, not slack for errors.

Inductor takes seconds per graph (a switch setting, a shape), so the default run
compiles the default switches only and traces the others with dynamo alone (whose Python
branches are what a switch changes); ``pytest -m slow`` compiles every setting.
"""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.utils import counters

from ngt.config import Mass, ModelConfig, Radius, VariantConfig
from ngt.model import NGT
from ngt.model.backends import _compiled, get_backend
from ngt.model.gravity import Gravity, GravitySwitches, blocked_attention, query_blocks, reference_attention
from ngt.runtime import can_compile, room_for_graphs

SWITCHES = [GravitySwitches(*s) for s in itertools.product(Mass, Radius, [True, False])]
DEFAULT = GravitySwitches(Mass.scores, Radius.hard, True)  # ngt_default
NAMES = ("zq", "v", "m", "gamma", "beta", "r")
F64 = dict(rtol=1e-9, atol=1e-12)
F32 = {"out": dict(rtol=1e-4, atol=1e-5), "grad": dict(rtol=1e-3, atol=1e-4)}

needs_compiler = pytest.mark.skipif(not can_compile(torch.device("cpu")), reason="no C++ compiler for inductor")


def switch_id(sw: GravitySwitches) -> str:
    return f"{sw.mass}-{sw.radius}-{'rsqrt' if sw.use_rsqrt else 'div'}"


def inputs(B=2, H=2, L=40, ch=4, dh=8, dtype=torch.float64, device="cpu", seed=0) -> dict[str, torch.Tensor]:
    """L = 40 spans two query blocks of ``blocked_attention``; r = 2.2 cuts some pairs.
    Coordinates have variance 4 / ch, so squared distances average 8 at every width and
    the cutoff keeps some pairs at ch = 16 too.

    Laid out as a layer passes them: heads are a transposed view of (B, L, H, width), and
    beta is a Parameter. Compiled graphs are specialised to that too, so the one these
    inputs compile at the default switches also serves the whole model below."""
    g = torch.Generator().manual_seed(seed)
    t = {
        "zq": torch.randn(B, L, H, ch, generator=g) * (4 / ch) ** 0.5, "v": torch.randn(B, L, H, dh, generator=g),
        "m": 0.5 + torch.rand(B, L, generator=g), "gamma": 0.5 + torch.rand(H, generator=g),
        "beta": torch.randn(H, generator=g), "r": torch.tensor(2.2),
    }
    x = {k: v.to(device, dtype).requires_grad_() for k, v in t.items()}
    x["zq"], x["v"] = x["zq"].transpose(1, 2), x["v"].transpose(1, 2)
    x["beta"] = torch.nn.Parameter(x["beta"].detach())
    return x


def attend(fn, x: dict, sw: GravitySwitches, **kw) -> torch.Tensor:
    """``fn`` as the model calls a backend, on the inputs ``x``."""
    return fn(x["zq"], x["v"], x["m"], Gravity(x["gamma"], x["beta"], x["r"], sw), **kw)


def run(fn, x: dict, sw: GravitySwitches, **kw) -> tuple[torch.Tensor, dict]:
    """Output and gradients of a fixed random projection of it (every output element matters)."""
    out = attend(fn, x, sw, **kw)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype).to(out.device)
    grads = torch.autograd.grad((out * w).sum(), [x[n] for n in NAMES], allow_unused=True)
    return out.detach(), dict(zip(NAMES, grads))


def assert_matches(fn, sw: GravitySwitches, out_tol: dict, grad_tol: dict, **kw) -> None:
    x = inputs(**kw)
    ref_out, ref_grads = run(reference_attention, x, sw)
    out, grads = run(fn, x, sw)
    assert ref_grads["zq"].any(), "every pair is cut: the test would check only V"
    torch.testing.assert_close(out, ref_out, **out_tol)
    for n in NAMES:
        if ref_grads[n] is None:  # r under the hard cutoff: no gradient anywhere (docs/model.md#idle-parameters)
            assert grads[n] is None or not grads[n].any(), n
        else:
            torch.testing.assert_close(grads[n], ref_grads[n], **grad_tol, msg=lambda m: f"d/d{n}: {m}")


@pytest.mark.parametrize("ch", [4, 16])
def test_the_inputs_exercise_the_cutoff(ch):
    x = inputs(ch=ch)
    d2 = torch.cdist(x["zq"], x["zq"]) ** 2
    cut = float((d2 > x["r"] ** 2).double().mean())
    assert 0.1 < cut < 0.9
    assert len(query_blocks(40)) == 2


room_for_graphs()  # one traced graph per switch setting below
TRACED = torch.compile(blocked_attention, backend="eager", fullgraph=True, dynamic=False)


@pytest.mark.parametrize("sw", SWITCHES, ids=switch_id)
def test_blocked_matches_reference(sw):
    """Run eagerly, and as dynamo traces it for the compiled backend: each switch takes
    its own Python branches, and a mistraced one (an ``Enum`` member read as an attribute,
    say) would compute another setting's attention."""
    assert_matches(blocked_attention, sw, F64, F64)
    assert_matches(TRACED, sw, F64, F64)


@needs_compiler
def test_compiled_matches_reference_default_switches():
    assert_matches(get_backend("compiled"), DEFAULT, F32["out"], F32["grad"], dtype=torch.float32)


@pytest.mark.slow
@needs_compiler
@pytest.mark.parametrize("sw", [s for s in SWITCHES if s != DEFAULT], ids=switch_id)
def test_compiled_matches_reference(sw):
    assert_matches(get_backend("compiled"), sw, F32["out"], F32["grad"], dtype=torch.float32)


def small_model(backend: str, radius: Radius) -> NGT:
    """Attention at ``inputs``' default shapes: B = 2, H = 2, L = 40, ch = 4, dh = 8."""
    cfg = ModelConfig(d_model=16, n_layers=2, n_heads=2, coord_dim=8, head_coord_dim=4, mlp_dim=48, context=64,
                      dropout=0.0)
    torch.manual_seed(0)
    return NGT(cfg, VariantConfig(radius=radius), 50, backend)


def logits_and_grads(model: torch.nn.Module) -> tuple[torch.Tensor, dict]:
    idx = torch.randint(0, 50, (2, 40), generator=torch.Generator().manual_seed(2)).to(next(model.parameters()).device)
    logits, _ = model(idx)
    F.cross_entropy(logits.view(-1, 50), idx.view(-1)).backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters()}


def assert_same_model_results(a: tuple[torch.Tensor, dict], b: tuple[torch.Tensor, dict]) -> None:
    """Logits and every parameter's gradient; none where the reference has none."""
    (logits, grads), (ref_logits, ref_grads) = a, b
    torch.testing.assert_close(logits, ref_logits, **F32["out"])
    assert ref_grads.keys() == grads.keys()
    for n, g in ref_grads.items():
        if g is None:
            assert grads[n] is None or not grads[n].any(), n
        else:
            torch.testing.assert_close(grads[n], g, **F32["grad"], msg=lambda m: f"{n}: {m}")


@needs_compiler
def test_ngt_with_compiled_attention_matches_reference():
    """The whole model at the default switches, on the graph the test above compiled."""
    model = small_model("compiled", DEFAULT.radius)
    assert_same_model_results(logits_and_grads(model), logits_and_grads(small_model("reference", DEFAULT.radius)))


@needs_compiler
def test_the_compiled_model_is_one_graph():
    """torch.compile of the whole model (train.compile) sees through the layer's Gravity
    and the compiled backend into one graph: no Python between pieces of a step."""
    counters.clear()
    model = small_model("compiled", Radius.hard)
    logits_and_grads(torch.compile(model, backend="eager", fullgraph=True))  # fullgraph: a break raises
    assert counters["stats"]["unique_graphs"] == 1 and not counters["graph_break"]


def test_compiling_leaves_room_for_every_switch_setting_and_shape(monkeypatch):
    """Twelve switch settings times a few shapes are more graphs than dynamo's default
    limit of 8, past which it would warn and quietly run eagerly (a grid in one process).
    From that default, whatever an earlier test raised it to."""
    monkeypatch.setattr(torch._dynamo.config, "cache_size_limit", 8)  # recompile_limit's older name, an alias
    _compiled.__wrapped__()  # what the first model on the compiled backend does
    assert torch._dynamo.config.cache_size_limit >= 64
