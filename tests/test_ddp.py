"""Data-parallel runs on the CPU (gloo), launched as users launch them, by torchrun: two
processes train the numbers of one process with the same global batch, rank 0 alone
writes the run directory, and a run whose rank was killed resumes to the same numbers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, numbers, wait_for_rows


def ddp_args(corpus: Path) -> list[str]:
    # Dropout off: the processes draw different masks. One CPU thread each, and the reference
    # attention (nothing to compile): the same arithmetic in every process, and quick.
    return [*TINY, "data=text", f"data.path={corpus}", "model.dropout=0", "model.attn_impl=reference",
            "train.grad_accum=2", "train.threads=1", "train.device=cpu", "budget.eval_every=5",
            "budget.checkpoint_every=5"]


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ngt.screen",
            *args]


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory, small_corpus):
    """The same run trained by one process and by two."""
    out = tmp_path_factory.mktemp("ddp")
    args = ddp_args(small_corpus)
    subprocess.run([sys.executable, "-m", "ngt.screen", *args, f"hydra.run.dir={out / 'one'}"], cwd=out,
                   check=True, capture_output=True)
    done = subprocess.run(torchrun(*args, f"hydra.run.dir={out / 'two'}"), cwd=out, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return args, out / "one", out / "two"


def test_two_processes_train_the_numbers_of_one(one_and_two):
    _, one, two = one_and_two
    rows1, rows2 = numbers(one), numbers(two)
    assert [r["step"] for r in rows2] == [0, 5, 10, 15, 20]
    for r1, r2 in zip(rows1, rows2):
        for key in ("train/loss", "val/loss", "repulsion/loss", "grad_norm"):
            if r1[key] is not None:
                assert r2[key] == pytest.approx(r1[key], rel=1e-5), (r1["step"], key)
    assert rows2[0] == rows1[0]  # evaluation shared out over the processes: the same numbers to the bit
    params1, params2 = (torch.load(run / "checkpoints" / "last.pt", weights_only=True)["model"] for run in (one, two))
    for name, p in params1.items():
        torch.testing.assert_close(params2[name], p, rtol=1e-5, atol=1e-6)
    summary = json.loads((two / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2


def test_rank_0_alone_writes_the_run_directory(one_and_two):
    _, one, two = one_and_two

    def listing(run: Path) -> list[tuple[str, int]]:  # TensorBoard names its files after the pid: count them
        return sorted((os.path.relpath(d, run), len(files)) for d, _, files in os.walk(run))

    assert listing(two) == listing(one)
    assert len({p.name.rsplit(".", 2)[-2] for p in (two / "tb").glob("events.*")}) == 1  # one writer's pid
    log = (two / "run.log").read_text()
    assert log.count("] - run ") == 1 and "x 2 processes" in log and log.count("step 20/20 train_loss") == 1


def test_killed_rank_fails_the_run_in_one_line_and_a_relaunch_resumes_it(one_and_two, tmp_path):
    args, _, two = one_and_two
    run = tmp_path / "run"
    cmd = torchrun(*args, f"hydra.run.dir={run}")
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rows(run / "metrics.jsonl", 2, proc)  # step 5, and its checkpoint
        rank1 = next(p for p in _children(proc.pid) if b"RANK=1\0" in Path(f"/proc/{p}/environ").read_bytes())
        os.kill(rank1, signal.SIGSTOP)  # rank 0 waits for it at the next step: the run is mid-way, surely
        time.sleep(0.3)
        assert len(numbers(run)) < 5
        os.kill(rank1, signal.SIGKILL)
        assert proc.wait(timeout=120) != 0
    finally:
        if proc.poll() is None:
            proc.kill()
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "failed" and "another process of this data-parallel run failed" in summary["message"]
    assert "\n" not in summary["message"]
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and 0 < summary["resumed_at_steps"][0] < 20
    assert numbers(run) == numbers(two)


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_micro_batches_that_do_not_split_evenly_are_a_one_line_error(monkeypatch, tmp_path):
    from ngt.errors import NGTError
    from ngt.runner import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(NGTError, match=r"^train.grad_accum=3 micro-batches cannot be split evenly over 2 processes "
                                       r"\(WORLD_SIZE=2\)"):
        train(compose(*TINY, "train.grad_accum=3"), tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_grid_that_cannot_split_is_refused_before_any_directory_or_job(tmp_path):
    """The slurm_ddp launcher's tasks are checked against every job when the command is
    composed: nothing is written, nothing submitted."""
    proc = subprocess.run([sys.executable, "-m", "ngt.screen", "-m", "sweep=w3_25m", "hydra/launcher=slurm_ddp",
                           "hydra.launcher.tasks_per_node=4"], cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: train.grad_accum=2 micro-batches cannot be split evenly over 4 processes "
                                   "(hydra.launcher.tasks_per_node=4 x nodes=1): make train.grad_accum a multiple "
                                   "of it")
    assert list(tmp_path.iterdir()) == []


def test_each_process_trains_its_share_and_rank_0_the_last():
    from ngt.runtime import Processes

    assert Processes().micro_batches(3) == range(3)
    assert [list(Processes(r, 2).micro_batches(4)) for r in (0, 1)] == [[2, 3], [0, 1]]
    assert [list(Processes(r, 3).micro_batches(3)) for r in (0, 1, 2)] == [[2], [0], [1]]


def test_processes_agree_on_one_stop():
    from ngt.signals import StopRequest

    stop = StopRequest()
    stop.agree([0.0, 0.0, 0.0])
    assert stop.agreed is None
    stop.signum = signal.SIGTERM
    assert stop.votes() == [1.0, 0.0, 0.0]
    stop.agree([1.0, 1.0, 0.0])  # one process was sent SIGTERM, another SIGUSR2: submitit requeues on USR2
    assert stop.agreed == signal.SIGUSR2 and stop.signal_name == "SIGUSR2"
