"""From ``data.source`` to a corpus: the bundled plays, local text, a URL, or a hub dataset."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from ngt.config import DataConfig
from ngt.data.corpus import Corpus, SingleTextCorpus
from ngt.data.download import fetch
from ngt.data.hub import HubCorpus
from ngt.errors import NGTError

BUNDLED = "shakespeare_corpus.txt"


def bundled_corpus_path() -> Path:
    return Path(str(files("ngt") / "assets" / BUNDLED))


def _text_files(path: str) -> list[Path]:
    root = Path(path).expanduser()
    if root.is_dir():
        found = sorted(root.glob("*.txt"))
        if not found:
            raise NGTError(f"no .txt files in corpus folder {root} (data.path)")
        return found
    return [root]


def open_corpus(cfg: DataConfig, cache: Path) -> Corpus:
    if cfg.source == "bundled":
        path = bundled_corpus_path()
        if not path.is_file():
            raise NGTError(f"the bundled corpus is missing from the installed package: {path} (reinstall ngt)")
        return SingleTextCorpus(cfg.name, [path], cfg.val_fraction)
    if not cfg.path:
        needs = {
            "text": "a .txt file or a folder of .txt files",
            "url": "the URL to download",
            "hf": "a hub dataset id or a local copy",
        }
        raise NGTError(f"data.source={cfg.source} needs data.path: {needs[cfg.source]}")
    if cfg.source == "text":
        return SingleTextCorpus(cfg.name, _text_files(cfg.path), cfg.val_fraction)
    if cfg.source == "url":
        return SingleTextCorpus(cfg.name, [fetch(cfg.path, cfg.sha256, cache / "downloads")], cfg.val_fraction)
    return HubCorpus(cfg.name, cfg.path, cfg.hf_config)
