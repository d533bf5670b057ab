"""NGT against an independent, plain restatement of docs/model.md's formulas, and the
baseline's parameter matching. On the reference backend: the others are checked against
it in test_backends, and compiling a graph per switch setting here would cost seconds each."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from ngt.config import CONF, ModelConfig, VariantConfig
from ngt.model import baseline_mlp_dim, build_model, matched_params

TINY = ModelConfig(d_model=16, n_layers=2, n_heads=2, coord_dim=8, head_coord_dim=4, mlp_dim=24, context=12,
                   dropout=0.0, init="torch_default", radius_init=0.7, attn_impl="reference")
SWITCHES = list(itertools.product(["scores", "value"], ["hard", "soft", "none"], [True, False]))


def spec_forward(p: dict, idx: torch.Tensor, mass: str, radius: str, n_layers: int, H: int, ch: int) -> torch.Tensor:
    """docs/model.md's NGT, written out with explicit (B, H, L, L, ch) differences and loops."""
    ln = lambda x, pre, n: F.layer_norm(x, (n,), p[f"{pre}.weight"], p[f"{pre}.bias"])
    lin = lambda x, pre: x @ p[f"{pre}.weight"].T + (p[f"{pre}.bias"] if f"{pre}.bias" in p else 0)
    B, L = idx.shape
    d, c = p["token_emb.weight"].shape[1], p["coord_emb.weight"].shape[1]
    h = p["token_emb.weight"][idx]
    m = F.softplus(p["mass_emb.weight"][idx])[..., 0]  # (B, L)
    z = p["coord_emb.weight"][:L].expand(B, L, c)
    for layer in range(n_layers):
        pre = f"blocks.{layer}"
        a = ln(h, f"{pre}.ln1", d)
        V = lin(a, f"{pre}.attn.v").view(B, L, H, d // H)
        Zh = lin(z, f"{pre}.attn.z").view(B, L, H, ch)
        gamma = F.softplus(p[f"{pre}.attn.gamma_raw"])
        beta = p[f"{pre}.attn.beta"]
        r = F.softplus(p[f"{pre}.attn.radius_raw"])
        out = torch.zeros(B, L, H, d // H, dtype=torch.float64)
        for b in range(B):
            for hh in range(H):
                diff = Zh[b, :, hh, None, :] - Zh[b, None, :, hh, :]  # (L, L, ch)
                d2 = (diff**2).sum(-1)
                score = -gamma[hh] / (d2 + 1e-6) + beta[hh]
                Vb = V[b, :, hh]
                if mass == "scores":
                    score = score * m[b, :, None] * m[b, None, :]
                else:
                    Vb = Vb * m[b, :, None]
                if radius == "hard":
                    score = torch.where(d2 > r**2, torch.tensor(float("-inf"), dtype=score.dtype), score)
                elif radius == "soft":
                    score = score * torch.clamp(1 - d2 / r**2, min=0)
                for i in range(L):
                    row = score[i, : i + 1]
                    w = torch.softmax(row, 0)
                    out[b, i, hh] = w @ Vb[: i + 1]
        h_attn = lin(out.reshape(B, L, d), f"{pre}.attn.o")
        h = h + h_attn
        f = ln(h, f"{pre}.ln2", d)
        f = lin(F.gelu(lin(f, f"{pre}.ffn.0")), f"{pre}.ffn.3")
        h = h + f
        z = ln(z + lin(h_attn, f"{pre}.attn.next"), f"{pre}.ln_c", c)
    return ln(h, "ln_f", d) @ p["token_emb.weight"].T + p["head.bias"]  # tied weight, its own bias


@pytest.mark.parametrize("mass,radius,rsqrt", SWITCHES)
def test_forward_matches_spec(mass, radius, rsqrt):
    torch.manual_seed(0)
    variant = VariantConfig(mass=mass, radius=radius, use_rsqrt=rsqrt)
    model = build_model(TINY, variant, vocab_size=11, device=torch.device("cpu")).double().eval()
    idx = torch.randint(0, 11, (2, 10))
    logits, _ = model(idx)
    params = {k: v.double() for k, v in model.state_dict().items()}
    expected = spec_forward(params, idx, mass, radius, TINY.n_layers, TINY.n_heads, TINY.head_coord_dim)
    torch.testing.assert_close(logits, expected, rtol=1e-7, atol=1e-7)


def test_radius_cuts_something_in_the_parity_setting():
    """The parity test above is only meaningful if the hard cutoff removes pairs."""
    model = build_model(TINY, VariantConfig(), 11, torch.device("cpu")).eval()
    layers = []
    model(torch.randint(0, 11, (2, 10)), diagnostics=layers)
    assert 0 < layers[0]["cut_frac"] < 1


def _grads(variant: VariantConfig) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = build_model(TINY, variant, 11, torch.device("cpu")).double()  # float noise far below any real gradient
    idx = torch.randint(0, 11, (2, 10))
    logits, _ = model(idx)
    F.cross_entropy(logits.view(-1, 11), idx.view(-1)).backward()
    return {n: p.grad for n, p in model.named_parameters()}


def test_the_two_idle_parameters():
    """r under the hard cutoff, and beta without masses in the scores, get no gradient; the
    soft cutoff and masses in the scores give them one (docs/model.md#idle-parameters)."""
    hard = _grads(VariantConfig(radius="hard"))
    assert hard["blocks.0.attn.radius_raw"] is None or hard["blocks.0.attn.radius_raw"].abs().max() == 0
    assert _grads(VariantConfig(radius="soft"))["blocks.0.attn.radius_raw"].abs() > 0
    in_value = _grads(VariantConfig(mass="value"))
    assert in_value["blocks.0.attn.beta"].abs().max() < 1e-14  # softmax ignores a per-head constant
    assert _grads(VariantConfig(mass="scores"))["blocks.0.attn.beta"].abs().max() > 1e-9


@pytest.mark.parametrize("size", sorted(p.stem for p in (CONF / "model").glob("*.yaml")))
@pytest.mark.parametrize("vocab", [75, 8192])
def test_baseline_params_within_2_percent(size, vocab):
    size_yaml = OmegaConf.load(CONF / "model" / f"{size}.yaml")
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), size_yaml))
    counts = matched_params(cfg, vocab)
    assert abs(counts["baseline"] / counts["ngt"] - 1) < 0.02
    assert baseline_mlp_dim(cfg, vocab) > 0


def test_gpt2_init_starts_at_chance():
    torch.manual_seed(0)
    cfg = ModelConfig(init="gpt2", attn_impl="reference")
    for arch in ("ngt", "baseline"):
        model = build_model(cfg, VariantConfig(arch=arch), 512, torch.device("cpu")).eval()
        x = torch.randint(0, 512, (4, 64))
        y = torch.randint(0, 512, (4, 64))
        with torch.no_grad():
            loss = F.cross_entropy(model(x)[0].view(-1, 512), y.view(-1))
        assert abs(float(loss) - torch.log(torch.tensor(512.0))) < 0.3
