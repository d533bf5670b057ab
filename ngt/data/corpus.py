"""A corpus: named splits of text, streamed as batches of pieces joined by newlines.

Pieces are what gets encoded independently (lines of a text file, rows of a hub
dataset), so the same streaming and batching code serves a 1 MB play and the 540 MB
of WikiText-103; nothing ever needs one giant string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Protocol

from ngt.errors import NGTError

SEP = "\n"  # what joins consecutive pieces of a split
BATCH = 10_000  # pieces per batch: large enough to keep every tokenizer thread busy


class Corpus(Protocol):
    name: str  # for messages

    @property
    def identity(self) -> str:
        """Changes whenever the text of any split could change; cheap to compute."""

    def splits(self) -> tuple[str, ...]:
        """The splits present, among train, val and test (train and val always)."""

    def batches(self, split: str) -> Iterator[Sequence[str]]: ...

    def size(self, split: str) -> int:
        """Characters in the split (roughly), for progress lines."""


def batched(pieces: Sequence[str], n: int = BATCH) -> Iterator[Sequence[str]]:
    for i in range(0, len(pieces), n):
        yield pieces[i : i + n]


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def split_at_newline(text: str, val_fraction: float) -> int:
    """Where validation starts: the first line start at or after (1 - val_fraction) of the text."""
    target = int(len(text) * (1.0 - val_fraction))
    after = text.find("\n", max(target - 1, 0))
    if after != -1 and after + 1 < len(text):
        return after + 1
    before = text.rfind("\n", 0, target)
    return before + 1 if before != -1 else target


@dataclass
class SingleTextCorpus:
    """Text files read as one text, its first part train, the rest validation."""

    name: str
    files: list[Path]
    val_fraction: float
    digests: list[str] = field(init=False)

    def __post_init__(self) -> None:
        self.digests = []
        for path in self.files:
            try:
                self.digests.append(file_sha256(path))
            except FileNotFoundError:
                raise NGTError(f"corpus file not found: {path} (data.path)") from None

    @property
    def identity(self) -> str:
        return f"text:{','.join(self.digests)}:val={self.val_fraction}"

    def splits(self) -> tuple[str, ...]:
        return ("train", "val")

    @cached_property
    def _texts(self) -> dict[str, str]:
        parts = []
        for path in self.files:
            try:
                part = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise NGTError(f"corpus file {path} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
            # A file without a final newline must not glue its last line to the next file's first.
            parts.append(part if part.endswith("\n") or len(self.files) == 1 else part + "\n")
        text = "".join(parts)
        if not text.strip():
            raise NGTError(f"corpus {self.name} is empty: {', '.join(map(str, self.files))}")
        cut = split_at_newline(text, self.val_fraction)
        if not 0 < cut < len(text):
            raise NGTError(
                f"corpus {self.name} is too short to split into train and validation "
                f"(data.val_fraction={self.val_fraction})"
            )
        return {"train": text[:cut], "val": text[cut:]}

    def batches(self, split: str) -> Iterator[Sequence[str]]:
        return batched(self._texts[split].split(SEP))

    def size(self, split: str) -> int:
        return len(self._texts[split])
