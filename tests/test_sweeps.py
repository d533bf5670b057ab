"""Re-launching a sweep: completed runs are skipped, interrupted ones resume to the same numbers.

Every sweep here is the same two-run grid (Hydra's basic launcher, one process), so each
relaunch is compared number for number with one uninterrupted sweep.
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, numbers, screen

VARIANTS = ("baseline", "ngt_default")


@pytest.fixture(scope="module")
def grid(small_corpus) -> list[str]:
    # One CPU thread: the same arithmetic in every process, whatever the machine's load.
    return ["-m", *TINY, "data=text", f"data.path={small_corpus}", f"variant={','.join(VARIANTS)}",
            "budget.max_steps=40", "budget.eval_every=5", "budget.checkpoint_every=5", "train.threads=1"]


@pytest.fixture(scope="module")
def reference(grid, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    screen(*grid, f"hydra.sweep.dir={out}", cwd=out, check=True)
    return out


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def interrupt(grid: list[str], where: Path, variant: str, sig: signal.Signals) -> None:
    """Start the sweep, and send ``sig`` once ``variant``'s run has evaluated three times."""
    # SIGINT as in a terminal, even where this test runs with it ignored (a background job)
    proc = subprocess.Popen([sys.executable, "-m", "ngt.screen", *grid, f"hydra.sweep.dir={where}"], cwd=where.parent,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    progress = where / f"variant={variant}" / "metrics.jsonl"
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:
        if progress.exists() and progress.read_text().count("\n") >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -sig, "the sweep ended before it could be interrupted"
    assert "Traceback" not in err.decode(), err.decode()[-2000:]


def relaunch_and_compare(grid: list[str], where: Path, reference: Path) -> str:
    proc = screen(*grid, f"hydra.sweep.dir={where}", cwd=where.parent, check=True)
    for variant in VARIANTS:
        run = where / f"variant={variant}"
        assert summary(run)["status"] == "completed", run
        assert numbers(run) == numbers(reference / run.name), run
    return proc.stdout + proc.stderr


def test_the_same_sweep_twice_skips_every_run(grid, reference):
    before = {v: ((reference / f"variant={v}" / "metrics.jsonl").read_text(), summary(reference / f"variant={v}"))
              for v in VARIANTS}
    t0 = time.time()
    output = relaunch_and_compare(grid, reference, reference)
    assert time.time() - t0 < 30
    assert output.count("(skipped)") == len(VARIANTS), output
    for v, (rows, s) in before.items():
        assert ((reference / f"variant={v}" / "metrics.jsonl").read_text(), summary(reference / f"variant={v}")) == (rows, s)


# Ctrl-C here; SIGTERM (Slurm's requeue and plain scancel) in test_slurm.py, on a real cluster.
@pytest.mark.parametrize("sig", [signal.SIGINT], ids=lambda s: s.name)
def test_a_sweep_stopped_in_its_second_run_resumes_it_and_skips_the_first(grid, reference, tmp_path, sig):
    where = tmp_path / "sweep"
    interrupt(grid, where, "ngt_default", sig)
    # SIGTERM and Ctrl-C wait for the step to end, save it, then end the process as signalled.
    stopped = summary(where / "variant=ngt_default")
    assert stopped["status"] == "interrupted" and sig.name in stopped["message"]
    output = relaunch_and_compare(grid, where, reference)
    assert output.count("(skipped)") == 1
    assert summary(where / "variant=ngt_default")["resumed_at_steps"] == [stopped["final_step"]]


def test_a_sweep_killed_in_its_first_run_resumes_it_and_runs_the_second(grid, reference, tmp_path):
    where = tmp_path / "sweep"
    interrupt(grid, where, "baseline", signal.SIGKILL)
    assert summary(where / "variant=baseline")["status"] == "running"
    assert not (where / "variant=ngt_default").exists()
    relaunch_and_compare(grid, where, reference)
    assert summary(where / "variant=baseline")["resumed_at_steps"]
    assert summary(where / "variant=ngt_default")["resumed_at_steps"] == []


def test_two_runs_at_once_give_the_numbers_of_one_after_the_other(grid, reference, tmp_path):
    """hydra/launcher=local trains a grid's runs as parallel processes on one device (several
    runs per GPU, issue 16): each run's numbers are those of the grid trained run by run."""
    where = tmp_path / "sweep"
    screen(*grid, "hydra/launcher=local", f"hydra.sweep.dir={where}", cwd=tmp_path, check=True)
    for variant in VARIANTS:
        assert numbers(where / f"variant={variant}") == numbers(reference / f"variant={variant}")
