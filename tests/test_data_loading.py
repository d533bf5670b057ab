"""Single-text corpora (bundled, local text, URL), the token cache, configs and errors."""

import hashlib
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import expect_data_error
from ngt.config import DataConfig, register_configs
from ngt.data import CharTokenizer, load_token_data
from ngt.data.corpus import split_at_newline
from ngt.config import Source, TokenizerKind
from ngt.errors import NGTError
from ngt.data.sources import bundled_corpus_path

REPO = Path(__file__).resolve().parents[1]
BUNDLED_SHA256 = "c24e4489c8ce8ac211d49a3b3cec36f3845b4ba9334a75d4d01151c4d3968064"


def cache_files(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.suffix in (".bin", ".json")}


def test_bundled_corpus_is_shipped_intact() -> None:
    path = bundled_corpus_path()
    assert hashlib.sha256(path.read_bytes()).hexdigest() == BUNDLED_SHA256
    assert (path.parent / "shakespeare_corpus.README").is_file()


def test_split_at_newline() -> None:
    text = "".join(f"line {i}\n" for i in range(1000))
    cut = split_at_newline(text, 0.1)
    assert text[cut - 1] == "\n" and abs(cut / len(text) - 0.9) < 0.01
    assert split_at_newline("no newline at all", 0.5) == 8


def test_default_data_is_the_bundled_corpus_with_char_tokens(tmp_path: Path) -> None:
    data = load_token_data(DataConfig(cache_dir=str(tmp_path)))
    text = bundled_corpus_path().read_text(encoding="utf-8")
    assert isinstance(data.tokenizer, CharTokenizer) and data.tokenizer.vocab_size == 75
    assert isinstance(data.train, np.memmap) and data.train.dtype == np.uint16
    train, val = data.tokenizer.decode(data.train.tolist()), data.tokenizer.decode(data.val.tolist())
    assert train + val == text
    assert train.endswith("\n") and abs(len(val) / len(text) - 0.1) < 0.001
    assert data.test is None


def test_second_load_hits_the_cache(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    first = load_token_data(cfg)
    before = cache_files(tmp_path)
    assert len(before) == 5  # tokenizer; train and val tokens with their meta
    with caplog.at_level(logging.DEBUG, logger="ngt"):
        second = load_token_data(cfg)
    assert cache_files(tmp_path) == before
    assert not [r for r in caplog.records if "collecting" in r.message or "encoding" in r.message]
    assert second.fingerprint == first.fingerprint
    assert np.array_equal(second.train, first.train) and np.array_equal(second.val, first.val)


def test_fingerprint_follows_text_and_tokenizer(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("to be or not to be\n" * 200)
    cfg = DataConfig(name="text", source="text", path=str(corpus), cache_dir=str(tmp_path / "cache"))
    char = load_token_data(cfg).fingerprint
    assert load_token_data(DataConfig(**{**vars(cfg), "tokenizer": "bpe", "vocab_size": 270})).fingerprint != char
    corpus.write_text("that is the question\n" * 200)
    assert load_token_data(cfg).fingerprint != char


def damage_truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-10])


def damage_meta_missing(path: Path) -> None:
    path.with_suffix(".json").unlink()


def damage_meta_mismatch(path: Path) -> None:
    meta = path.with_suffix(".json")
    meta.write_text(meta.read_text().replace('"length": ', '"length": 1'))


def damage_first_bytes(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[0] ^= 0xFF
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", [damage_truncate, damage_meta_missing, damage_meta_mismatch, damage_first_bytes])
def test_damaged_token_cache_is_rebuilt(tmp_path: Path, damage, caplog: pytest.LogCaptureFixture) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    good = np.array(load_token_data(cfg).train)
    (train_file,) = tmp_path.rglob("*-train.bin")
    damage(train_file)
    with caplog.at_level(logging.INFO, logger="ngt"):
        again = load_token_data(cfg)
    assert np.array_equal(again.train, good)
    assert any("encoding shakespeare train" in r.message for r in caplog.records)


def test_damaged_tokenizer_is_rebuilt(tmp_path: Path) -> None:
    cfg = DataConfig(cache_dir=str(tmp_path))
    vocab = load_token_data(cfg).tokenizer.vocab_size
    (tok_file,) = (tmp_path / "tokenizers").glob("*.json")
    tok_file.write_text('{"kind": "char", "cha')
    assert load_token_data(cfg).tokenizer.vocab_size == vocab


def test_cache_location_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NGT_CACHE", str(tmp_path / "env-cache"))
    load_token_data(DataConfig())
    assert list((tmp_path / "env-cache" / "tokens").glob("shakespeare-*-train.bin"))


def test_text_folder_is_sorted_and_concatenated(tmp_path: Path) -> None:
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "b.txt").write_text("second file\n" * 50)
    (folder / "a.txt").write_text("first file, no final newline")
    (folder / "notes.md").write_text("not part of the corpus")
    data = load_token_data(DataConfig(name="text", source="text", path=str(folder), cache_dir=str(tmp_path / "c")))
    text = data.tokenizer.decode(data.train.tolist()) + data.tokenizer.decode(data.val.tolist())
    assert text == "first file, no final newline\n" + "second file\n" * 50


def test_url_source_downloads_checks_and_caches(tmp_path: Path) -> None:
    url = bundled_corpus_path().as_uri()
    cfg = DataConfig(name="plays", source="url", path=url, sha256=BUNDLED_SHA256, cache_dir=str(tmp_path))
    data = load_token_data(cfg)
    (copy,) = [p for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == BUNDLED_SHA256
    assert data.tokenizer.vocab_size == 75
    copy.write_text("tampered")  # a cached copy that no longer matches is fetched again
    assert load_token_data(cfg).fingerprint == data.fingerprint


def compose_data(name: str) -> DataConfig:
    """``data=<name>`` composed into the suite's root config, as the command line does."""
    register_configs()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        return OmegaConf.to_object(compose(config_name="config", overrides=[f"data={name}"]).data)


def test_tiny_shakespeare_config_pins_the_published_checksum() -> None:
    cfg = compose_data("tiny_shakespeare")
    assert cfg.source == "url" and cfg.path.endswith("tinyshakespeare/input.txt")
    assert cfg.sha256 == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml")))
def test_data_configs_compose_against_the_schema(name: str) -> None:
    data = compose_data(name)
    assert isinstance(data, DataConfig)
    assert data.name == name and isinstance(data.source, Source) and isinstance(data.tokenizer, TokenizerKind)
    if data.source == "hf":
        assert data.path == "Salesforce/wikitext" and data.hf_config.endswith("-raw-v1") and data.vocab_size == 8192


def test_error_missing_corpus_file(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "corpus.txt"
    cfg = DataConfig(source="text", path=str(missing), cache_dir=str(tmp_path))
    expect_data_error(cfg, "corpus file not found", str(missing))


def test_error_text_source_without_path(tmp_path: Path) -> None:
    expect_data_error(DataConfig(name="text", source="text", cache_dir=str(tmp_path)), "data.source=text needs data.path")


def test_error_folder_without_text_files(tmp_path: Path) -> None:
    expect_data_error(DataConfig(source="text", path=str(tmp_path), cache_dir=str(tmp_path)), "no .txt files", str(tmp_path))


def test_error_empty_corpus(tmp_path: Path) -> None:
    (tmp_path / "empty.txt").write_text("\n\n")
    expect_data_error(DataConfig(source="text", path=str(tmp_path / "empty.txt"), cache_dir=str(tmp_path)), "is empty")


def test_error_corpus_not_utf8(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café\n".encode("latin-1"))
    cfg = DataConfig(source="text", path=str(tmp_path / "latin1.txt"), cache_dir=str(tmp_path))
    expect_data_error(cfg, "not UTF-8", "latin1.txt")


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ({"tokenizer": "wordpiece"}, ("data.tokenizer='wordpiece' is not one of char, bpe",)),
        ({"source": "s3"}, ("data.source='s3' is not one of bundled, text, hf, url",)),
        ({"tokenizer": "bpe", "vocab_size": 100}, ("data.vocab_size=100 is out of range: at least 258",)),
        ({"val_fraction": 1.5}, ("data.val_fraction=1.5 is out of range: 0 < val_fraction < 1",)),
    ],
)
def test_error_bad_options(override: dict, fragments: tuple[str, ...]) -> None:
    with pytest.raises(NGTError) as info:
        DataConfig(**override)
    assert "\n" not in str(info.value) and all(f in str(info.value) for f in fragments)


def test_error_url_offline_suggests_a_local_copy(tmp_path: Path) -> None:
    url = "http://127.0.0.1:9/input.txt"  # the discard port: refused at once, as when offline
    cfg = DataConfig(source="url", path=url, cache_dir=str(tmp_path))
    expect_data_error(cfg, f"cannot download {url}", "offline", "data=text data.path=")


def test_error_download_checksum_mismatch(tmp_path: Path) -> None:
    cfg = DataConfig(source="url", path=bundled_corpus_path().as_uri(), sha256="0" * 64, cache_dir=str(tmp_path))
    expect_data_error(cfg, "has sha256 " + BUNDLED_SHA256, "expected " + "0" * 64)
    assert not [p for p in (tmp_path / "downloads").iterdir() if not p.name.endswith(".lock")]


def test_error_unwritable_cache(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    tmp_path.chmod(0o500)
    try:
        cfg = DataConfig(cache_dir=str(tmp_path / "cache"))
        expect_data_error(cfg, "cannot write to the cache directory", "data.cache_dir")
    finally:
        tmp_path.chmod(0o700)
