"""A two-run sweep through a real Slurm cluster, one run preempted, one requeued mid-run;
and a data-parallel run over a job's two tasks, preempted and requeued.

The cluster is the project's own (scripts/local_slurm.sh): started here when it is not
up, and stopped again afterwards. Every run must finish with the very numbers of the
same run trained uninterrupted on this machine.
"""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, TINY, numbers
from test_ddp import ddp_args, torchrun
from test_halving import SMALL, decisions, sweep_args

SCRIPT = REPO / "scripts" / "local_slurm.sh"
NOT_INSTALLABLE = 4  # the script's exit status when Slurm's packages cannot be installed


def cluster(action: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def slurm_env():
    """The environment sbatch and submitit need: the local cluster's SLURM_CONF."""
    was_up = cluster("status", 60).returncode == 0
    if not was_up:
        started = cluster("start", 900)  # a fresh machine installs the packages first (about a minute)
        if started.returncode == NOT_INSTALLABLE:
            pytest.skip(f"Slurm's packages cannot be installed here: {started.stderr.strip().splitlines()[-1]}")
        assert started.returncode == 0, started.stderr
    base = Path(os.environ.get("NGT_SLURM_BASE", "/tmp/ngt-slurm"))
    exports = dict(line.removeprefix("export ").split("=", 1) for line in (base / "env.sh").read_text().splitlines())
    yield {**os.environ, **exports}
    if not was_up:
        cluster("stop", 120)


def sweep_cmd(small_corpus: Path, where: Path, *extra: str) -> list[str]:
    # One CPU thread and the CPU device in both sweeps: the same arithmetic in every process.
    return [sys.executable, "-m", "ngt.screen", "-m", *TINY, "data=text", f"data.path={small_corpus}",
            "variant=baseline,ngt_default", "budget.max_steps=60", "budget.eval_every=5", "budget.checkpoint_every=5",
            "train.threads=1", "train.device=cpu", f"hydra.sweep.dir={where}", *extra]


def evaluations(run: Path) -> int:
    path = run / "metrics.jsonl"
    return path.read_text().count("\n") if path.exists() else 0


def test_preempted_and_requeued_runs_resume_to_the_same_numbers(slurm_env, small_corpus, tmp_path):
    ref_dir, slurm_dir, log = tmp_path / "ref", tmp_path / "slurm", tmp_path / "sweep.log"
    # The node has 2 CPUs: one per job, so that both runs are on it at once.
    launcher = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.mem_gb=1"]
    with log.open("w") as out:
        sweep = subprocess.Popen(sweep_cmd(small_corpus, slurm_dir, *launcher), cwd=tmp_path, env=slurm_env,
                                 stdout=out, stderr=subprocess.STDOUT)
    reference = subprocess.Popen(sweep_cmd(small_corpus, ref_dir), cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        # Job 0 (baseline) gets what Slurm sends before a time limit or a preemption, and
        # submitit requeues it; job 1 (ngt_default) is requeued by Slurm, which sends SIGTERM.
        signals = {"baseline": ["scancel", "--signal=USR2"], "ngt_default": ["scontrol", "requeue"]}
        jobs = {"baseline": 0, "ngt_default": 1}
        deadline = time.time() + 300
        while signals and time.time() < deadline and sweep.poll() is None:
            for variant in list(signals):
                job = next(slurm_dir.glob(f".submitit/*_{jobs[variant]}"), None)
                if job and evaluations(slurm_dir / f"variant={variant}") >= 3:  # two checkpoints, far from the end
                    subprocess.run([*signals.pop(variant), job.name], env=slurm_env, check=True)
            time.sleep(0.05)
        assert not signals, f"no progress to interrupt in time:\n{log.read_text()[-3000:]}"
        assert sweep.wait(timeout=600) == 0, log.read_text()[-3000:]
        assert reference.wait(timeout=600) == 0
    finally:  # a failed test leaves no sweep behind, nor its jobs (submitit does not cancel them)
        if sweep.poll() is None:
            for job in slurm_dir.glob(".submitit/*_*"):
                subprocess.run(["scancel", job.name], env=slurm_env)
        for proc in (sweep, reference):
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)

    for variant, sent in (("baseline", "SIGUSR2"), ("ngt_default", "SIGTERM")):
        run = slurm_dir / f"variant={variant}"
        summary = json.loads((run / "summary.json").read_text())
        assert summary["status"] == "completed" and 0 < summary["resumed_at_steps"][0] < 60, summary
        assert f"after {sent}" in (run / "run.log").read_text()
        assert numbers(run) == numbers(ref_dir / run.name), variant


def test_a_data_parallel_job_preempted_and_requeued_resumes_to_the_same_numbers(slurm_env, small_corpus, tmp_path):
    # Long enough (about 2 s of steps) for the signal to land mid-run.
    args = [*ddp_args(small_corpus), "variant=ngt_default", "budget.max_steps=100", "budget.eval_every=10",
            "budget.checkpoint_every=10"]
    slurm_dir, log, run = tmp_path / "slurm", tmp_path / "sweep.log", None
    # One job, two tasks (one per CPU of the node), each one process of the run.
    launcher = ["hydra/launcher=slurm_ddp", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.mem_gb=2", f"hydra.sweep.dir={slurm_dir}"]
    with log.open("w") as out:
        sweep = subprocess.Popen([sys.executable, "-m", "ngt.screen", "-m", *args, *launcher], cwd=tmp_path,
                                 env=slurm_env, stdout=out, stderr=subprocess.STDOUT)
    reference = None
    try:
        deadline = time.time() + 300
        while time.time() < deadline and sweep.poll() is None and reference is None:
            run = next(slurm_dir.glob("*/metrics.jsonl"), None)
            if run is not None and evaluations(run.parent) >= 3:
                job = next(p for p in slurm_dir.glob(".submitit/*") if p.is_dir())  # one job: no array
                # To both tasks. Unchecked: scancel may report that the job it signalled is already
                # being requeued (rank 0's answer to the signal); the run's log says whether it landed.
                subprocess.run(["scancel", "--signal=USR2", job.name], env=slurm_env)
                # While the job waits to be started again.
                reference = subprocess.Popen(torchrun(*args, f"hydra.run.dir={tmp_path / 'ref'}"), cwd=tmp_path,
                                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.05)
        assert reference is not None, f"no progress to interrupt in time:\n{log.read_text()[-3000:]}"
        assert sweep.wait(timeout=600) == 0, log.read_text()[-3000:]
        assert reference.wait(timeout=600) == 0
    finally:
        if sweep.poll() is None:
            for job in slurm_dir.glob(".submitit/*"):
                if job.is_dir():
                    subprocess.run(["scancel", job.name], env=slurm_env)
        for proc in (sweep, reference):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=60)
    run = run.parent
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2, summary
    assert 0 < summary["resumed_at_steps"][0] < 100 and "after SIGUSR2" in (run / "run.log").read_text()
    assert numbers(run) == numbers(tmp_path / "ref")


def test_a_halving_sweep_on_slurm_takes_the_decisions_of_one_run_here(slurm_env, small_corpus, tmp_path):
    """hydra/sweeper=halving with the Slurm launcher: every rung a job array, the same
    decisions and numbers as the same sweep run here one run after another."""
    here, slurm = tmp_path / "here", tmp_path / "slurm"
    launcher = ["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=null", "hydra.launcher.cpus_per_task=1",
                "hydra.launcher.mem_gb=1", "train.device=cpu"]
    reference = subprocess.Popen([sys.executable, "-m", "ngt.screen", *sweep_args(small_corpus, here, **SMALL),
                                  "train.device=cpu"], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                 stderr=subprocess.DEVNULL)
    try:
        command = [sys.executable, "-m", "ngt.screen", *sweep_args(small_corpus, slurm, **SMALL), *launcher]
        done = subprocess.run(command, cwd=tmp_path, env=slurm_env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        assert reference.wait(timeout=600) == 0
    finally:
        if reference.poll() is None:
            reference.terminate()
            reference.wait(timeout=60)
    assert len(list(slurm.glob(".submitit/*"))) > 0  # the runs went through Slurm
    assert decisions(slurm) == decisions(here)
    for run in here.glob("seed=*"):
        assert numbers(slurm / run.name) == numbers(run)
