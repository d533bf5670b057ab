"""Datasets in the Hugging Face hub layout (WikiText), from the hub or a local copy.

``data.path`` is handed to ``datasets.load_dataset`` as is, so a hub id, a mirror and
a folder laid out like the hub repo (README with its ``configs:`` block) all take
the same path through the code.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from ngt.data.cache import fingerprint
from ngt.data.corpus import BATCH
from ngt.errors import NGTError, needs_packages

_HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


def _one_line(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_path(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or path in (".", "..")


@dataclass
class HubCorpus:
    name: str
    path: str  # hub id, or a local folder in the hub layout
    config: str | None
    local: Path | None = field(init=False)

    def __post_init__(self) -> None:
        local = Path(self.path).expanduser()
        self.local = local.resolve() if local.exists() else None
        if self.local is None and _looks_like_path(self.path):
            raise NGTError(f"dataset folder not found: {self.path} (data.path)")

    @property
    def identity(self) -> str:
        if self.local is None:
            # Hub datasets such as WikiText do not change; their id and config are the text.
            return f"hub:{self.path}:{self.config}"
        # A local copy can be edited: its files' sizes and times stand for its content.
        files = []
        for p in sorted(self.local.rglob("*")):
            rel = p.relative_to(self.local)
            if p.is_file() and not any(part.startswith(".") for part in rel.parts):
                st = p.stat()
                files.append((str(rel), st.st_size, st.st_mtime_ns))
        return f"local:{self.local}:{self.config}:{fingerprint(files)}"

    @cached_property
    def _dataset(self) -> Any:
        # Imported here: it costs over a second, and loads served from the cache never need it.
        with needs_packages("data.source=hf"):
            import datasets

        where = f"dataset '{self.path}'" + (f" (config {self.config})" if self.config else "")
        try:
            return datasets.load_dataset(str(self.local or self.path), self.config)
        except ValueError as exc:
            if "BuilderConfig" in str(exc):
                raise NGTError(
                    f"data.hf_config={self.config!r} is not a config of dataset '{self.path}': {_one_line(exc)}"
                ) from None
            if "Config name is missing" in str(exc):
                raise NGTError(
                    f"dataset '{self.path}' has several configs, set data.hf_config: {_one_line(exc)}"
                ) from None
            raise
        except (ConnectionError, FileNotFoundError) as exc:
            if self.local is not None:
                raise NGTError(f"cannot load {where} from {self.local}: {_one_line(exc)}") from None
            offline = ", HF_HUB_OFFLINE is set" if os.environ.get("HF_HUB_OFFLINE", "0") not in ("", "0") else ""
            raise NGTError(
                f"cannot load {where}: not in the local Hugging Face cache and not available from the hub "
                f"({type(exc).__name__}: {_one_line(exc, 160)}{offline}); download it once with network "
                f"access, or set data.path=/local/copy (a folder laid out like the hub repo)"
            ) from None

    def splits(self) -> tuple[str, ...]:
        present = tuple(s for s, hf in _HF_SPLIT.items() if hf in self._dataset)
        for required in ("train", "val"):
            if required not in present:
                raise NGTError(
                    f"dataset '{self.path}' has no '{_HF_SPLIT[required]}' split "
                    f"(it has: {', '.join(self._dataset) or 'none'})"
                )
        return present

    def _split(self, split: str) -> Any:
        ds = self._dataset[_HF_SPLIT[split]]
        if "text" not in ds.column_names:
            raise NGTError(f"dataset '{self.path}' has no 'text' column (columns: {', '.join(ds.column_names)})")
        return ds.select_columns(["text"])

    def batches(self, split: str) -> Iterator[Sequence[str]]:
        """Non-blank rows, each with the trailing newline the hub rows keep (as the original)."""
        for batch in self._split(split).iter(batch_size=BATCH):
            rows = [r for r in batch["text"] if r and not r.isspace()]
            if rows:
                yield rows

    def size(self, split: str) -> int:
        return self._split(split).data.nbytes
