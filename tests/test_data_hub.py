"""Hub datasets (WikiText) through the real `datasets.load_dataset` path, on a local
folder laid out like the hub repo: README with its `configs:` block, parquet shards."""

import os
import tempfile

# `datasets` reads these when it is first imported, so they are set before anything can.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "ngt-tests-hf-datasets"))

import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from conftest import TINY, expect_data_error, screen  # noqa: E402
from ngt.config import DataConfig  # noqa: E402
from ngt.data import BPETokenizer, load_token_data, tokenizer_from_json  # noqa: E402
from ngt.data.encode_bench import wikitext_style_rows  # noqa: E402
from ngt.data.sources import bundled_corpus_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = "wikitext-2-raw-v1"


def write_hub_dataset(root: Path, configs: dict[str, dict[str, list[str]]]) -> None:
    """The Salesforce/wikitext layout: <config>/<split>-0000k-of-0000n.parquet, train in two shards."""
    readme = ["---", "configs:"]
    for config, splits in configs.items():
        readme += [f"- config_name: {config}", "  data_files:"]
        (root / config).mkdir(parents=True)
        for split, rows in splits.items():
            readme += [f"  - split: {split}", f"    path: {config}/{split}-*"]
            shards = np.array_split(np.array(rows, dtype=object), 2 if split == "train" else 1)
            for k, shard in enumerate(shards):
                name = f"{split}-{k:05d}-of-{len(shards):05d}.parquet"
                pd.DataFrame({"text": shard.tolist()}).to_parquet(root / config / name)
    readme += ["---", "", "A fixture shaped like the hub's WikiText."]
    (root / "README.md").write_text("\n".join(readme) + "\n")


@pytest.fixture(scope="module")
def wiki_rows() -> dict[str, list[str]]:
    rows = wikitext_style_rows(bundled_corpus_path().read_text(encoding="utf-8"))
    rows[5:5] = [" \n", "\n"]  # blank rows that are not empty strings: dropped too
    return {"train": rows[:400], "validation": rows[400:520], "test": rows[520:640]}


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, wiki_rows: dict[str, list[str]]) -> Path:
    root = tmp_path_factory.mktemp("hub") / "wikitext"
    write_hub_dataset(
        root,
        {
            CONFIG: wiki_rows,
            "empty-validation": {"train": wiki_rows["train"][:50], "validation": ["", "", ""]},
            "no-validation": {"train": wiki_rows["train"][:50]},
        },
    )
    return root


def hub_cfg(path: Path | str, cache: Path, **kw) -> DataConfig:
    base = dict(name="wikitext2", source="hf", path=str(path), hf_config=CONFIG, tokenizer="bpe", vocab_size=512)
    return DataConfig(**{**base, "cache_dir": str(cache), **kw})


def original_text(rows: list[str]) -> str:
    return "\n".join(r for r in rows if r.strip())


def test_three_splits_load_as_the_original_joined_them(hub: Path, tmp_path: Path, wiki_rows: dict) -> None:
    data = load_token_data(hub_cfg(hub, tmp_path))
    tok = data.tokenizer
    assert isinstance(tok, BPETokenizer) and tok.vocab_size == 512
    assert data.test is not None
    for array, split in ((data.train, "train"), (data.val, "validation"), (data.test, "test")):
        assert isinstance(array, np.memmap) and array.dtype == np.uint16
        assert tok.decode(array.tolist()) == original_text(wiki_rows[split])
    assert "@-@" in original_text(wiki_rows["train"])  # the fixture has WikiText's artifacts


def test_bpe_is_trained_on_the_train_split_only(hub: Path, tmp_path: Path, wiki_rows: dict) -> None:
    data = load_token_data(hub_cfg(hub, tmp_path))
    reference = BPETokenizer.train([[r for r in wiki_rows["train"] if r.strip()]], 512)
    assert data.tokenizer.to_json() == reference.to_json()


def test_second_load_hits_the_cache(hub: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = hub_cfg(hub, tmp_path)
    first = load_token_data(cfg)
    files = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.suffix in (".bin", ".json")}
    assert len(files) == 7  # tokenizer; train, val and test tokens with their meta
    with caplog.at_level(logging.DEBUG, logger="ngt"):
        second = load_token_data(cfg)
    assert not [r for r in caplog.records if "training" in r.message or "encoding" in r.message]
    assert {p: p.stat().st_mtime_ns for p in files} == files
    assert second.fingerprint == first.fingerprint
    for a, b in ((first.train, second.train), (first.val, second.val), (first.test, second.test)):
        assert np.array_equal(a, b)


def test_truncated_cache_is_rebuilt_without_retraining(hub: Path, tmp_path: Path, caplog) -> None:
    cfg = hub_cfg(hub, tmp_path)
    good = np.array(load_token_data(cfg).train)
    (train_file,) = tmp_path.rglob("*-train.bin")
    train_file.write_bytes(train_file.read_bytes()[: len(good)])
    with caplog.at_level(logging.INFO, logger="ngt"):
        again = load_token_data(cfg)
    assert np.array_equal(again.train, good)
    messages = [r.message for r in caplog.records]
    assert any("unusable" in m for m in messages) and any("encoding wikitext2 train" in m for m in messages)
    assert not any("training" in m for m in messages)


CHILD = """
import hashlib, logging, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
from ngt.config import DataConfig
from ngt.data import load_token_data
path, config, cache = sys.argv[1:]
d = load_token_data(DataConfig(name="wikitext2", source="hf", path=path, hf_config=config,
                               tokenizer="bpe", vocab_size=512, cache_dir=cache))
print(d.fingerprint, *(hashlib.sha256(a.tobytes()).hexdigest() for a in (d.train, d.val, d.test)))
"""


def test_two_processes_prepare_the_same_data_at_once(hub: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD, str(hub), CONFIG, str(tmp_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=REPO,
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
    assert outputs[0][0] == outputs[1][0]
    logs = outputs[0][1] + outputs[1][1]
    assert logs.count("training BPE") == 1  # one built, the other waited and reused
    assert sum(logs.count(f"encoding wikitext2 {s}:") for s in ("train", "val", "test")) == 3
    fingerprint, *digests = outputs[0][0].split()
    files = [next(tmp_path.rglob(f"*{fingerprint}-{s}.bin")) for s in ("train", "val", "test")]
    assert [hashlib.sha256(f.read_bytes()).hexdigest() for f in files] == digests
    assert not list(tmp_path.rglob("*.tmp-*"))


def test_error_wrong_config_name(hub: Path, tmp_path: Path) -> None:
    expect_data_error(hub_cfg(hub, tmp_path, hf_config="wikitext-3-raw"), "data.hf_config='wikitext-3-raw'", CONFIG)


def test_error_config_name_missing(hub: Path, tmp_path: Path) -> None:
    expect_data_error(hub_cfg(hub, tmp_path, hf_config=None), "set data.hf_config", CONFIG)


def test_error_empty_split(hub: Path, tmp_path: Path) -> None:
    expect_data_error(hub_cfg(hub, tmp_path, hf_config="empty-validation"), "val split", "is empty")


def test_error_missing_split(hub: Path, tmp_path: Path) -> None:
    expect_data_error(hub_cfg(hub, tmp_path, hf_config="no-validation"), "no 'validation' split", "train")


def test_error_missing_local_copy(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "wikitext"
    expect_data_error(hub_cfg(missing, tmp_path), "dataset folder not found", str(missing), "data.path")


def test_error_hub_unreachable_and_not_cached(tmp_path: Path) -> None:
    cfg = hub_cfg("ngt-tests/not-a-dataset", tmp_path, hf_config="wikitext-103-raw-v1")
    expect_data_error(cfg, "cannot load dataset 'ngt-tests/not-a-dataset'", "wikitext-103-raw-v1", "data.path=/local/copy")


def test_smoke_run_on_wikitext103_fixture_trains_and_evaluates(tmp_path: Path, wiki_rows: dict) -> None:
    """The whole CLI path: data=wikitext103 pointed at a hub-shaped folder, offline."""
    hub = tmp_path / "wikitext"
    write_hub_dataset(hub, {"wikitext-103-raw-v1": wiki_rows})
    # The CPU's default attention backend (compiled), here once end to end.
    overrides = [o for o in TINY if not o.startswith(("train.full_val=", "model.attn_impl="))]
    run = tmp_path / "run"
    proc = screen(*overrides, "data=wikitext103", f"data.path={hub}", "data.vocab_size=512", "train.full_val=true",
                  f"hydra.run.dir={run}", cwd=tmp_path, check=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["data"] == "wikitext103" and summary["attn_impl"] == "compiled"
    assert summary["final_step"] == summary["max_steps"] and np.isfinite(summary["val_loss_final"])
    log = proc.stdout + proc.stderr
    assert "full validation pass" in log
    # Preparation reports its rates: BPE training and the encoding of each split.
    for step in ("training BPE (vocab 512) on wikitext103 train", "encoding wikitext103 train", "encoding wikitext103 val"):
        assert re.search(re.escape(step) + r": [\d.]+ MB in [\d.]+ s \([\d.]+ MB/s\)", log), step
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert tokenizer_from_json(state["tokenizer"]).vocab_size == 512
