"""The report on damaged input and failing disks: one line naming the file and the cause,
an unreadable run listed as such beside the rest, never a traceback or a wrong number."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import TINY, one_error_line, screen

ARGS = [*TINY, "data=text", "budget.max_steps=40", "budget.eval_every=20", "budget.checkpoint_every=20",
        "train.threads=1"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_corpus) -> Path:
    """A completed 40-step run evaluated at 0, 20 and 40; tests copy it before changing anything."""
    root = tmp_path_factory.mktemp("finished")
    screen(*ARGS, f"data.path={small_corpus}", f"hydra.run.dir={root / 'run'}", cwd=root, check=True)
    return root / "run"


def copy(run: Path, to: Path) -> Path:
    shutil.copytree(run, to, ignore=shutil.ignore_patterns("*.pt", "tb"))
    return to


def report(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ngt.report", *map(str, args)], capture_output=True, text=True,
                          timeout=120)


def rows(sweep: Path) -> dict[str, dict]:
    with open(sweep / "results.csv") as f:
        return {r["run"]: r for r in csv.DictReader(f)}


def written(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0 and "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize("where, cause", [("file/sub", "Not a directory"), ("full", "No space left on device")])
def test_a_report_that_cannot_be_written_says_where_in_one_line(finished, tmp_path, where, cause):
    (tmp_path / "file").write_text("not a directory")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "results.csv").symlink_to("/dev/full")  # a full disk
    proc = report(finished, "--out", tmp_path / where)
    line = one_error_line(proc)
    assert proc.returncode == 1 and line.startswith(f"error: {cause}: "), line
    assert line.endswith("sub" if where == "file/sub" else "results.csv"), line


def test_runs_without_a_readable_config_are_reported(finished, tmp_path):
    sweep = tmp_path / "sweep"
    (sweep / "metrics_only").mkdir(parents=True)
    shutil.copy(finished / "metrics.jsonl", sweep / "metrics_only")
    damaged = copy(finished, sweep / "both_damaged")
    (damaged / "summary.json").write_text('{"status": "compl')
    (damaged / ".hydra" / "config.yaml").write_text("- [unclosed\n")
    partial = copy(finished, sweep / "partial_config")  # a summary whose config lost all but the variant
    summary = json.loads((partial / "summary.json").read_text())
    (partial / "summary.json").write_text(json.dumps({**summary, "config": {"variant": {"name": "ngt_default"}}}))
    written(report(sweep))
    got = rows(sweep)
    assert got["metrics_only"]["final_step"] == "40" and got["metrics_only"]["lr"] == ""
    assert got["both_damaged"]["status"] == "unreadable" and got["partial_config"]["status"] == "completed"
    assert "summary.json is damaged" in got["both_damaged"]["message"]


@pytest.mark.parametrize("name", ["summary.json", "metrics.jsonl"])
def test_a_directory_in_place_of_a_record_makes_its_run_unreadable(finished, tmp_path, name):
    sweep = tmp_path / "sweep"
    copy(finished, sweep / "good")
    bad = copy(finished, sweep / "bad")
    (bad / name).unlink()
    (bad / name).mkdir()
    written(report(sweep))
    got = rows(sweep)
    assert got["good"]["status"] == "completed"
    assert got["bad"]["status"] == "unreadable" and got["bad"]["message"].startswith("Is a directory: ")
    assert got["bad"]["message"].endswith(f"bad/{name}")


def test_metrics_cut_short_of_a_completed_run_are_not_its_final_numbers(finished, tmp_path):
    sweep = tmp_path / "sweep"
    for name in ("cut", "running"):
        run = copy(finished, sweep / name)
        lines = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
        (run / "metrics.jsonl").write_text("".join(lines[:2]))  # steps 0 and 20 of 0, 20, 40
    # A running summary may stand at a step whose row is still to come: no damage there.
    summary = json.loads((sweep / "running" / "summary.json").read_text())
    (sweep / "running" / "summary.json").write_text(json.dumps({**summary, "status": "running"}))
    written(report(sweep))
    got = rows(sweep)
    assert got["cut"]["status"] == "unreadable" and got["cut"]["val_loss_final"] == ""
    assert got["cut"]["message"].endswith(
        "cut/metrics.jsonl ends at step 20 but summary.json says the run completed at step 40")
    assert got["running"]["status"] == "running" and got["running"]["last_eval_step"] == "20"


def test_runs_below_a_run_are_found(finished, tmp_path):
    sweep = copy(finished, tmp_path / "sweep")  # one run trained into the sweep directory itself
    for name in ("variant=a", "variant=b"):
        copy(finished, sweep / name)
    proc = report(sweep)
    written(proc)
    assert proc.stdout.startswith("3 runs")
    assert sorted(rows(sweep)) == [".", "variant=a", "variant=b"]


def test_a_damaged_halving_record_is_said_so(finished, tmp_path):
    sweep = tmp_path / "sweep"
    copy(finished, sweep / "r1")
    (sweep / "halving.json").write_text('{"eta": 3, "rungs": [{"st')
    proc = report(sweep)
    written(proc)
    note = f"{sweep / 'halving.json'} is damaged ("
    assert note in proc.stderr and "halving decisions are not shown" in proc.stderr
    summary = (sweep / "Summary.md").read_text()
    assert "## Successive halving" in summary and note in summary


def test_the_grids_report_on_a_full_disk_fails_the_command_in_one_line(tmp_path, small_corpus):
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    for name in ("results.csv", "report-traceback.txt"):
        (sweep / name).symlink_to("/dev/full")
    grid = ["-m", *ARGS, f"data.path={small_corpus}", "budget.max_steps=10", "budget.eval_every=5",
            "budget.checkpoint_every=5", "variant=baseline,bare", f"hydra.sweep.dir={sweep}"]
    proc = screen(*grid, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1 and "Traceback" not in out and "Callback" not in out, out[-3000:]
    failed = [ln for ln in out.splitlines() if "the report could not be written" in ln]
    assert len(failed) == 1 and f"No space left on device: {sweep / 'results.csv'}" in failed[0], out[-3000:]
    for name in ("results.csv", "report-traceback.txt"):
        (sweep / name).unlink()
    (sweep / "report-traceback.txt").write_text("an earlier failure's")
    screen(*grid, cwd=tmp_path, check=True)  # the runs are skipped, the report written
    assert (sweep / "results.csv").exists() and not (sweep / "report-traceback.txt").exists()


def test_a_report_bug_whose_traceback_cannot_be_saved_still_fails_the_command(tmp_path, monkeypatch, caplog):
    from ngt.report import write
    from ngt.report.callback import TRACEBACK, ReportCallback

    def bug(*args, **kwargs):
        raise RuntimeError("a bug in the report")

    monkeypatch.setattr(write, "write_report", bug)
    (tmp_path / TRACEBACK).symlink_to("/dev/full")
    with pytest.raises(SystemExit) as ended:
        ReportCallback().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    assert ended.value.code == 1
    assert "RuntimeError: a bug in the report (its traceback could not be saved: No space left on device" \
        in caplog.text


def test_one_setting_spelled_two_ways_is_one_group(finished, tmp_path):
    """A grid records train.full_val=False where a single run's command said false: the
    runs trained alike, so they are compared together, not split into two groups."""
    sweep = tmp_path / "sweep"
    for name, spelled in (("a", "False"), ("b", "false")):
        run = copy(finished, sweep / name)
        (run / ".hydra" / "overrides.yaml").write_text(f"- train.full_val={spelled}\n- train.lr=1e-3\n")
    written(report(sweep))
    names = [r["name"] for r in rows(sweep).values()]
    assert len(names) == 2 and not any("[" in n for n in names), names  # no group label: one group
