"""The last layer's coordinates z of an NGT run for a validation text, in 3D by PCA.

This is the original's ``coords_<run>.html`` (and its TensorBoard projector of z): the
model is rebuilt from the run's own checkpoint, loaded with ``weights_only=True``, on
the CPU, and run once over the first ``block_size`` tokens of the validation split.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ngt.config import DataConfig, plain
from ngt.data import BPETokenizer, Tokenizer, load_token_data
from ngt.errors import NGTError
from ngt.trained import load_trained


@dataclass(frozen=True)
class Coords:
    step: int
    pcs: np.ndarray  # (L, 3) principal components of z
    explained: np.ndarray  # (3,) fraction of z's variance along each component
    mass: np.ndarray  # (L,)
    labels: list[str]  # hover text per token
    text: str  # the sample, decoded


def pca3(z: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows of ``z`` (L, c) on its first three principal axes, and the
    share of the variance each one explains (zero columns where c < 3)."""
    x = z.double() - z.double().mean(0)
    _, s, vh = torch.linalg.svd(x, full_matrices=False)
    k = min(3, vh.shape[0])
    pcs = np.zeros((x.shape[0], 3))
    pcs[:, :k] = (x @ vh[:k].T).numpy()
    var = s.pow(2)
    explained = np.zeros(3)
    explained[:k] = (var[:k] / var.sum().clamp_min(1e-300)).numpy()
    return pcs, explained


def token_hover(tok: Tokenizer, i: int) -> str:
    """The token with its whitespace visible; a byte-level BPE token also shows its raw piece
    (the 'Ġ' leading-space markers users know from the original's plots)."""
    label = tok.token_label(i)
    if isinstance(tok, BPETokenizer):
        piece = tok.hf.id_to_token(i)
        if piece is not None and piece != label:
            return f"{label}  (BPE piece {piece})"
    return label


class ValidationSamples:
    """The validation split of each data config, loaded once per report (runs of a sweep share it)."""

    def __init__(self) -> None:
        self._cache: dict[str, object] = {}

    def get(self, cfg: DataConfig):
        key = json.dumps(plain(cfg), sort_keys=True)
        if key not in self._cache:
            self._cache[key] = load_token_data(cfg, progress=False)
        return self._cache[key]


@torch.no_grad()
def run_coords(checkpoint: Path, samples: ValidationSamples) -> Coords:
    t = load_trained(checkpoint, torch.device("cpu"))
    tok, cfg = t.tokenizer, t.config
    data = samples.get(cfg.data)
    if data.tokenizer.to_json() != t.checkpoint.tokenizer:
        raise NGTError(f"data={cfg.data.name} now tokenizes differently from the checkpoint's tokenizer")
    n = min(cfg.train.block_size, cfg.model.context, len(data.val))
    ids = torch.from_numpy(np.asarray(data.val[:n], dtype=np.int64))[None]
    _, (z, m) = t.model(ids, want_coords=True)
    pcs, explained = pca3(z[0])
    return Coords(
        step=int(t.checkpoint.step), pcs=pcs, explained=explained, mass=m[0].double().numpy(),
        labels=[token_hover(tok, i) for i in ids[0].tolist()], text=tok.decode(ids[0].tolist()),
    )
