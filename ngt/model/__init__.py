"""Model construction: the variant picks the architecture, the size is shared, and the
baseline's FFN width is solved so both have the same number of parameters."""

from __future__ import annotations

import torch
import torch.nn as nn

from ngt.config import Arch, ModelConfig, VariantConfig
from ngt.model.backends import resolve_backend
from ngt.model.baseline import Baseline
from ngt.model.layers import count_params
from ngt.model.ngt import NGT, repulsion_energy

__all__ = ["build_model", "matched_params", "baseline_mlp_dim", "count_params", "repulsion_energy", "NGT", "Baseline"]

def _ngt_params(cfg: ModelConfig, vocab_size: int) -> int:
    with torch.device("meta"):
        return count_params(NGT(cfg, VariantConfig(), vocab_size))


def baseline_mlp_dim(cfg: ModelConfig, vocab_size: int) -> int:
    """The FFN width that brings the baseline closest to the NGT model's parameter count.

    Parameters are affine in the width, so two meta-device builds give the slope and the
    intercept; nothing is allocated and nothing is tuned by hand per size.
    """
    with torch.device("meta"):
        p1 = count_params(Baseline(cfg, vocab_size, 1))
        p2 = count_params(Baseline(cfg, vocab_size, 2))
    return max(1, 1 + round((_ngt_params(cfg, vocab_size) - p1) / (p2 - p1)))


def matched_params(cfg: ModelConfig, vocab_size: int) -> dict[str, int]:
    """Both architectures' parameter counts at this size: what summary.json reports."""
    with torch.device("meta"):
        base = count_params(Baseline(cfg, vocab_size, baseline_mlp_dim(cfg, vocab_size)))
    return {"ngt": _ngt_params(cfg, vocab_size), "baseline": base}


def build_model(cfg: ModelConfig, variant: VariantConfig, vocab_size: int, device: torch.device) -> nn.Module:
    if variant.arch == Arch.baseline:
        return Baseline(cfg, vocab_size, baseline_mlp_dim(cfg, vocab_size)).to(device)
    return NGT(cfg, variant, vocab_size, resolve_backend(cfg.attn_impl, device)).to(device)
