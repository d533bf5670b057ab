"""Pieces both models share: the feed-forward block and the two initialisations."""

from __future__ import annotations

import math

import torch
import torch.nn as nn


class FFN(nn.Sequential):
    def __init__(self, d: int, hidden: int, dropout: float):
        super().__init__(
            nn.Linear(d, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, d), nn.Dropout(dropout)
        )


def init_gpt2(model: nn.Module, n_layers: int, residual: tuple[str, ...], keep: tuple[str, ...] = ()) -> None:
    """N(0, 0.02) for Linear and Embedding weights, zero biases; the residual output
    projections (module names ending in ``residual``) get 0.02 / sqrt(2 n_layers) so the
    residual stream's variance does not grow with depth. Modules named in ``keep`` stay
    at their PyTorch default on purpose. LayerNorms and per-head scalars are untouched.
    """
    for name, mod in model.named_modules():
        if name in keep:
            continue
        if isinstance(mod, (nn.Linear, nn.Embedding)):
            scaled = name.endswith(residual)
            nn.init.normal_(mod.weight, 0.0, 0.02 / math.sqrt(2 * n_layers) if scaled else 0.02)
            if getattr(mod, "bias", None) is not None:
                nn.init.zeros_(mod.bias)


def count_params(model: nn.Module) -> int:
    """Unique parameters: the tied head is counted once."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def tie(head: nn.Linear, emb: nn.Embedding, zero_bias: bool) -> None:
    """The output layer shares the embedding's weight; its bias (the original's, PyTorch's
    default) is its own, and starts at 0 under the GPT-2 initialisation, so the first loss
    is that of chance."""
    head.weight = emb.weight
    if head.bias is not None and zero_bias:
        nn.init.zeros_(head.bias)


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))
