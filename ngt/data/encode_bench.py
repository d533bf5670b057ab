"""Encoding throughput on this machine: batched BPE encoding against the per-line loop.

    python -m ngt.data.encode_bench [--mb 16] [--vocab 8192]

Works offline: the text is the bundled plays rewritten in WikiText's shape (rows of
one paragraph with a leading space and a trailing newline, ` = Heading = ` rows,
punctuation split off, ` @-@ ` hyphens, empty rows), repeated up to the size asked.
"""

from __future__ import annotations

import argparse
import os
import re
import time
from collections.abc import Callable, Sequence

import numpy as np

from ngt.data.corpus import BATCH, SEP, batched
from ngt.data.sources import bundled_corpus_path
from ngt.data.tokenizer import BPETokenizer, tokenizer_from_json


def wikitext_style_rows(text: str, speeches_per_row: int = 3) -> list[str]:
    def wikify(s: str) -> str:
        s = re.sub(r"(?<=\w)-(?=\w)", " @-@ ", s)
        s = re.sub(r"(?<=\d),(?=\d)", " @,@ ", s)
        s = re.sub(r"([,.;:!?()\"])", r" \1 ", s)
        return " ".join(s.split())

    speeches = [" ".join(block.split("\n")) for block in text.split("\n\n") if block.strip()]
    rows = []
    for n, i in enumerate(range(0, len(speeches), speeches_per_row)):
        if n % 20 == 0:
            rows += ["", f" = {wikify(speeches[i].split('.')[0][:40])} = \n", ""]
        rows += [" " + wikify(" ".join(speeches[i : i + speeches_per_row])) + " \n", ""]
    return rows


def corpus_rows(megabytes: float) -> list[str]:
    base = wikitext_style_rows(bundled_corpus_path().read_text(encoding="utf-8"))
    base_size = sum(map(len, base))
    rows = base * max(1, round(megabytes * 1e6 / base_size))
    return [r for r in rows if r.strip()]  # the rows load_token_data encodes


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def _join(tok: BPETokenizer, id_lists: list[list[int]]) -> np.ndarray:
    """One token stream, rows separated by the newline token (what the original stored)."""
    sep = tok.hf.encode(SEP).ids
    flat: list[int] = []
    for ids in id_lists:
        flat += ids
        flat += sep
    return np.array(flat[: len(flat) - len(sep)], dtype=np.uint16)


def per_line_loop(tok: BPETokenizer, rows: Sequence[str], batch: int) -> np.ndarray:
    return _join(tok, [tok.hf.encode(r).ids for r in rows])


def encode_batch(tok: BPETokenizer, rows: Sequence[str], batch: int) -> np.ndarray:
    return _join(tok, [e.ids for chunk in batched(rows, batch) for e in tok.hf.encode_batch(list(chunk))])


def encode_batch_fast(tok: BPETokenizer, rows: Sequence[str], batch: int) -> np.ndarray:
    return _join(tok, [e.ids for chunk in batched(rows, batch) for e in tok.hf.encode_batch_fast(list(chunk))])


def ngt_path(tok: BPETokenizer, rows: Sequence[str], batch: int) -> np.ndarray:
    """What load_token_data runs: Tokenizer.encode_pieces per batch, straight to numpy."""
    chunks = [tok.encode_pieces(([""] if i else []) + list(c), SEP) for i, c in enumerate(batched(rows, batch))]
    return np.concatenate(chunks)


METHODS = {
    "per-line loop, tok.encode(line).ids (the original)": per_line_loop,
    "encode_batch, row chunks": encode_batch,
    "encode_batch_fast, row chunks": encode_batch_fast,
    "ngt path (Tokenizer.encode_pieces -> numpy)": ngt_path,
}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=16.0, help="size of the text to encode, in MB")
    parser.add_argument("--vocab", type=int, default=8192, help="BPE vocabulary size")
    parser.add_argument("--train-mb", type=float, default=4.0, help="text used to train the tokenizer, in MB")
    parser.add_argument("--batch", type=int, default=BATCH, help="rows per batch (training and encoding)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the fastest counts (shared machines)")
    args = parser.parse_args(argv)

    rows = corpus_rows(args.mb)
    mb = sum(len(r.encode("utf-8")) for r in rows) / 1e6
    train_rows = rows[: max(1, int(len(rows) * min(1.0, args.train_mb / mb)))]
    train_mb = sum(len(r.encode("utf-8")) for r in train_rows) / 1e6
    tok, train_s = timed(lambda: BPETokenizer.train(batched(train_rows, args.batch), args.vocab))
    threads = os.environ.get("RAYON_NUM_THREADS") or os.cpu_count()
    print(
        f"{mb:.1f} MB of WikiText-style text in {len(rows):,} rows; byte-level BPE, vocab {tok.vocab_size}; "
        f"{threads} threads; {args.batch}-row batches; best of {args.repeat}"
    )
    print()
    print("| what | s | MB/s | vs loop |")
    print("|---|---:|---:|---:|")
    print(f"| training, train_from_iterator on {train_mb:.1f} MB | {train_s:.1f} | {train_mb / train_s:.2f} | |")
    reference, loop_s = None, 0.0
    for name, method in METHODS.items():
        runs = []
        for _ in range(args.repeat):
            fresh = tokenizer_from_json(tok.to_json())  # an empty word cache for every run
            runs.append(timed(lambda: method(fresh, rows, args.batch)))  # noqa: B023 (called at once)
        ids, seconds = min(runs, key=lambda run: run[1])
        if reference is None:
            reference, loop_s = ids, seconds
        elif not np.array_equal(ids, reference):
            raise SystemExit(f"{name} gives different ids from the per-line loop")
        print(f"| {name} | {seconds:.1f} | {mb / seconds:.2f} | {loop_s / seconds:.2f}x |")


if __name__ == "__main__":
    main()
