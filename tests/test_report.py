"""The report stage on a sweep directory made of real tiny runs: completed runs with two
seeds, a run that diverged, a run that failed before training, a run killed mid-way, and
a run directory with nothing in it yet. Numbers are checked against metrics.jsonl."""

import contextlib
import html
import io
import math
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import conftest
from ngt.report.__main__ import main as report_main
from ngt.report.coords import ValidationSamples, pca3, run_coords
from ngt.rundir import RunDir

# The suite's tiny model (two layers, so diagnostics are per layer) with the full validation pass
# that results.csv reports, the block size left to each sweep, and the reference attention,
# because compiling the CPU backend would take longer than these runs. One thread: two runs go
# at once on two cores, and a model this small gains nothing from a second thread.
TINY = [o for o in conftest.TINY if not o.startswith(("train.block_size=", "train.full_val="))] + [
    "model.attn_impl=reference", "data=text", "train.threads=1"]
_BUILT: dict = {}


def _python(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def _in_process_cli(*args: str) -> dict:
    """``python -m ngt.report ARGS`` in this process (a new process would spend seconds on imports)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = report_main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code
    return {"returncode": code, "stdout": out.getvalue(), "stderr": err.getvalue()}


def build_sweep(tmp_path_factory, corpus: Path) -> dict:
    """The sweep directory, made once per session (test_pages.py uses it too)."""
    if _BUILT:
        return _BUILT
    root = tmp_path_factory.mktemp("report")
    sweep = root / "sweep"
    common = [*TINY, f"data.path={corpus}", f"hydra.sweep.dir={sweep}"]
    # Without its report: the failing sweep below writes it, over the same directory.
    grid = subprocess.Popen(
        [sys.executable, "-m", "ngt.screen", "-m", "variant=baseline,ngt_default,mass_in_value", "seed=1,2",
         "train.block_size=32", "~hydra.callbacks.report", *common],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Beside the grid, on the other core: a run killed mid-way (SIGKILL: no chance to record
    # anything) once it evaluated step 20.
    partial = sweep / "partial"
    killed = subprocess.Popen(
        [sys.executable, "-m", "ngt.screen", *TINY, f"data.path={corpus}", "variant=no_radius", "train.block_size=32",
         "budget.max_steps=100000", f"hydra.run.dir={partial}"],
        cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        conftest.wait_for_rows(partial / "metrics.jsonl", 3, killed)
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    stdout, stderr = grid.communicate(timeout=300)
    grid = subprocess.CompletedProcess(grid.args, grid.returncode, stdout, stderr)
    assert grid.returncode == 0, stderr[-3000:]

    # One more job of the grid, variant=no_repulsion seed=1, whose directory Hydra made but
    # whose trainer never started: nothing recorded but the config Hydra would have saved.
    like = next(h for h in sweep.glob("*/.hydra")
                if "- variant=ngt_default\n- seed=1\n" in (h / "overrides.yaml").read_text())
    started = sweep / "started"
    (started / ".hydra").mkdir(parents=True)
    overrides = (like / "overrides.yaml").read_text().replace("variant=ngt_default", "variant=no_repulsion")
    config = yaml.safe_load((like / "config.yaml").read_text())
    config["variant"].update(name="no_repulsion", repulsion_interval=0)
    (started / ".hydra" / "overrides.yaml").write_text(overrides)
    (started / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    # lr=1e30 diverges (a NaN loss after step 0); batch 4096 is more than the data holds (fails before training).
    failing = _python("-m", "ngt.screen", "-m", "variant=no_repulsion", "train.lr=1e30", *common, "train.block_size=32",
                      "train.batch_size=4,4096", cwd=root)
    # The CLI on the same runs, into another directory, after the callback's report.
    cli = _in_process_cli(str(sweep), "--out", str(root / "cli"))
    _BUILT.update(root=root, corpus=corpus, sweep=sweep, grid=grid, failing=failing, cli=cli, partial=partial, started=started)
    return _BUILT


@pytest.fixture(scope="session")
def built(tmp_path_factory, small_corpus):
    return build_sweep(tmp_path_factory, small_corpus)


def runs_by_dir(sweep: Path) -> dict[str, dict]:
    """Each run directory's own record, read through the run directory contract (not through ngt.report)."""
    out = {}
    for d in sorted(p for p in sweep.iterdir() if (p / ".hydra").is_dir()):
        rd = RunDir(d)
        out[d.name] = {"metrics": rd.read_metrics(), "summary": rd.read_summary(),
                       "overrides": (d / ".hydra" / "overrides.yaml").read_text()}
    return out


@pytest.fixture(scope="session")
def results(built) -> pd.DataFrame:
    return pd.read_csv(built["sweep"] / "results.csv").set_index("run")


def section(md: str, heading: str) -> str:
    start = md.index(heading)
    nxt = md.find("\n## ", start + 1)
    return md[start:nxt if nxt > 0 else None]


def table_rows(text: str) -> list[list[str]]:
    """A markdown table's cells, as a renderer reads them: a pipe escaped as \\| is text, not a border."""
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip()[1:-1])]
            for line in text.splitlines() if line.startswith("| ") and not line.startswith("|---")]
    return rows[1:]  # without the header


def test_multirun_writes_report_even_when_runs_fail(built):
    assert built["grid"].returncode == 0, built["grid"].stderr[-3000:]
    failing = built["failing"]
    assert failing.returncode == 1, failing.stderr[-3000:]
    log = failing.stdout + failing.stderr
    assert "2 of " in log and "runs failed" in log and "loss is nan" in log
    sweep = built["sweep"]
    for name in ("results.csv", "Summary.md", "report.md", "index.html", "plots/losses.html", "plots/plotly.min.js"):
        assert (sweep / name).exists(), name


def test_every_run_directory_is_a_row_with_its_status(built, results):
    records = runs_by_dir(built["sweep"])
    assert sorted(results.index) == sorted(records)
    statuses = results["status"].to_dict()
    assert statuses["partial"] == "running" and statuses["started"] == "started"
    assert sorted(statuses.values()).count("completed") == 6 and list(statuses.values()).count("failed") == 2
    for name, rec in records.items():
        if rec["summary"]:
            assert statuses[name] == rec["summary"].status
    diverged = [n for n, r in records.items() if r["summary"] and "nan" in (r["summary"].message or "")]
    assert len(diverged) == 1 and "loss is nan" in results.at[diverged[0], "message"]


def test_results_csv_numbers_come_from_metrics(results, built):
    for name, rec in runs_by_dir(built["sweep"]).items():
        row, rows, s = results.loc[name], rec["metrics"], rec["summary"].to_dict() if rec["summary"] else {}
        if not rows:
            assert pd.isna(row["val_loss_final"]) and pd.isna(row["last_eval_step"])
            continue
        last = rows[-1]
        best = min(rows, key=lambda r: r["val/loss"])
        assert row["last_eval_step"] == last["step"]
        assert row["final_step"] == max(last["step"], s.get("final_step") or 0)
        assert row["val_loss_final"] == pytest.approx(last["val/loss"], rel=1e-12)
        assert row["ppl_final"] == pytest.approx(math.exp(last["val/loss"]), rel=1e-9)
        assert row["train_loss_final"] == pytest.approx(last["train/loss"], rel=1e-12)
        assert row["val_loss_best"] == pytest.approx(best["val/loss"], rel=1e-12)
        assert row["best_step"] == best["step"]
        if "compiled" in s:  # killed runs leave a summary only at their end
            assert row["compiled"] == s["compiled"] == False  # noqa: E712 (numpy's bool): CPU trains eagerly
        evaluated = [r["step"] for r in rows]
        after0 = [x for x in evaluated if x > 0]
        if after0 and after0[0] < evaluated[-1]:
            a, b = after0[0], evaluated[-1]
            t = {r["step"]: r["elapsed_s"] for r in rows}
            assert row["throughput_window"] == f"{a}-{b}"
            assert row["steps_per_s"] == pytest.approx((b - a) / (t[b] - t[a]), rel=1e-9)
            assert row["tokens_per_s"] == pytest.approx(row["steps_per_s"] * s["tokens_per_step"], rel=1e-9)
        else:
            assert pd.isna(row["steps_per_s"])
        if s.get("status") == "completed":
            assert row["val_loss_full"] == pytest.approx(s["val_loss_full"], rel=1e-12)
            assert row["params"] == s["params"] and row["max_steps"] == s["max_steps"]
            assert row["peak_memory_mb"] == pytest.approx(s["peak_memory_mb"])
        if "seed=" in rec["overrides"]:
            assert f"seed={row['seed']}" in rec["overrides"]
    # the swept overrides are columns
    assert {"budget", "train.lr", "train.block_size"} <= set(results.columns)


def _val_at(rec: dict, step: int) -> float | None:
    return next((r["val/loss"] for r in rec["metrics"] if r["step"] == step), None)


def test_summary_fixed_step_against_metrics(built, results):
    md = (built["sweep"] / "Summary.md").read_text()
    sec = section(md, "## 1. Fixed-step comparison").split("\n### ")[0]  # the table at the step
    step = int(re.search(r"at step \*\*(\d+)\*\*", sec).group(1))
    assert step == 20  # the smoke budget's last evaluation, reached by every completed run
    records = runs_by_dir(built["sweep"])
    shown = {r[0]: r for r in table_rows(sec)}
    name_of = results["name"].to_dict()
    base_group = results.loc[results["variant"] == "baseline"]
    base_mean = np.mean([_val_at(records[n], step) for n in base_group.index])
    for run, rec in records.items():
        v = _val_at(rec, step)
        if v is None:  # not reached: listed, not dropped
            assert f"- {name_of[run]}: {results.at[run, 'status']}" in sec
            continue
        row = shown[name_of[run]]
        assert row[1] == f"{v:.4f}" and row[2] == f"{math.exp(v):.2f}"
        if run != "partial":  # its own group (other budget): no baseline there
            assert row[3] == f"{v - base_mean:+.4f}"
        else:
            assert row[3] == "n/a"


def test_summary_best_vs_last_and_throughput(built, results):
    md = (built["sweep"] / "Summary.md").read_text()
    records = runs_by_dir(built["sweep"])
    name_of = results["name"].to_dict()
    best = {r[0]: r for r in table_rows(section(md, "## 2. Best vs last"))}
    for run, rec in records.items():
        if rec["metrics"]:
            b = min(rec["metrics"], key=lambda r: r["val/loss"])
            assert best[name_of[run]][1:3] == [f"{b['val/loss']:.4f}", str(b["step"])]
    sec = section(md, "## 3. Throughput")
    assert "Over steps **10 → 20**" in sec
    shown = {r[0]: r for r in table_rows(sec)}
    base = []
    for run, rec in records.items():
        t = {r["step"]: r["elapsed_s"] for r in rec["metrics"]}
        if 10 in t and 20 in t and name_of[run] in shown:
            sps = 10 / (t[20] - t[10])
            assert shown[name_of[run]][1] == f"{sps:.3f}"
            if results.at[run, "variant"] == "baseline":
                base.append(sps)
    ngt = results.index[(results["variant"] == "ngt_default") & (results["status"] == "completed")][0]
    t = {r["step"]: r["elapsed_s"] for r in records[ngt]["metrics"]}
    assert shown[name_of[ngt]][3] == f"{10 / (t[20] - t[10]) / np.mean(base):.2f}x"


def test_summary_seed_statistics(built, results):
    md = (built["sweep"] / "Summary.md").read_text()
    sec = section(md, "## 5. Seeds")
    records = runs_by_dir(built["sweep"])
    completed = results[results["status"] == "completed"]
    vals = {v: {results.at[r, "seed"]: _val_at(records[r], 20) for r in completed.index[completed["variant"] == v]}
            for v in ("baseline", "ngt_default", "mass_in_value")}
    rows = table_rows(sec)
    spread = {r[0]: r for r in rows if len(r) == 4}
    for variant, by_seed in vals.items():
        x = np.array(list(by_seed.values()))
        assert spread[f"{variant} [train.batch_size=4]"][1:] == ["2", f"{x.mean():.4f}", f"{x.std(ddof=1):.4f}"]
    paired = {r[0]: r for r in rows if len(r) == 8}
    for variant in ("ngt_default", "mass_in_value"):
        # seeds 1 and 2 of each pair with the baseline's: t(0.975, df=1) = 12.7062 on the two differences
        d = np.array([vals[variant][s] - vals["baseline"][s] for s in (1, 2)])
        half = 12.7062 * d.std(ddof=1) / math.sqrt(2)
        r = paired[f"{variant} [train.batch_size=4]"]
        assert r[1:5] == ["2", "paired", f"{d.mean():+.4f}", f"[{d.mean() - half:+.4f}, {d.mean() + half:+.4f}]"]
        assert r[7] == ("beyond noise" if abs(d.mean()) > half else "indistinguishable")
    assert "[budget.max_steps=100000,train.batch_size=4] | 1 |" in sec  # the partial run: one seed in its own group


def test_summary_idle_parameters_and_commands(built, results):
    md = (built["sweep"] / "Summary.md").read_text()
    rows = table_rows(section(md, "## 6. Idle parameters"))
    by_run: dict[str, set] = {}
    for r in rows:
        by_run.setdefault(r[0], set()).add(r[1])
    records = runs_by_dir(built["sweep"])
    for run, r in results.iterrows():
        params = by_run.get(r["name"], set())
        if r["variant"] == "baseline":
            assert not params
        elif r["variant"] == "mass_in_value":
            assert params == {"radius r", "beta"}
        elif r["variant"] in ("ngt_default", "no_radius", "no_repulsion") and records[run]["metrics"]:
            assert params == {"radius r"}
    radius_row = next(r for r in rows if r[1] == "radius r" and r[0].startswith("ngt_default"))
    assert "r unchanged at every evaluation" in radius_row[3] and "in all 2 layers" in radius_row[3]
    rec = records[results.index[results["name"] == radius_row[0]][0]]
    assert f"{rec['metrics'][-1]['ngt/L1/radius']:.4f}" in radius_row[3]
    beta_row = next(r for r in rows if r[1] == "beta")
    drift = max(abs(m[f"ngt/L{i}/beta_mean"]) for run in results.index[results["name"] == beta_row[0]]
                for m in records[run]["metrics"] for i in range(2))
    assert f"at most {drift:.1e}" in beta_row[3]

    cmds = section(md, "## 7. Reproduce")
    # The sweep last launched into the directory, as typed: without what ngt.screen adds to it.
    (sweep_cmd,) = [line for line in cmds.splitlines() if line.startswith("python -m ngt.screen -m ")]
    typed = ["variant=no_repulsion", "train.lr=1e30", "train.block_size=32", "train.batch_size=4,4096", *TINY,
             f"data.path={built['corpus']}", f"hydra.sweep.dir={built['sweep']}"]
    assert sorted(shlex.split(sweep_cmd)[4:]) == sorted(typed)
    for run, r in results.iterrows():
        assert f"  # {r['name']}" in cmds


def test_report_md_ranking_and_ablations(built, results):
    md = (built["sweep"] / "report.md").read_text()
    records = runs_by_dir(built["sweep"])
    completed = results[results["status"] == "completed"]
    mean = {v: np.mean([_val_at(records[r], 20) for r in completed.index[completed["variant"] == v]])
            for v in ("baseline", "ngt_default", "mass_in_value")}
    ranking = table_rows(section(md, "## Ranking"))
    main = [r for r in ranking if "[" not in r[1] or "seed=" in r[1]]
    assert [float(r[2]) for r in main] == sorted(float(r[2]) for r in main)
    rows = table_rows(section(md, "## Ablations"))
    ngt_vs_base = next(r for r in rows if r[1].startswith("ngt_default vs baseline") and r[2] != "n/a")
    assert ngt_vs_base[0].startswith("Does gravity attention")
    assert ngt_vs_base[2] == f"{mean['ngt_default'] - mean['baseline']:+.4f}" and ngt_vs_base[4] == "2 (paired)"
    assert ngt_vs_base[7] in ("indistinguishable", "beyond noise: baseline better", "beyond noise: ngt_default better")
    miv = next(r for r in rows if r[1].startswith("mass_in_value vs ngt_default") and r[2] != "n/a")
    assert miv[2] == f"{mean['mass_in_value'] - mean['ngt_default']:+.4f}"
    for other in ("bare", "soft_cutoff", "repulsion_interval_8"):
        assert any(r[1].startswith(f"{other} vs ngt_default") and r[7] == f"missing: no run of {other}" for r in rows)
    # no_repulsion ran (and failed): listed with why it is not compared, not dropped
    assert any(r[1].startswith("no_repulsion vs ngt_default") and "did not reach step 20" in r[7] for r in rows)


def test_cli_report_and_coordinates(built):
    cli = built["cli"]
    assert cli["returncode"] == 0, cli["stderr"][-3000:]
    out = built["root"] / "cli"
    assert (out / "results.csv").exists() and (out / "index.html").exists()
    res = pd.read_csv(out / "results.csv")
    assert len(res) == len(runs_by_dir(built["sweep"])) and res["run"].str.startswith("../sweep/").all()
    pages = {p.name for p in (out / "plots").glob("*.html")}
    assert {"losses.html", "throughput.html", "diagnostics.html"} <= pages
    coords = sorted(p for p in pages if p.startswith("coords_"))
    ngt_with_ckpt = res[(res["variant"] != "baseline") & res["status"].isin(["completed", "running", "failed"])
                        & res["last_eval_step"].notna()]
    assert len(coords) == len(ngt_with_ckpt)  # every NGT run with a checkpoint, the baseline never
    index = (out / "index.html").read_text()
    assert "no checkpoint" in index  # the run that failed before training, and the one never started


def test_coordinates_from_a_checkpoint(built, results):
    run = results.index[(results["variant"] == "mass_in_value")][0]
    c = run_coords(built["sweep"] / run / "checkpoints" / "last.pt", ValidationSamples())
    assert c.pcs.shape == (32, 3) and len(c.labels) == 32 and c.mass.shape == (32,) and (c.mass > 0).all()
    assert 0 < c.explained.sum() <= 1 + 1e-9 and list(c.explained) == sorted(c.explained, reverse=True)
    assert any("␣" in label or "↵" in label for label in c.labels)  # whitespace made visible
    z = np.random.default_rng(0).normal(size=(50, 2))

    pcs, ev = pca3(torch.from_numpy(z))  # two coordinates: the third component is empty
    assert pcs.shape == (50, 3) and ev[2] == 0 and (pcs[:, 2] == 0).all()


def test_cli_errors(tmp_path):
    missing = _in_process_cli(str(tmp_path / "nope"))
    assert missing["returncode"] != 0 and "no such directory" in missing["stderr"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    empty = _in_process_cli(str(tmp_path / "empty"))
    assert empty["returncode"] != 0 and "no run directories" in empty["stderr"]
    several = _in_process_cli(str(tmp_path), str(tmp_path / "empty"))
    assert several["returncode"] != 0 and "--out is required" in several["stderr"]


def test_a_report_that_cannot_be_written_costs_one_line(tmp_path, small_corpus):
    sweep = tmp_path / "sweep"
    (sweep / "results.csv").mkdir(parents=True)  # a real failure of the report: its table cannot be written
    proc = _python("-m", "ngt.screen", "-m", "variant=baseline", *TINY, "train.block_size=32", "train.batch_size=4096",
                   f"data.path={small_corpus}", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 1, log[-3000:]
    (line,) = [x for x in log.splitlines() if "the report could not be written" in x]
    assert f"Is a directory: {sweep / 'results.csv'}" in line and f"python -m ngt.report {sweep}" in line
    assert "Traceback" not in log
    assert not (sweep / "report-traceback.txt").exists()  # a disk's failure, not a bug: no traceback to keep
    (run,) = sweep.glob("*/summary.json")  # the run itself is recorded as usual
    assert RunDir(run.parent).read_summary().status == "failed"

    # Once fixed, the report of a sweep in which nothing was evaluated says so.
    (sweep / "results.csv").rmdir()
    again = _in_process_cli(str(sweep))
    assert again["returncode"] == 0 and "1 run (1 failed)" in again["stdout"], again["stderr"][-3000:]
    summary = (sweep / "Summary.md").read_text()
    assert "No step was evaluated by every compared run" in summary and "fewer than one batch needs" in summary


def test_index_page_answers_first(built, results):
    index = (built["sweep"] / "index.html").read_text()
    title, rest = index.split('id="headline"', 1)
    assert "<h1>Sweep sweep</h1>" in title and "data <b>text</b>" in title
    assert f"device <b>cpu · torch {torch.__version__}</b>" in title
    assert "code <b>ngt " in title and "model <b>" in title and html.escape("python -m ngt.screen -m ") in title
    assert rest.index('id="difference"') < rest.index("<h2>Runs</h2>")
    runs = rest.split("<h2>Runs</h2>", 1)[1]
    assert "None" not in runs and ">nan<" not in runs
    for _, r in results.iterrows():
        assert f">{r['status']}</span>" in runs
        overrides = yaml.safe_load((built["sweep"] / r.name / ".hydra" / "overrides.yaml").read_text())
        assert html.escape(f"python -m ngt.screen {shlex.join(overrides)}") in runs
        assert f'href="{quote(r.name)}/"' in runs


def test_summary_names_the_machine_and_code(built):
    """Where the runs trained (device, torch; CUDA on a GPU) and which code, under the title."""
    md = (built["sweep"] / "Summary.md").read_text()
    line = next(ln for ln in md.splitlines() if ln.startswith("Trained on "))
    assert f"Trained on cpu · torch {torch.__version__}; code ngt " in line
    assert "CUDA" not in line  # a CPU run has no CUDA to name
