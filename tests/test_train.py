"""Reproducibility, exact resume after SIGKILL, and the run directory contract."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, numbers, screen

def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, small_corpus):
    out = tmp_path_factory.mktemp("ref")
    # Probe words that the small corpus holds (speakers of Coriolanus), so resume is checked on them too.
    args = [*TINY, f"data.path={small_corpus}", "data=text", "budget.max_steps=40", "budget.eval_every=5",
            "budget.checkpoint_every=5", "train.full_val=true", "probes=none",
            "+probes.groups.tribunes=[BRUTUS,SICINIUS]", "+probes.groups.family=[VOLUMNIA,VIRGILIA]"]
    screen(*args, f"hydra.run.dir={out / 'run'}", cwd=out, check=True)
    return args, out / "run"


def test_run_directory_contract(reference_run):
    _, run = reference_run
    rows = metrics(run)
    assert [r["step"] for r in rows] == list(range(0, 41, 5))
    for key in ("train/loss", "val/loss", "repulsion/loss", "lr", "grad_norm", "elapsed_s", "tokens",
                "ngt/L0/gamma_mean", "ngt/L1/radius", "ngt/L0/mean_d2", "ngt/L0/entropy", "ngt/L0/cut_frac"):
        assert key in rows[-1], key
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "completed" and s["final_step"] == s["max_steps"] == 40
    assert s["val_loss_final"] == rows[-1]["val/loss"]
    assert s["val_loss_best"] == min(r["val/loss"] for r in rows)
    assert s["val_loss_full"] > 0 and s["throughput"]["window"] == [5, 40]
    assert abs(s["params_baseline"] / s["params_ngt"] - 1) < 0.02 and s["params"] == s["params_ngt"]
    assert set(s["seeds"]) >= {"seed", "data_seed", "eval_seed"}
    assert s["compiled"] is False and s["compile_mode"] is None  # train.compile's default on CPU
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert {"model", "optimizer", "scaler", "rng", "step", "tokenizer", "config"} <= set(state)
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"] == 40
    assert "token\tmass" in next((run / "tb").glob("*/coords_z/metadata.tsv")).read_text()  # projector of z
    assert any((run / "tb").iterdir()) and (run / ".hydra" / "config.yaml").exists() and (run / "run.log").exists()


def test_same_seeds_same_numbers_in_process_too(reference_run, tmp_path):
    from ngt.runner import train

    args, ref = reference_run
    train(compose(*args), tmp_path / "again")
    assert numbers(tmp_path / "again") == numbers(ref)


def test_train_deterministic_changes_no_number_on_cpu(reference_run, tmp_path):
    from ngt.runner import train

    args, ref = reference_run
    train(compose(*args, "train.deterministic=true"), tmp_path / "det")
    assert numbers(tmp_path / "det") == numbers(ref)


def test_train_deterministic_is_torchs_switch(monkeypatch):
    from ngt.config import TrainConfig
    from ngt.runtime import use_deterministic

    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", "")  # so that monkeypatch restores what was there
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG")
    try:
        use_deterministic(TrainConfig(deterministic=True))
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # what cuBLAS needs to repeat its sums
    finally:
        use_deterministic(TrainConfig())
    assert not torch.are_deterministic_algorithms_enabled()


def test_sigkill_at_a_random_step_then_resume_is_the_same_run(reference_run, tmp_path):
    args, ref = reference_run
    run = tmp_path / "killed"
    cmd = [sys.executable, "-m", "ngt.screen", *args, f"hydra.run.dir={run}"]
    kill_after = random.Random().randint(1, 6)  # evaluations seen before the kill
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (run / "metrics.jsonl").exists() and len((run / "metrics.jsonl").read_text().splitlines()) > kill_after:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert json.loads((run / "summary.json").read_text())["status"] == "running"
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["resumed_at_steps"]
    assert numbers(run) == numbers(ref)
    probes = (ref / "probes.jsonl").read_text()
    assert probes.count("\n") == len(numbers(ref)) and '"word": "BRUTUS"' in probes  # a line per evaluation
    assert (run / "probes.jsonl").read_text() == probes


def test_relaunching_a_completed_run_skips_it(reference_run):
    args, ref = reference_run
    before = (ref / "metrics.jsonl").read_text()
    t0 = time.time()
    proc = screen(*args, f"hydra.run.dir={ref}", cwd=ref.parent, check=True)
    assert "skipped" in proc.stderr + proc.stdout
    assert (ref / "metrics.jsonl").read_text() == before
    assert time.time() - t0 < 30


def test_the_model_is_compiled_by_default_on_cuda_only():
    from ngt.config import TrainConfig
    from ngt.runtime import can_compile, compile_model

    model = torch.nn.Linear(2, 2)
    assert compile_model(model, TrainConfig(), torch.device("cpu")) is model
    assert isinstance(compile_model(model, TrainConfig(compile=True), torch.device("cpu")),
                      torch._dynamo.eval_frame.OptimizedModule)
    cuda = torch.device("cuda")
    assert (compile_model(model, TrainConfig(), cuda) is not model) == can_compile(cuda)
    assert compile_model(model, TrainConfig(compile=False), cuda) is model


def test_compile_mode_is_cuda_graphs_on_cuda_unless_chosen():
    from ngt.config import TrainConfig
    from ngt.errors import NGTError
    from ngt.runtime import compile_mode

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert compile_mode(TrainConfig(), cuda) == "reduce-overhead" and compile_mode(TrainConfig(), cpu) == "default"
    assert compile_mode(TrainConfig(compile_mode="max-autotune"), cuda) == "max-autotune"
    with pytest.raises(NGTError, match="train.compile_mode='fast' is not one of default, reduce-overhead"):
        TrainConfig(compile_mode="fast")


def test_a_run_paused_at_rungs_goes_on_to_the_numbers_of_one_trained_straight(reference_run, tmp_path):
    from ngt.checkpoint import load_checkpoint
    from ngt.runner import train

    # Checkpoints every 20 steps: the pauses at 15 and 30 save last.pt on their own, and
    # must keep their step's evaluation (the best so far) as a checkpoint step does.
    args = [*reference_run[0], "budget.checkpoint_every=20"]
    straight = train(compose(*args), tmp_path / "straight")
    run = tmp_path / "run"
    for stop in (15, 30):
        summary = train(compose(*args, f"budget.stop_at={stop}"), run)
        assert (summary["status"], summary["final_step"]) == ("paused", stop)
        kept = load_checkpoint(run / "checkpoints" / "last.pt")
        assert (kept.step, kept.best_step, kept.best) == (stop, summary["best_step"], summary["val_loss_best"])
        assert train(compose(*args, f"budget.stop_at={stop}"), run)["skipped"]  # relaunched: nothing to do
    summary = train(compose(*args), run)
    assert summary["status"] == "completed"
    assert numbers(run) == numbers(tmp_path / "straight")
    assert (summary["best_step"], summary["val_loss_best"]) == (straight["best_step"], straight["val_loss_best"])


def test_a_corpus_changed_under_a_paused_run_stops_it(small_corpus, tmp_path):
    """Same path, same characters, other text: the run would go on on other batches."""
    from ngt.errors import NGTError
    from ngt.runner import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(small_corpus.read_text())
    args = [*TINY, "data=text", f"data.path={corpus}", "budget.max_steps=10", "budget.eval_every=5",
            "budget.checkpoint_every=5", f"data.cache_dir={tmp_path / 'cache'}"]
    assert train(compose(*args, "budget.stop_at=5"), tmp_path / "run")["status"] == "paused"
    corpus.write_text("\n".join(reversed(small_corpus.read_text().splitlines())) + "\n")
    with pytest.raises(NGTError, match="was trained on other text than data=text holds now"):
        train(compose(*args), tmp_path / "run")
