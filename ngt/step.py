"""One optimizer step, exactly as training takes it: what the trainer runs and
``ngt.bench`` times (docs/recipe.md#optimisation)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

from ngt.batches import Batch
from ngt.config import TrainConfig
from ngt.model import repulsion_energy
from ngt.model.layers import causal_lm_loss


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)


@dataclass
class Repulsion:
    """The repulsion term of one optimizer step: on the last micro-batch only
    (docs/model.md#repulsion)."""

    weight: float
    samples: int
    generator: torch.Generator


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches, repulsion included
    grad_norm: torch.Tensor
    energy: Optional[torch.Tensor]
    stepped: bool  # False when the loss was not finite: the parameters are left as they were


def train_step(model, train_model, optimizer, scaler, amp_ctx, batches: list[Batch], grad_clip: float,
               repulsion: Optional[Repulsion]) -> StepResult:
    """Forward, loss and backward over ``batches`` (gradient accumulation), clipping, then
    AdamW unless the loss is not finite. ``train_model`` is ``model`` or its compiled wrapper."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    energy = None
    for micro, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        rep_now = repulsion is not None and micro == len(batches) - 1
        if train_model is not model:
            # Under CUDA graphs each call replays into the same output memory: this
            # micro-batch's outputs replace the last one's, whose loss and backward are done.
            torch.compiler.cudagraph_mark_step_begin()
        with amp_ctx:
            logits, coords = train_model(x, want_coords=rep_now)
            loss = causal_lm_loss(logits, y)
            if rep_now:
                energy = repulsion_energy(*coords, repulsion.samples, repulsion.generator)
                loss = loss + repulsion.weight * energy
        scaler.scale(loss / len(batches)).backward()
        loss_sum += loss.detach()
    energy = None if energy is None else energy.detach()  # reported, not differentiated
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    loss_value = float(loss_sum) / len(batches)
    if not math.isfinite(loss_value):
        return StepResult(loss_value, grad_norm, energy, stepped=False)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, grad_norm, energy, stepped=True)
