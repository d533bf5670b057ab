"""Sampling from a trained model: next-token logits (cached or recomputed), the
temperature / top-k / top-p filters, and text that streams as tokens arrive."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence, TextIO

import torch
import torch.nn as nn

from ngt.data import Tokenizer
from ngt.errors import NGTError
from ngt.model.decode import KVCache


class Decoder:
    """Next-token logits for a growing sequence, from the window of its last tokens.

    Positions are learned up to the context, so a sequence longer than that is seen
    through a window. When the window is full it slides by half: the last half is kept
    and, with a cache, re-encoded at positions from 0 (every cached key belongs to its
    old position). Then ``context / 2`` more tokens are one cached step each.
    ``use_cache=False`` recomputes the same window every step (the original's way):
    the logits are the same, which is what makes it the reference for the cache.
    """

    def __init__(self, model: nn.Module, use_cache: bool = True):
        self.model, self.use_cache = model, use_cache
        self.context = model.cfg.context
        self.keep = max(1, self.context // 2)
        self.device = next(model.parameters()).device
        self.window: list[int] = []
        self.cache: Optional[KVCache] = None

    def start(self, ids: Sequence[int]) -> torch.Tensor:
        self.window = list(ids[-self.context :])
        return self._encode_window()

    def push(self, token: int) -> torch.Tensor:
        self.window.append(token)
        if len(self.window) > self.context:
            self.window = self.window[-self.keep :]
            return self._encode_window()
        if not self.use_cache:
            return self._encode_window()
        return self._forward([token])

    def _encode_window(self) -> torch.Tensor:
        self.cache = KVCache(len(self.model.blocks), self.context) if self.use_cache else None
        return self._forward(self.window)

    @torch.inference_mode()
    def _forward(self, ids: list[int]) -> torch.Tensor:
        logits, _ = self.model(torch.tensor([ids], device=self.device), cache=self.cache)
        return logits[0, -1].float()


@dataclass(frozen=True)
class Sampler:
    temperature: float = 1.0  # 0: greedy
    top_k: int = 0  # 0: off
    top_p: float = 1.0  # 1: off

    def __call__(self, logits: torch.Tensor, generator: torch.Generator) -> int:
        if not bool(torch.isfinite(logits).all()):
            raise NGTError("the model's outputs are not finite numbers: its weights come from a run that diverged "
                           "(try checkpoint=best, or an earlier run)")
        if self.temperature == 0:
            return int(logits.argmax())
        probs = torch.softmax(self.filter(logits / self.temperature), dim=-1)
        return int(torch.multinomial(probs.cpu(), 1, generator=generator))

    def filter(self, logits: torch.Tensor) -> torch.Tensor:
        """-inf outside the top-k, then outside the smallest set whose probability reaches top-p."""
        if 0 < self.top_k < logits.numel():
            logits = logits.masked_fill(logits < logits.topk(self.top_k).values[-1], float("-inf"))
        if self.top_p < 1.0:
            sorted_logits, order = logits.sort(descending=True)
            probs = torch.softmax(sorted_logits, dim=-1)
            # A token goes when the ones before it already reach top_p; the first always stays.
            drop = probs.cumsum(-1) - probs >= self.top_p
            logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
        return logits


def generate(
    decoder: Decoder,
    prompt: Sequence[int],
    max_new_tokens: int,
    sampler: Sampler,
    generator: torch.Generator,
    on_token: Callable[[int], None] = lambda t: None,
) -> list[int]:
    """The new tokens after ``prompt``, each handed to ``on_token`` as soon as it is drawn."""
    out: list[int] = []
    logits = decoder.start(prompt)
    for i in range(max_new_tokens):
        token = sampler(logits, generator)
        out.append(token)
        on_token(token)
        if i + 1 < max_new_tokens:  # the last token needs no logits after it
            logits = decoder.push(token)
    return out


class TextStream:
    """Writes tokens as text as they come. A byte-level BPE token can end inside a
    multi-byte character; its bytes wait until the character is complete."""

    _HOLD = 4  # tokens: longer than any UTF-8 character, so invalid bytes are not held forever

    def __init__(self, tokenizer: Tokenizer, out: TextIO):
        self.tokenizer, self.out = tokenizer, out
        self.pending: list[int] = []

    def __call__(self, token: int) -> None:
        self.pending.append(token)
        text = self.tokenizer.decode(self.pending)
        if not text.endswith("\ufffd") or len(self.pending) >= self._HOLD:
            self._write(text)

    def flush(self) -> None:
        if self.pending:
            self._write(self.tokenizer.decode(self.pending))

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()
        self.pending = []
