"""Tokenizers: round trips, labels with visible whitespace, serialisation."""

import json

import numpy as np
import pytest

from ngt.data import BPETokenizer, CharTokenizer, tokenizer_from_json
from ngt.data.sources import bundled_corpus_path
from ngt.errors import NGTError


@pytest.fixture(scope="module")
def corpus() -> str:
    return bundled_corpus_path().read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def bpe(corpus: str) -> BPETokenizer:
    lines = corpus.splitlines(keepends=True)[:4000]
    return BPETokenizer.train([lines], vocab_size=400)


def test_char_round_trip_on_bundled_corpus(corpus: str) -> None:
    tok = CharTokenizer.from_texts([corpus])
    assert tok.vocab_size == 75  # DATA.md: 75 distinct characters
    assert tok.chars == "".join(sorted(set(corpus)))
    ids = tok.encode(corpus)
    assert len(ids) == len(corpus)
    assert tok.decode(ids) == corpus


def test_char_encode_pieces_equals_encoding_the_joined_text(corpus: str) -> None:
    tok = CharTokenizer.from_texts([corpus])
    lines = corpus.split("\n")[:500]
    ids = tok.encode_pieces(lines, "\n")
    assert ids.dtype == np.uint16
    assert ids.tolist() == tok.encode("\n".join(lines))


def test_char_unknown_character_is_a_clear_error() -> None:
    tok = CharTokenizer("ab")
    with pytest.raises(NGTError, match="outside the char tokenizer's vocabulary"):
        tok.encode("abc")


def test_bpe_round_trip_and_pieces(bpe: BPETokenizer, corpus: str) -> None:
    text = corpus[:20000] + "naïve café — ünïcödé\n\ttab"
    assert bpe.decode(bpe.encode(text)) == text  # every byte is in the base vocabulary
    lines = text.split("\n")
    ids = bpe.encode_pieces(lines, "\n")
    assert bpe.decode(ids.tolist()) == text
    assert bpe.encode_pieces([], "\n").size == 0


def test_char_token_labels_make_whitespace_visible() -> None:
    tok = CharTokenizer.from_texts(["a b\n\tc"])
    assert [tok.token_label(i) for i in range(tok.vocab_size)] == ["⇥", "↵", "␣", "a", "b", "c"]


def test_bpe_token_labels_decode_byte_level_marks(bpe: BPETokenizer) -> None:
    labels = {bpe.token_label(i) for i in range(bpe.vocab_size)}
    assert "<unk>" in labels
    assert "␣" in labels and "↵" in labels and "⇥" in labels
    assert not any(mark in label for label in labels for mark in ("Ġ", "Ċ", "ĉ"))
    word = bpe.encode(" the")
    assert len(word) == 1 and bpe.token_label(word[0]) == "␣the"
    # A lone byte of a multi-byte character has no text of its own: it shows as an escape.
    first_byte_of_e_acute = bpe.hf.token_to_id("Ã")
    assert bpe.token_label(first_byte_of_e_acute) == "\\xc3"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_tokenizer_from_json_round_trip(kind: str, bpe: BPETokenizer, corpus: str) -> None:
    tok = bpe if kind == "bpe" else CharTokenizer.from_texts([corpus])
    s = tok.to_json()
    assert isinstance(s, str)
    back = tokenizer_from_json(s)
    assert type(back) is type(tok) and back.kind == kind
    assert back.vocab_size == tok.vocab_size
    assert back.encode(corpus[:5000]) == tok.encode(corpus[:5000])
    assert back.to_json() == s


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("not json", "not a serialised ngt tokenizer"),
        (json.dumps({"kind": "wordpiece"}), "unknown tokenizer kind 'wordpiece'"),
    ],
)
def test_tokenizer_from_json_rejects_bad_input(payload: str, message: str) -> None:
    with pytest.raises(NGTError, match=message):
        tokenizer_from_json(payload)
