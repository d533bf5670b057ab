"""The baseline: a pre-norm GPT with scaled_dot_product_attention (docs/model.md#baseline)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ngt.config import Init, ModelConfig
from ngt.model.decode import KVCache, LayerCache, cached_sdpa
from ngt.model.layers import FFN, init_gpt2, tie


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.H, self.dropout = cfg.n_heads, cfg.dropout
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.o = nn.Linear(cfg.d_model, cfg.d_model)

    def forward(self, x, cache: Optional[LayerCache] = None):
        B, L, d = x.shape
        q, k, v = self.qkv(x).view(B, L, 3, self.H, d // self.H).permute(2, 0, 3, 1, 4)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=self.dropout if self.training else 0.0)
        else:
            y = cached_sdpa(cache, q, k, v)
        return self.o(y.transpose(1, 2).reshape(B, L, d))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, mlp_dim: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.d_model)
        self.ffn = FFN(cfg.d_model, mlp_dim, cfg.dropout)

    def forward(self, x, cache: Optional[LayerCache] = None):
        x = x + self.attn(self.ln1(x), cache)
        return x + self.ffn(self.ln2(x))


class Baseline(nn.Module):
    arch = "baseline"

    def __init__(self, cfg: ModelConfig, vocab_size: int, mlp_dim: int):
        super().__init__()
        self.cfg, self.mlp_dim = cfg, mlp_dim
        self.token_emb = nn.Embedding(vocab_size, cfg.d_model)
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, mlp_dim) for _ in range(cfg.n_layers))
        self.ln_f = nn.LayerNorm(cfg.d_model)
        self.head = nn.Linear(cfg.d_model, vocab_size, bias=cfg.head_bias)
        if cfg.init == "gpt2":
            init_gpt2(self, cfg.n_layers, residual=("attn.o", "ffn.3"), keep=("head",))
        tie(self.head, self.token_emb, zero_bias=cfg.init == Init.gpt2)

    def forward(self, idx: torch.Tensor, want_coords: bool = False, diagnostics=None, cache: Optional[KVCache] = None):
        L = idx.shape[1]
        start = 0 if cache is None else cache.length
        x = self.token_emb(idx) + self.pos_emb(torch.arange(start, start + L, device=idx.device))
        layer_caches = [None] * len(self.blocks) if cache is None else cache.layers
        for block, layer_cache in zip(self.blocks, layer_caches):
            x = block(x, layer_cache)
        return self.head(self.ln_f(x)), None
