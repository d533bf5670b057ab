"""One optimizer step, exactly as training takes it: what the trainer runs and
``ngt.bench`` times (docs/recipe.md#optimisation)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from ngt.batches import Batch
from ngt.config import TrainConfig
from ngt.model import repulsion_energy
from ngt.model.layers import causal_lm_loss
from ngt.runtime import Processes, communicating, is_compiled, no_sync


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)


@dataclass
class Repulsion:
    """The repulsion term of one optimizer step: on the last micro-batch only
    (docs/model.md#repulsion); in a data-parallel run, on rank 0's, which is the step's last."""

    weight: float
    samples: int
    generator: torch.Generator


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches (of every process), repulsion included
    grad_norm: torch.Tensor
    energy: Optional[torch.Tensor]
    stepped: bool  # False when the loss was not finite: the parameters are left as they were
    votes: list[float] = field(default_factory=list)  # summed over the processes


def train_step(model, train_model, optimizer, scaler, amp_ctx, batches: list[Batch], grad_clip: float,
               repulsion: Optional[Repulsion], procs: Processes = Processes(),
               votes: Sequence[float] = ()) -> StepResult:
    """Forward, loss and backward over ``batches`` (gradient accumulation), clipping, then
    AdamW unless the loss is not finite. ``train_model`` is ``model`` or its compiled wrapper;
    in a data-parallel run, its DDP wrapper (or that compiled), ``batches`` this process's
    share of the step's micro-batches, and ``votes`` numbers to add up over the processes
    along with the loss (the trainer's stop requests)."""
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    energy = None
    for micro, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        last = micro == len(batches) - 1
        rep_now = repulsion is not None and last
        if is_compiled(train_model):
            # Under CUDA graphs each call replays into the same output memory: this
            # micro-batch's outputs replace the last one's, whose loss and backward are done.
            torch.compiler.cudagraph_mark_step_begin()
        with nullcontext() if last else no_sync(train_model):
            with amp_ctx:
                logits, coords = train_model(x, want_coords=rep_now)
                loss = causal_lm_loss(logits, y)
                if rep_now:
                    energy = repulsion_energy(*coords, repulsion.samples, repulsion.generator)
                    loss = loss + repulsion.weight * energy
            # DDP averages the gradients over the processes in the last backward. Each
            # divides by its own number of micro-batches, so that average is the gradient
            # of the mean loss over all of them, as on one process.
            with communicating("averaging gradients") if last and procs.size > 1 else nullcontext():
                scaler.scale(loss / len(batches)).backward()
        loss_sum += loss.detach()
    energy = None if energy is None else energy.detach()  # reported, not differentiated
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    loss_value, votes = _mean_loss(loss_sum, len(batches), procs, votes)
    if not math.isfinite(loss_value):  # the same verdict on every process: the loss is their mean
        return StepResult(loss_value, grad_norm, energy, stepped=False, votes=votes)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, grad_norm, energy, stepped=True, votes=votes)


def _mean_loss(loss_sum: torch.Tensor, n: int, procs: Processes, votes: Sequence[float]) -> tuple[float, list[float]]:
    """The step's loss over every process's micro-batches, and the votes summed, in one
    reduction (one wait for the device)."""
    if procs.size == 1:
        return float(loss_sum) / n, list(votes)
    totals = torch.cat([loss_sum.double().view(1), torch.tensor(votes, dtype=torch.float64, device=loss_sum.device)])
    totals = procs.sum(totals).tolist()
    return totals[0] / (n * procs.size), totals[1:]
