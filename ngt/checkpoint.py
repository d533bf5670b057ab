"""Checkpoints that survive a kill at any instant, show any later change to their bytes,
and never execute pickled code.

A checkpoint (``ngt.records.Checkpoint``) is stored as a dict of tensors, numbers,
strings and plain containers, so ``torch.load(weights_only=True)`` can read it. It
carries a digest of its own content, checked on load: bytes flipped on disk are caught
even where they still decode as finite numbers. It is serialised in memory, then written
to a temporary file, fsynced and renamed, so ``last.pt`` is always either the old or
the new complete file, and a full disk is an ``OSError`` naming its cause.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from ngt.atomic import atomic_write_bytes
from ngt.errors import NGTError
from ngt.records import Checkpoint

DIGEST = "digest"


def content_digest(obj: Any) -> str:
    """A hash of a checkpoint's content: every tensor's dtype, shape and bytes, every other
    value's repr, in a fixed order."""
    h = hashlib.blake2b(digest_size=16)
    _update(h, obj)
    return h.hexdigest()


def _update(h: Any, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k in sorted(obj, key=repr):
            h.update(repr(k).encode())
            _update(h, obj[k])
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for x in obj:
            _update(h, x)
    else:
        h.update(repr(obj).encode())


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    state = ckpt.to_dict()
    state[DIGEST] = content_digest(state)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, lambda f: f.write(buffer.getbuffer()))


def _why_unloadable(e: Exception) -> str:
    """What torch.load's failure means, without its advice to load unsafely."""
    text = str(e)
    if "Weights only load failed" in text:  # the safe unpickler stopped; nothing was run
        detail = next((ln.strip() for ln in text.splitlines() if "GLOBAL" in ln or "Unsupported" in ln), "")
        if "GLOBAL" in detail:  # an object to build by calling code the file names
            return "holds objects a safe load refuses to build (code could run)"
        return f"is not a file a safe load reads ({detail[:80] or 'refused'}; nothing in it was run)"
    reason = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"is unreadable or truncated ({reason[:160]})"


def load_checkpoint(path: Path) -> Checkpoint:
    """Load safely; a file that cannot be read, or whose content changed since it was
    written, is reported by name and left untouched."""
    left = "it was left untouched: move it away to start the run over"
    try:
        with warnings.catch_warnings():  # torch's note on an unusual pickle protocol: the outcome says enough
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise NGTError(f"checkpoint not found: {path}") from None
    except (PermissionError, IsADirectoryError) as e:
        raise NGTError(f"cannot read {path}: {e.strerror}") from None
    except Exception as e:  # torch raises RuntimeError, OSError, EOFError, UnpicklingError, ... for broken files
        raise NGTError(f"checkpoint {path} {_why_unloadable(e)}; {left}") from None
    if not isinstance(state, dict):
        raise NGTError(f"{path} is not an ngt checkpoint (no model state and step)")
    expected = state.pop(DIGEST, None)  # checkpoints written before digests have none
    if expected is not None and content_digest(state) != expected:
        raise NGTError(f"checkpoint {path} does not match its digest: its bytes changed after it was written; {left}")
    return Checkpoint.from_dict(state, str(path))
