"""What a run measures at an evaluation: losses on the fixed batches, the gravity
diagnostics, and the coordinates of the last layer (docs/recipe.md#evaluation)."""

from __future__ import annotations

import torch

from ngt.batches import Batch
from ngt.data import TokenData
from ngt.model.layers import causal_lm_loss
from ngt.runtime import Processes


@torch.no_grad()
def mean_loss(model, batches: list[Batch], device, amp_ctx, procs: Processes = Processes()) -> float:
    """The mean loss over ``batches``. The processes of a data-parallel run share them out
    (every ``procs.size``-th each) and add the losses up in the batches' order, as one
    process does: the same number to the bit, in a fraction of the time."""
    model.eval()
    mine = []
    for x, y in batches[procs.rank :: procs.size]:
        with amp_ctx:
            logits, _ = model(x.to(device))
        mine.append(float(causal_lm_loss(logits, y.to(device))))
    model.train()
    shares = procs.gathered(mine)
    total = 0.0
    for i in range(len(batches)):
        total += shares[i % procs.size][i // procs.size]
    return total / len(batches)


@torch.no_grad()
def diagnostics(model, x, device, amp_ctx) -> dict[str, float]:
    """Per-layer gravity statistics on one fixed batch (docs/model.md#diagnostics); empty
    for the baseline."""
    if getattr(model, "arch", None) != "ngt":
        return {}
    model.eval()
    layers: list[dict] = []
    with amp_ctx:
        model(x.to(device), diagnostics=layers)
    model.train()
    out = {f"ngt/L{i}/{k}": v for i, d in enumerate(layers) for k, v in d.items()}
    out["ngt/gamma_mean"] = sum(d["gamma_mean"] for d in layers) / len(layers)
    out["ngt/radius_mean"] = sum(d["radius"] for d in layers) / len(layers)
    return out


@torch.no_grad()
def project_coords(writer, model, data: TokenData, block_size: int, device, step: int) -> None:
    """The original's TensorBoard projector of z: the last layer's coordinates for the
    first validation window, one point per token, labelled with the token and its mass."""
    if getattr(model, "arch", None) != "ngt":
        return
    n = min(block_size, len(data.val))
    ids = torch.as_tensor(data.val[:n].astype("int64"), device=device)[None]
    model.eval()
    _, (z, m) = model(ids, want_coords=True)
    model.train()
    labels = [[data.tokenizer.token_label(i), f"{w:.4f}"] for i, w in zip(ids[0].tolist(), m[0].tolist())]
    writer.add_embedding(z[0].float().cpu(), metadata=labels, metadata_header=["token", "mass"],
                         global_step=step, tag="coords_z")
