"""Where `python -m ngt.screen` puts runs: sweep and run directories from the command line,
and `continue=RUN_DIR` extending a finished run in place."""

import json
from pathlib import Path

from conftest import TINY, screen
from ngt.naming import sweep_dir_overrides
from ngt.screen import continue_overrides


def added(overrides: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in sweep_dir_overrides(overrides)[len(overrides):])


def test_sweep_dir_named_by_the_command_and_subdirs_by_the_swept_keys():
    extra = added(["sweep=smoke", "seed=1,2", "budget.max_steps=7", "hydra/launcher=submitit_local"])
    assert extra["hydra.sweep.dir"] == "'outputs/sweeps/smoke+budget.max_steps=7,seed=1,2'"
    # Only the fixed keys are dropped from each run's name: what varies names the run.
    assert extra["hydra.sweep.subdir"] == "'${ngt.dirname:${hydra.overrides.task},sweep,budget.max_steps}'"


def test_explicit_dirs_win():
    overrides = ["hydra.sweep.dir=/x", "hydra.sweep.subdir=y", "seed=1"]
    assert sweep_dir_overrides(overrides) == overrides


def test_named_grid_runs_share_one_sweep_dir(tmp_path, small_corpus):
    proc = screen("-m", "sweep=smoke", *TINY, "data=text", f"data.path={small_corpus}", "budget.max_steps=4",
                  cwd=tmp_path, check=True)
    (sweep,) = (tmp_path / "outputs" / "sweeps").iterdir()
    assert sweep.name.startswith("smoke+")
    runs = sorted(p.name for p in sweep.iterdir() if (p / "summary.json").exists())
    assert runs == ["variant=baseline", "variant=ngt_default"]
    assert (sweep / "results.csv").exists() and (sweep / "Summary.md").exists(), proc.stderr


def test_continue_extends_a_finished_run_in_place(tmp_path, small_corpus):
    args = [*TINY, "data=text", f"data.path={small_corpus}", "budget.max_steps=6", "budget.eval_every=3",
            "budget.checkpoint_every=3"]
    screen(*args, cwd=tmp_path, check=True)
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    first = json.loads((run / "summary.json").read_text())
    overrides, continuing = continue_overrides([f"continue={run}", "budget.max_steps=9"], multirun=False)
    assert continuing and overrides[-1] == f"hydra.run.dir='{run.resolve()}'"

    screen(f"continue={run}", "budget.max_steps=9", cwd=tmp_path, check=True)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3, 6, 9]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["final_step"] == 9
    assert summary["schedule_changes"][0]["step"] == 6
    assert summary["schedule_changes"][0]["max_steps_to"] == 9
    assert summary["elapsed_s"] >= first["elapsed_s"]
    assert [p.name for p in (tmp_path / "outputs" / "runs").iterdir()] == [run.name]


def test_continue_takes_a_paused_run_past_its_rung(tmp_path, small_corpus):
    """A run a halving sweep stopped (budget.stop_at) goes on to its budget under continue=."""
    args = [*TINY, "data=text", f"data.path={small_corpus}", "budget.max_steps=6", "budget.eval_every=3",
            "budget.checkpoint_every=6"]
    screen(*args, "budget.stop_at=3", cwd=tmp_path, check=True)
    (run,) = (tmp_path / "outputs" / "runs").iterdir()
    assert json.loads((run / "summary.json").read_text())["status"] == "paused"
    screen(f"continue={run}", cwd=tmp_path, check=True)
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["status"], summary["final_step"], summary["resumed_at_steps"]) == ("completed", 6, [3])


def test_continue_needs_a_run_directory(tmp_path):
    proc = screen(f"continue={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: continue={Path(tmp_path).resolve()}: not a run directory (no .hydra/overrides.yaml)"
