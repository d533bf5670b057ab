"""Checkpoints that survive a kill at any instant and never execute pickled code.

A checkpoint is a dict of tensors, numbers, strings and plain containers, so
``torch.load(weights_only=True)`` can read it; it is written to a temporary file,
fsynced and renamed, so ``last.pt`` is always either the old or the new complete file.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from ngt.errors import NGTError


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, write) -> None:
    """Run ``write(file)`` into a temporary sibling, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load safely; a file that cannot be read is reported by name and left untouched."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NGTError(f"checkpoint not found: {path}") from None
    except Exception as e:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for broken files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise NGTError(
            f"checkpoint {path} is unreadable or truncated ({reason[:160]}); "
            "it was left untouched: move it away to start the run over"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "step" not in state:
        raise NGTError(f"{path} is not an ngt checkpoint (no model state and step)")
    return state
