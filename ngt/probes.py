"""Probe words: where chosen words sit in an NGT run's coordinate space, evaluation after
evaluation (the original's semantic probes; the settings are ``probes.*``, the choices
``conf/probes/``).

Occurrences. Each word is located once, in the token ids of the corpus: occurrences
spread evenly over the validation split, topped up from the training split where
validation has fewer than ``probes.occurrences``. The choice depends on the data and the
probe settings only, never on a run's seeds, so every run and every evaluation of a grid
sees the same occurrences. Words are matched as written (case-sensitive) and whole (no
letter or digit touching them), by their token sequence: the word's own encoding and,
where the tokenizer folds a leading space into the word (byte-level BPE: ``ĠKING``), the
encoding of space + word, which is how the word appears in running text.

Coordinates. Each occurrence gets its own window of ``block_size`` tokens, ending at the
word's last token (the split's first window for an occurrence nearer its start). One
forward pass in eval mode gives the last layer's z and the mass there. A word of several
tokens is represented by its last token: the model is causal, so only that token has
seen the whole word (under the char tokenizer, KING's first token is any K).

Records. ``probes.jsonl`` in the run directory holds one JSON line per evaluation,
``{"step": S, "probes": [{"group", "word", "occurrence", "split", "offset", "tokens",
"z", "m"}, ...]}``: an evaluation is one line, so a kill mid-append tears only that line,
which the reader leaves out. The trainer appends it before the metrics row of the same
step; hence every step with a metrics row has its complete probe line, and a resume keeps
exactly the probe lines of the metrics rows it keeps (``keep_probe_steps``).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ngt.atomic import atomic_write_bytes, naming_the_file
from ngt.data import TokenData, Tokenizer
from ngt.errors import NGTError

log = logging.getLogger("ngt.probes")

FILE = "probes.jsonl"
SPLITS = ("val", "train")  # where occurrences are taken from, in this order
_CHUNK = 1 << 24  # tokens compared at once: a large split is scanned without copying it whole


@dataclass(frozen=True)
class Occurrence:
    group: str
    word: str
    occurrence: int  # its index among the word's occurrences
    split: str
    offset: int  # the first token of the match in its split (the leading space's, where it has one)
    tokens: int  # how many tokens the match is


def _encoded(tok: Tokenizer, text: str) -> list[int]:
    try:
        return tok.encode(text)
    except NGTError:  # a character the char tokenizer never saw: the text cannot occur
        return []


def token_forms(tok: Tokenizer, word: str) -> list[list[int]]:
    """The token sequences ``word`` takes in the corpus: as written, and after a space
    where the tokenizer folds the space into the word; none where it cannot be encoded."""
    plain, spaced = _encoded(tok, word), _encoded(tok, " " + word)
    forms = [plain] if plain else []
    if spaced and spaced[1:] != plain:
        forms.append(spaced)
    return forms


def word_edges(tok: Tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """Per token id: whether its text starts, and whether it ends, with a letter or digit.
    A byte-level token holding part of a character counts as neither."""
    texts = [tok.decode([i]) for i in range(tok.vocab_size)]
    return np.array([t[:1].isalnum() for t in texts]), np.array([t[-1:].isalnum() for t in texts])


def _starts(ids: np.ndarray, form: Sequence[int]) -> np.ndarray:
    """Every index of ``ids`` where the token sequence ``form`` starts."""
    n, found = len(form), [np.empty(0, np.int64)]
    for lo in range(0, max(len(ids) - n + 1, 0), _CHUNK):
        part = np.asarray(ids[lo : lo + _CHUNK + n - 1])
        at = np.flatnonzero(part[: len(part) - n + 1] == form[0])
        for k in range(1, n):
            at = at[part[at + k] == form[k]]
        found.append(at + lo)
    return np.concatenate(found)


def find_word(ids: np.ndarray, forms: list[list[int]], edges: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """(start, tokens) of every whole occurrence of the word in ``ids``, in order: a match
    whose edge is a letter or digit must not touch another letter or digit there."""
    starts_alnum, ends_alnum = edges
    found = [np.empty((0, 2), np.int64)]
    for form in forms:
        at, n = _starts(ids, form), len(form)
        if starts_alnum[form[0]]:
            at = at[(at == 0) | ~ends_alnum[ids[np.maximum(at - 1, 0)]]]
        if ends_alnum[form[-1]]:
            at = at[(at + n == len(ids)) | ~starts_alnum[ids[np.minimum(at + n, len(ids) - 1)]]]
        found.append(np.stack([at, np.full_like(at, n)], axis=1))
    spans = np.concatenate(found)
    return spans[np.argsort(spans[:, 0], kind="stable")]


def evenly(items: np.ndarray, k: int) -> np.ndarray:
    """``k`` of ``items`` spread evenly over them, the first included; all where there are no more."""
    n = len(items)
    return items[np.arange(k) * n // k] if n > k else items


def _occurrences(group: str, word: str, forms: list[list[int]], splits: Mapping[str, np.ndarray],
                 edges: tuple[np.ndarray, np.ndarray], k: int) -> list[Occurrence]:
    chosen: list[tuple[str, int, int]] = []
    for split in SPLITS:
        if len(chosen) < k and forms:
            spans = evenly(find_word(splits[split], forms, edges), k - len(chosen))
            chosen += [(split, int(start), int(n)) for start, n in spans]
    if not chosen:
        log.info("probe word %r (%s) occurs in neither the validation nor the training split: left out", word, group)
    elif len(chosen) < k:
        log.info("probe word %r (%s): %d occurrences of the %d asked for, all the corpus has", word, group,
                 len(chosen), k)
    return [Occurrence(group, word, i, split, start, n) for i, (split, start, n) in enumerate(chosen)]


def _window(ids: np.ndarray, end: int, block_size: int) -> tuple[np.ndarray, int]:
    """The ``block_size`` tokens ending at ``end`` (exclusive), or the split's first ones;
    and where token ``end - 1`` sits in them."""
    start = max(0, end - block_size)
    return np.asarray(ids[start : start + block_size], dtype=np.int64), end - 1 - start


@dataclass(frozen=True)
class ProbeSet:
    """The occurrences of a run's probe words and their context windows."""

    occurrences: list[Occurrence]
    windows: torch.Tensor  # (n, block_size) token ids: one window per occurrence, then copies of the last
    positions: torch.Tensor  # (n,) where the occurrence's last token sits in its window
    batch_size: int  # windows per forward pass

    @classmethod
    def locate(cls, groups: Mapping[str, Sequence[str]], data: TokenData, block_size: int, occurrences: int,
               batch_size: int) -> Optional[ProbeSet]:
        """Up to ``occurrences`` of each word; None where no word occurs at all."""
        splits = {"val": data.val, "train": data.train}
        edges = word_edges(data.tokenizer)
        found = [o for group, words in groups.items() for word in words
                 for o in _occurrences(group, word, token_forms(data.tokenizer, word), splits, edges, occurrences)]
        words = sum(len(w) for w in groups.values())
        if not found:
            log.info("probes: none of the %d probe words occurs in the corpus: nothing to record", words)
            return None
        cut = [_window(splits[o.split], o.offset + o.tokens, block_size) for o in found]
        cut += cut[-1:] * (-len(cut) % batch_size)  # full batches only: the shape evaluation has compiled for
        from_val = sum(o.split == "val" for o in found)
        log.info("probes: %d of %d words, %d occurrences (%d from the validation split, %d from training)",
                 len({o.word for o in found}), words, len(found), from_val, len(found) - from_val)
        return cls(found, torch.from_numpy(np.stack([w for w, _ in cut])), torch.tensor([p for _, p in cut]),
                   batch_size)

    @torch.no_grad()
    def measure(self, model: torch.nn.Module, device: torch.device) -> list[dict[str, Any]]:
        """One record per occurrence: the last layer's z and the mass at its last token. In
        eval mode, without autocast; the model's mode is restored and no random number is
        drawn, so a run trains the same with probes as without."""
        was_training = model.training
        model.eval()
        z, m = [], []
        for x, pos in zip(self.windows.split(self.batch_size), self.positions.split(self.batch_size)):
            _, (zb, mb) = model(x.to(device), want_coords=True)
            rows, pos = torch.arange(len(x), device=device), pos.to(device)
            z.append(zb[rows, pos].float().cpu())
            m.append(mb[rows, pos].float().cpu())
        model.train(was_training)
        # zip ends with the occurrences, leaving the padding's rows out. str() of a float32 is
        # its shortest exact decimal: half the digits of a float64's.
        return [{**asdict(o), "z": [float(str(v)) for v in zi], "m": float(str(mi))}
                for o, zi, mi in zip(self.occurrences, torch.cat(z).numpy(), torch.cat(m).numpy())]


def group_distances(records: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per group, over the records of one evaluation: the mean distance between occurrences
    of two different words of the group (``within``), and from its occurrences to those of
    the other groups (``across``). A value with no pair to average is left out."""
    z = np.array([r["z"] for r in records], dtype=np.float64)
    group = np.array([r["group"] for r in records])
    word = np.array([r["word"] for r in records])
    d = np.linalg.norm(z[:, None] - z[None], axis=-1)
    out = {}
    for g in dict.fromkeys(group.tolist()):
        mine = group == g
        pairs = {"within": mine[:, None] & mine[None] & (word[:, None] != word[None]),
                 "across": mine[:, None] & ~mine[None]}
        out[g] = {kind: float(d[p].mean()) for kind, p in pairs.items() if p.any()}
    return out


def record_probes(run_dir: Path, step: int, records: list[dict[str, Any]], writer: Any) -> None:
    """Append one evaluation's records to probes.jsonl (before the step's metrics row, see
    the module's doc) and write its ``probes/<group>/within|across`` scalars to ``writer``."""
    path = Path(run_dir) / FILE
    with naming_the_file(path), open(path, "a") as f:
        f.write(json.dumps({"step": step, "probes": records}) + "\n")
        f.flush()
        os.fsync(f.fileno())
    for group, kinds in group_distances(records).items():
        for kind, value in kinds.items():
            writer.add_scalar(f"probes/{group}/{kind}", value, step)


def _read_lines(path: Path) -> list[dict[str, Any]]:
    """The evaluations of probes.jsonl. A last line without its newline that does not parse
    was torn by a kill and is left out; any other such line raises NGTError naming it."""
    try:
        lines = path.read_text().split("\n")  # the last item is "" when the file ends with a newline
    except FileNotFoundError:
        return []
    evaluations = []
    for number, line in enumerate(lines, 1):
        if not line:
            continue
        try:
            evaluation = json.loads(line)
        except json.JSONDecodeError:
            if number == len(lines):
                break
            evaluation = None
        if not (isinstance(evaluation, dict) and {"step", "probes"} <= evaluation.keys()):
            raise NGTError(f"{path}, line {number}: not a probes record ({line[:40]!r}); the file was left as it "
                           "is: repair or remove that line")
        evaluations.append(evaluation)
    return evaluations


def read_probes(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of the run, one per occurrence and evaluation, each with its ``step``."""
    return [{"step": e["step"], **r} for e in _read_lines(Path(run_dir) / FILE) for r in e["probes"]]


def keep_probe_steps(run_dir: Path, steps: Iterable[int]) -> None:
    """Keep only the evaluations at ``steps`` in probes.jsonl, atomically: on resume, the
    steps of the metrics rows kept (the others, and a torn line, are made again); when a
    run starts over, none."""
    path = Path(run_dir) / FILE
    if not path.exists():
        return
    keep = set(steps)
    text = "".join(json.dumps(e) + "\n" for e in _read_lines(path) if e["step"] in keep)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
