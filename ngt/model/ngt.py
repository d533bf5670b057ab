"""The Newton Gravity Transformer (docs/model.md).

Tokens are particles: a hidden state h, coordinates z and a mass m. Attention is a
learned gravity kernel over the distances between coordinates; the coordinates
themselves evolve from each layer's attention output.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ngt.config import Init, ModelConfig, VariantConfig
from ngt.model.backends import get_backend
from ngt.model.decode import KVCache, LayerCache, cached_gravity_attention
from ngt.model.gravity import Gravity, GravitySwitches, reference_attention, squared_distances
from ngt.model.layers import FFN, init_gpt2, tie


class GravityAttention(nn.Module):
    """docs/model.md#gravity-attention, computed by the backend named ``backend``."""

    def __init__(self, cfg: ModelConfig, sw: GravitySwitches, backend: str):
        super().__init__()
        d, H, ch = cfg.d_model, cfg.n_heads, cfg.head_coord_dim
        self.H, self.ch, self.sw = H, ch, sw
        self.attend = get_backend(backend)
        self.dropout = cfg.dropout
        self.v = nn.Linear(d, d)
        # No bias: a shift common to every token's coordinates leaves every distance
        # unchanged, so it would never receive a gradient.
        self.z = nn.Linear(cfg.coord_dim, H * ch, bias=False)
        self.o = nn.Linear(d, d)
        self.next = nn.Linear(d, cfg.coord_dim)
        self.gamma_raw = nn.Parameter(torch.zeros(H))
        self.beta = nn.Parameter(torch.zeros(H))
        self.radius_raw = nn.Parameter(torch.tensor(cfg.radius_init))

    def forward(self, h, z, m, diagnostics: Optional[dict] = None, cache: Optional[LayerCache] = None):
        B, L, d = h.shape
        v = self.v(h).view(B, L, self.H, d // self.H).transpose(1, 2)
        zq = self.z(z).view(B, L, self.H, self.ch).transpose(1, 2)
        g = Gravity(F.softplus(self.gamma_raw), self.beta, F.softplus(self.radius_raw), self.sw)
        dropout_p = self.dropout if self.training else 0.0
        if cache is not None:
            out = cached_gravity_attention(cache, zq, v, m, g)
        elif diagnostics is not None:  # the statistics need the L x L weights, which only reference holds
            out = reference_attention(zq, v, m, g, dropout_p, diagnostics)
        else:
            out = self.attend(zq, v, m, g, dropout_p)
        h_attn = self.o(out.transpose(1, 2).reshape(B, L, d))
        return h_attn, self.next(h_attn)


class NGTBlock(nn.Module):
    def __init__(self, cfg: ModelConfig, sw: GravitySwitches, backend: str):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = GravityAttention(cfg, sw, backend)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, cfg.mlp_dim, cfg.dropout)
        self.ln_c = nn.LayerNorm(cfg.coord_dim)

    def forward(self, h, z, m, diagnostics: Optional[dict] = None, cache: Optional[LayerCache] = None):
        h_attn, z_next = self.attn(self.ln1(h), z, m, diagnostics, cache)
        h = h + h_attn
        h = h + self.ffn(self.ln2(h))
        return h, self.ln_c(z + z_next)


class NGT(nn.Module):
    arch = "ngt"

    def __init__(self, cfg: ModelConfig, variant: VariantConfig, vocab_size: int, backend: str = "reference"):
        super().__init__()
        self.cfg = cfg
        sw = GravitySwitches(mass=variant.mass, radius=variant.radius, use_rsqrt=variant.use_rsqrt)
        self.token_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.mass_emb = nn.Embedding(vocab_size, 1)
        self.coord_emb = nn.Embedding(cfg.context, cfg.coord_dim)
        self.blocks = nn.ModuleList(NGTBlock(cfg, sw, backend) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=cfg.head_bias)
        if cfg.init == "gpt2":
            # Coordinates keep N(0, 1): every later layer sees LayerNormed z of unit scale,
            # and tiny z0 would put all first-layer distances near 0, where -gamma/d2 explodes.
            init_gpt2(self, cfg.n_layers, residual=("attn.o", "ffn.3"), keep=("coord_emb", "head"))
        tie(self.head, self.token_emb, zero_bias=cfg.init == Init.gpt2)

    def forward(self, idx: torch.Tensor, want_coords: bool = False, diagnostics: Optional[list] = None,
                cache: Optional[KVCache] = None):
        """Logits (B, L, V); with ``want_coords`` also the last layer's z and the masses,
        which the repulsion regulariser needs. ``diagnostics``: a list to fill, one dict per layer.
        ``cache``: decode ``idx`` as the continuation of the tokens it holds (ngt.model.decode)."""
        B, L = idx.shape
        start = 0 if cache is None else cache.length
        h = self.token_emb(idx)
        m = F.softplus(self.mass_emb(idx)).squeeze(-1)
        z = self.coord_emb(torch.arange(start, start + L, device=idx.device)).expand(B, L, -1)
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in zip(self.blocks, layer_caches):
            layer_diag = None if diagnostics is None else {}
            h, z = block(h, z, m, layer_diag, layer_cache)
            if diagnostics is not None:
                diagnostics.append(layer_diag)
        logits = self.head(self.ln_f(h))
        return (logits, (z, m)) if want_coords else (logits, None)


def repulsion_energy(z: torch.Tensor, m: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    """Mean over sampled pairs i < j of m_i m_j / max(||z_i - z_j||^2, 1e-6).

    The positions are drawn from the run's own repulsion generator (the original used
    the global RNG, so turning repulsion on changed every other random draw).
    """
    L = z.shape[1]
    # non_blocking: a plain copy to the GPU would wait there for the whole forward pass.
    idx = torch.randperm(L, generator=generator)[: min(n_samples, L)].to(z.device, non_blocking=True)
    zs, ms = z[:, idx].float(), m[:, idx].float()
    d2 = squared_distances(zs).clamp_min(1e-6)
    i, j = torch.triu_indices(len(idx), len(idx), offset=1, device=z.device)
    return (ms[:, i] * ms[:, j] / d2[:, i, j]).mean()
