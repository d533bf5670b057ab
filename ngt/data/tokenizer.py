"""Tokenizers: characters, or byte-level BPE through Hugging Face ``tokenizers``.

Both serialise to one self-contained JSON string, so a checkpoint can carry its
tokenizer as a plain ``str`` (checkpoints are loaded with ``weights_only=True``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence

import numpy as np
from tokenizers import Tokenizer as HFTokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers

from ngt.errors import NGTError

UNK = "<unk>"
_VISIBLE = {" ": "␣", "\n": "↵", "\t": "⇥"}


def visible_whitespace(text: str) -> str:
    """Space, newline and tab as visible marks; other unprintable characters as escapes."""
    return "".join(_VISIBLE.get(c) or (c if c.isprintable() else ascii(c)[1:-1]) for c in text)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 65535 else np.uint32)


class Tokenizer(ABC):
    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def token_label(self, i: int) -> str:
        """The token's text with whitespace made visible (for plots and hover labels)."""

    @abstractmethod
    def to_json(self) -> str: ...

    @abstractmethod
    def encode_pieces(self, pieces: Sequence[str], sep: str) -> np.ndarray:
        """Ids of ``sep.join(pieces)``, each piece and each separator encoded on its own.

        This is the data layer's bulk path: pieces are rows or lines, and encoding them
        independently is what lets BPE use every core (and what the original did).
        """


class CharTokenizer(Tokenizer):
    kind = "char"

    def __init__(self, chars: str):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer needs distinct characters")
        self.chars = chars
        # Sorted code points let numpy map a whole text at once (searchsorted).
        points = np.array([ord(c) for c in chars], dtype=np.uint32)
        self._order = np.argsort(points)
        self._points = points[self._order]

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> CharTokenizer:
        seen: set[str] = set()
        for text in texts:
            seen.update(text)
        return cls("".join(sorted(seen)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return self.encode_pieces([text], "").tolist()

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i] for i in ids)

    def token_label(self, i: int) -> str:
        return visible_whitespace(self.chars[i])

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "chars": self.chars})

    def encode_pieces(self, pieces: Sequence[str], sep: str) -> np.ndarray:
        points = np.frombuffer(sep.join(pieces).encode("utf-32-le"), dtype=np.uint32)
        pos = np.searchsorted(self._points, points)
        pos[pos == len(self._points)] = 0
        unknown = self._points[pos] != points
        if unknown.any():
            bad = sorted({chr(p) for p in points[unknown][:1000]})
            raise NGTError(f"text has characters outside the char tokenizer's vocabulary: {bad!r}")
        return self._order[pos].astype(token_dtype(self.vocab_size))


def _byte_level_alphabet() -> dict[str, int]:
    """Byte-level BPE's printable stand-in for each byte (GPT-2's scheme), inverted.

    Printable Latin-1 bytes stand for themselves; the others (space, newline, control
    bytes...) are shifted to U+0100 onwards, in byte order: space becomes 'Ġ'.
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = [b for b in range(256) if b not in kept]
    mapping = {chr(b): b for b in kept}
    mapping.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return mapping


_BYTE_OF = _byte_level_alphabet()


class BPETokenizer(Tokenizer):
    kind = "bpe"

    def __init__(self, hf: HFTokenizer):
        self.hf = hf
        self._special = {t.content for t in hf.get_added_tokens_decoder().values()}

    @classmethod
    def train(cls, batches: Iterable[Sequence[str]], vocab_size: int) -> BPETokenizer:
        """Byte-level BPE as the original built it, plus the full byte alphabet.

        With all 256 bytes in the base vocabulary no text ever maps to ``<unk>`` (the
        original left out bytes unseen in training); ``<unk>`` stays as its special token.
        """
        hf = HFTokenizer(models.BPE(unk_token=UNK))
        hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        hf.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=[UNK],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        hf.train_from_iterator(batches, trainer=trainer)
        return cls(hf)

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.hf.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_label(self, i: int) -> str:
        token = self.hf.id_to_token(i)
        if token is None:
            raise IndexError(f"token id {i} is outside the vocabulary ({self.vocab_size})")
        if token in self._special:
            return token
        raw = bytes(_BYTE_OF[c] for c in token)
        # A token may hold part of a multi-byte character: show those bytes as \xNN.
        return visible_whitespace(raw.decode("utf-8", errors="backslashreplace"))

    def to_json(self) -> str:
        return json.dumps({"kind": self.kind, "tokenizer": self.hf.to_str()})

    def encode_pieces(self, pieces: Sequence[str], sep: str) -> np.ndarray:
        sep_ids = self.hf.encode(sep).ids if sep else []
        flat: list[int] = []
        for enc in self.hf.encode_batch_fast(list(pieces)):
            flat += enc.ids
            flat += sep_ids
        if pieces and sep_ids:
            del flat[-len(sep_ids) :]
        return np.array(flat, dtype=token_dtype(self.vocab_size))


def tokenizer_from_json(s: str) -> Tokenizer:
    """The inverse of ``Tokenizer.to_json``."""
    try:
        state = json.loads(s)
        kind = state["kind"]
    except (ValueError, TypeError, KeyError) as exc:
        raise NGTError(f"not a serialised ngt tokenizer ({exc})") from None
    if kind == "char":
        return CharTokenizer(state["chars"])
    if kind == "bpe":
        return BPETokenizer(HFTokenizer.from_str(state["tokenizer"]))
    raise NGTError(f"unknown tokenizer kind '{kind}' in serialised tokenizer (expected char or bpe)")
