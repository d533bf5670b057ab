"""Every bad input of the core gets one line naming the problem, a non-zero exit, no traceback."""

import json

import pytest
import torch

from conftest import TINY, screen


def fails_with(proc, *fragments: str) -> str:
    out = proc.stdout + proc.stderr  # config errors go to stderr, run errors through the log to stdout
    assert proc.returncode != 0, out
    assert "Traceback" not in out
    lines = [ln for ln in out.splitlines() if "error:" in ln]
    assert len(lines) == 1, out
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    "override,fragments",
    [
        ("variant=nope", ("variant/nope", "available: bare, baseline")),
        ("model.nope=1", ("model.nope", "not in 'ModelConfig'")),
        ("train.batch_size=many", ("train.batch_size=many", "Integer")),
    ],
)
def test_unknown_choice_key_or_type(override, fragments, tmp_path):
    fails_with(screen(override, cwd=tmp_path), *fragments)


def test_block_beyond_context(tmp_path, small_corpus):
    proc = screen(*TINY, "data=text", f"data.path={small_corpus}", "train.block_size=128", cwd=tmp_path)
    fails_with(proc, "train.block_size=128", "model.context=64")


def test_batch_larger_than_data(tmp_path):
    corpus = tmp_path / "short.txt"
    corpus.write_text("to be or not to be\n" * 100)
    proc = screen(*TINY, "data=text", f"data.path={corpus}", "train.batch_size=64", cwd=tmp_path)
    fails_with(proc, "split has", "fewer than one batch", "train.batch_size=64")


def test_missing_corpus(tmp_path):
    proc = screen(*TINY, "data=text", f"data.path={tmp_path / 'nowhere.txt'}", cwd=tmp_path)
    fails_with(proc, str(tmp_path / "nowhere.txt"))


@pytest.mark.parametrize("content, why", [(b"", "unreadable or truncated"),
                                          (b"not a checkpoint at all", "is not a file a safe load reads"),
                                          (b"PK\x03\x04truncated zip", "unreadable or truncated")])
def test_unreadable_checkpoint_is_named_and_left_alone(tmp_path, small_corpus, content, why):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(content)
    proc = screen(*TINY, "data=text", f"data.path={small_corpus}", f"hydra.run.dir={run}", cwd=tmp_path)
    fails_with(proc, str(run / "checkpoints" / "last.pt"), why)
    assert (run / "checkpoints" / "last.pt").read_bytes() == content


def test_truncated_real_checkpoint(tmp_path, small_corpus):
    run = tmp_path / "run"
    args = [*TINY, "data=text", f"data.path={small_corpus}", f"hydra.run.dir={run}", "budget.max_steps=10"]
    screen(*args, cwd=tmp_path, check=True)
    last = run / "checkpoints" / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    (run / "summary.json").unlink()
    fails_with(screen(*args, "budget.max_steps=20", cwd=tmp_path), str(last))


def test_nan_loss_stops_marks_failed_and_keeps_last_good_checkpoint(tmp_path, small_corpus):
    run = tmp_path / "run"
    proc = screen(*TINY, "data=text", f"data.path={small_corpus}", f"hydra.run.dir={run}", "train.lr=1e30",
                  "budget.checkpoint_every=1", cwd=tmp_path)
    line = fails_with(proc, "loss is nan at step")
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_step"] >= 1
    assert summary["message"] in line
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == summary["failed_step"] - 1
    assert all(torch.isfinite(t).all() for t in state["model"].values())
