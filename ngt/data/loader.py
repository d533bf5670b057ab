"""``load_token_data``: a data config in; memory-mapped token ids and their tokenizer out.

The first load of a dataset trains its tokenizer and encodes its splits into the cache;
every later load (every run of a sweep) memory-maps those files without touching the
text, the tokenizer trainer or the ``datasets`` library.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from ngt.config import DataConfig
from ngt.data.cache import MISSING, StaleEntry, atomic_file, cache_root, ensure, fingerprint, open_tokens, write_tokens
from ngt.data.corpus import SEP, Corpus
from ngt.data.progress import Progress
from ngt.data.sources import open_corpus
from ngt.data.tokenizer import BPETokenizer, CharTokenizer, Tokenizer, token_dtype, tokenizer_from_json
from ngt.errors import NGTError

SPLITS = ("train", "val", "test")


@dataclass
class TokenData:
    train: np.ndarray  # 1-D memory-mapped token ids (uint16 if the vocab allows, else uint32)
    val: np.ndarray
    tokenizer: Tokenizer
    fingerprint: str  # identifies text + tokenizer; names the cache files
    test: np.ndarray | None = None  # only hub datasets have one


def load_token_data(cfg: DataConfig, progress: bool = True) -> TokenData:
    root = cache_root(cfg.cache_dir)
    corpus = open_corpus(cfg, root)
    tokenizer = _load_tokenizer(cfg, corpus, root, progress)
    fp = fingerprint(corpus.identity, cfg.name, tokenizer.to_json())
    arrays = _load_tokens(cfg, corpus, tokenizer, fp, root, progress)
    return TokenData(arrays["train"], arrays["val"], tokenizer, fp, arrays.get("test"))


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"


def _load_tokenizer(cfg: DataConfig, corpus: Corpus, root: Path, progress: bool) -> Tokenizer:
    """The corpus's tokenizer, built once and shared by every run that reads this corpus."""
    vocab = cfg.vocab_size if cfg.tokenizer == "bpe" else None
    key = fingerprint(corpus.identity, cfg.tokenizer, vocab)
    path = root / "tokenizers" / f"{_file_stem(cfg.name)}-{cfg.tokenizer}{vocab or ''}-{key}.json"

    def load() -> Tokenizer:
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise StaleEntry(MISSING) from None
        try:
            return tokenizer_from_json(text)
        except Exception as exc:  # `tokenizers` reports malformed JSON as a bare Exception
            raise StaleEntry(f"unreadable tokenizer: {type(exc).__name__}") from None

    def build() -> None:
        tokenizer = _build_tokenizer(cfg, corpus, progress)
        with atomic_file(path) as f:
            f.write(tokenizer.to_json().encode("utf-8"))

    return ensure(path, load, build)


def _build_tokenizer(cfg: DataConfig, corpus: Corpus, progress: bool) -> Tokenizer:
    if cfg.tokenizer == "char":
        meter = Progress(f"collecting the characters of {corpus.name}", enabled=progress)
        tokenizer: Tokenizer = CharTokenizer.from_texts(
            # A leading separator joins each batch to the previous one, as in the split's text.
            (SEP if i else "") + SEP.join(batch)
            for split in corpus.splits()
            for i, batch in enumerate(meter.track(corpus.batches(split)))
        )
        meter.finish(f"{tokenizer.vocab_size} characters")
        return tokenizer
    meter = Progress(f"training BPE (vocab {cfg.vocab_size}) on {corpus.name} train", corpus.size("train"), progress)
    tokenizer = BPETokenizer.train(meter.track(corpus.batches("train")), cfg.vocab_size)
    meter.finish(f"vocab {tokenizer.vocab_size}")
    return tokenizer


def _load_tokens(
    cfg: DataConfig, corpus: Corpus, tokenizer: Tokenizer, fp: str, root: Path, progress: bool
) -> dict[str, np.ndarray]:
    dtype = token_dtype(tokenizer.vocab_size)

    def path(split: str) -> Path:
        return root / "tokens" / f"{_file_stem(cfg.name)}-{fp}-{split}.bin"

    def load(split: str) -> np.ndarray:
        return open_tokens(path(split), f"{fp}:{split}", dtype)

    def build(split: str) -> None:
        meter = Progress(f"encoding {corpus.name} {split}", corpus.size(split), progress)

        def chunks() -> Iterator[np.ndarray]:
            count = 0
            for i, batch in enumerate(meter.track(corpus.batches(split))):
                # A leading empty piece puts the separator between this batch and the last.
                ids = tokenizer.encode_pieces(["", *batch] if i else batch, SEP)
                count += len(ids)
                yield ids
            if count == 0:
                raise NGTError(f"the {split} split of {corpus.name} is empty (no non-blank lines)")

        info = {"data": cfg.name, "split": split, "source": corpus.identity, "tokenizer": tokenizer.kind}
        length = write_tokens(path(split), chunks(), dtype, f"{fp}:{split}", info)
        meter.finish(f"{length:,} tokens")

    arrays: dict[str, np.ndarray] = {}
    pending = []
    for split in SPLITS:
        try:
            arrays[split] = load(split)
        except StaleEntry:
            pending.append(split)
    # Only now may the corpus be opened (for a hub dataset: `datasets` imported and loaded).
    present = corpus.splits() if pending else ()
    for split in pending:
        if split in present:
            arrays[split] = ensure(path(split), partial(load, split), partial(build, split))
    return arrays
