"""A trained model back from its checkpoint, for the stages after training (sampling,
the report's coordinate pages)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn as nn

from ngt.checkpoint import load_checkpoint
from ngt.config import AttnImpl, Config, from_plain
from ngt.data import Tokenizer, tokenizer_from_json
from ngt.errors import NGTError
from ngt.model import build_model
from ngt.records import Checkpoint


@dataclass
class Trained:
    model: nn.Module  # in eval mode
    tokenizer: Tokenizer
    config: Config
    checkpoint: Checkpoint
    path: Path


def load_trained(path: Path, device: torch.device) -> Trained:
    """The model a checkpoint file describes, with its weights.

    Always on the reference attention backend: the backend changes speed, not results,
    and a checkpoint's readers run shapes a compiled backend would compile again for."""
    ckpt = load_checkpoint(path)
    ckpt.config["model"].setdefault("head_bias", False)  # runs from before the setting had no output bias
    try:
        cfg = from_plain(ckpt.config)
    except NGTError as e:
        raise NGTError(f"{path} holds {e}") from None
    cfg.model = replace(cfg.model, attn_impl=AttnImpl.reference)
    model = build_model(cfg.model, cfg.variant, ckpt.vocab_size, device)
    try:
        model.load_state_dict(ckpt.model)
    except RuntimeError as e:
        raise NGTError(f"{path}: weights do not fit the model its config describes ({str(e).splitlines()[0]})") from None
    return Trained(model.eval(), tokenizer_from_json(ckpt.tokenizer), cfg, ckpt, path)
