"""Nothing lost, nothing misreported: concurrent launches, refused commands, damaged files,
full and read-only disks, bad settings. Every case through the real command line."""

import hashlib
import json
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import TINY, compose, numbers, one_error_line, screen, wait_for_rows

ARGS = [*TINY, "data=text", "budget.max_steps=10", "budget.eval_every=5", "budget.checkpoint_every=5"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_corpus) -> tuple[list[str], Path]:
    """A completed 10-step run; tests copy it before they change anything."""
    root = tmp_path_factory.mktemp("finished")
    args = [*ARGS, f"data.path={small_corpus}"]
    screen(*args, f"hydra.run.dir={root / 'run'}", cwd=root, check=True)
    return args, root / "run"


def copy_run(finished, tmp_path: Path) -> tuple[list[str], Path]:
    args, run = finished
    shutil.copytree(run, tmp_path / "run")
    return args, tmp_path / "run"


def fingerprint(run: Path) -> dict[str, str]:
    return {str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_grid_launched_twice_at_once_trains_every_run_once(tmp_path, small_corpus):
    grid = ["-m", *ARGS, f"data.path={small_corpus}", "variant=baseline,ngt_default,bare",
            f"hydra.sweep.dir={tmp_path / 'sweep'}", "train.threads=1"]
    cmd = [sys.executable, "-m", "ngt.screen", *grid]
    procs = [subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    for run in sorted((tmp_path / "sweep").glob("variant=*")):
        steps = [r["step"] for r in numbers(run)]
        assert steps == [0, 5, 10], (run, steps)  # each evaluation once: one process trained it
        assert json.loads((run / "summary.json").read_text())["status"] == "completed"
    assert "is being trained by pid" in "".join(outputs) or "(skipped)" in "".join(outputs)
    results = (tmp_path / "sweep" / "results.csv").read_text()
    assert results.count(",completed,") == 3


def test_another_config_into_a_busy_run_is_an_error_and_its_record_stays(tmp_path, small_corpus):
    """A second command into a run another process is training: the same config is a skip,
    another one an error (it would never be trained), and the record of the run's own
    command is back in .hydra/ when the run ends, whatever the second launch wrote there."""
    run = tmp_path / "run"
    args = [*ARGS, f"data.path={small_corpus}", "budget.max_steps=400", "budget.eval_every=5", f"hydra.run.dir={run}"]
    first = subprocess.Popen([sys.executable, "-m", "ngt.screen", *args], cwd=tmp_path,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_rows(run / "metrics.jsonl", 2, first)
        own = (run / ".hydra" / "overrides.yaml").read_bytes()
        other = screen(*args, "train.lr=5e-3", cwd=tmp_path)
        assert other.returncode == 2 and "of another config (train.lr: 0.001 -> 0.005)" in one_error_line(other)
        same = screen(*args, "train.log_every=7", cwd=tmp_path)  # a neutral key: the same run
        assert same.returncode == 0 and "(skipped)" in same.stdout + same.stderr
        assert (run / ".hydra" / "overrides.yaml").read_bytes() == own  # Hydra wrote the skipped one's
    finally:
        first.send_signal(signal.SIGTERM)  # the holder stops (saved, interrupted) and lets the lock go
        first.wait(timeout=300)
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


def test_a_busy_run_of_another_config_is_not_a_skip(tmp_path, small_corpus):
    """Found busy before its summary exists (the holder is still setting up, so the
    preflight saw nothing): the holder's config, from its lock, decides skip or error."""
    from ngt.config import plain
    from ngt.errors import NGTError
    from ngt.rundir import RunDir
    from ngt.runner import train

    args = [*ARGS, f"data.path={small_corpus}"]
    with RunDir(tmp_path / "run").lock(plain(compose(*args)), {"overrides.yaml": "- holder\n"}):
        assert train(compose(*args), tmp_path / "run")["status"] == "skipped"
        with pytest.raises(NGTError, match=r"is being trained by pid \d+ .*, with another config \(train.lr"):
            train(compose(*args, "train.lr=5e-3"), tmp_path / "run")
        assert (tmp_path / "run" / ".hydra" / "overrides.yaml").read_text() == "- holder\n"  # the holder's record


def test_a_refused_continue_leaves_every_file_as_it_was(finished, tmp_path):
    args, run = copy_run(finished, tmp_path)
    before = fingerprint(run)
    proc = screen(f"continue={run}", "model.d_model=64", cwd=tmp_path)
    assert proc.returncode == 2
    assert "model.d_model: 32 -> 64" in one_error_line(proc)
    assert fingerprint(run) == before
    screen(f"continue={run}", "budget.max_steps=15", cwd=tmp_path, check=True)  # the right command still works
    assert [r["step"] for r in numbers(run)] == [0, 5, 10, 15]


def test_another_config_into_a_finished_run_is_refused_not_skipped(finished, tmp_path):
    args, run = copy_run(finished, tmp_path)
    before = fingerprint(run)
    proc = screen(*args, "variant=bare", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2 and "holds a finished run of another config" in one_error_line(proc)
    assert fingerprint(run) == before
    same = screen(*args, "train.device=cpu", f"hydra.run.dir={run}", cwd=tmp_path, check=True)
    assert "(skipped)" in same.stdout + same.stderr  # a neutral key: the same run


def test_a_torn_last_metrics_row_is_made_again_and_a_garbled_one_stops(finished, tmp_path):
    args, run = copy_run(finished, tmp_path)
    metrics = run / "metrics.jsonl"
    rows = metrics.read_text().splitlines()
    metrics.write_text("\n".join(rows[:-1]) + "\n" + rows[-1][:25])  # a kill mid-append of step 10's row
    screen(f"continue={run}", "budget.max_steps=15", cwd=tmp_path, check=True)
    again = metrics.read_text().splitlines()
    assert again[:3] == rows  # step 10's row, evaluated again from the checkpoint at step 10, is the same
    assert [json.loads(r)["step"] for r in again] == [0, 5, 10, 15]

    garbled = again[:1] + ["{not json"] + again[2:]
    metrics.write_text("\n".join(garbled) + "\n")
    before = fingerprint(run)
    proc = screen(f"continue={run}", "budget.max_steps=20", cwd=tmp_path)
    line = one_error_line(proc)
    assert proc.returncode == 2 and f"{metrics}, line 2" in line
    assert fingerprint(run) == before


def test_flipped_checkpoint_bytes_are_caught_and_leftovers_removed(finished, tmp_path):
    args, run = copy_run(finished, tmp_path)
    last = run / "checkpoints" / "last.pt"
    data = bytearray(last.read_bytes())
    state = torch.load(last, weights_only=True)
    weights = next(iter(state["model"].values())).numpy().tobytes()
    at = bytes(data).index(weights[:64]) + 8  # inside the first tensor's bytes: still a finite float
    data[at] ^= 0x01
    last.write_bytes(bytes(data))
    leftover = run / "checkpoints" / ".last.pt.tmp99999"
    leftover.write_bytes(b"x" * 1000)
    before = fingerprint(run)
    proc = screen(f"continue={run}", "budget.max_steps=15", cwd=tmp_path)
    assert proc.returncode == 2 and "does not match its digest" in one_error_line(proc)
    assert fingerprint(run) == before  # refused before Hydra rewrote .hydra/ with the command
    data[at] ^= 0x01
    last.write_bytes(bytes(data))
    screen(f"continue={run}", "budget.max_steps=15", cwd=tmp_path, check=True)
    assert not leftover.exists()


def test_a_completed_run_whose_last_rows_are_lost_is_not_skipped(finished, tmp_path):
    args, run = copy_run(finished, tmp_path)
    metrics = run / "metrics.jsonl"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:-1]))
    proc = screen(*args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2
    assert f"{metrics} ends at step 5 but summary.json says the run completed at step 10" in one_error_line(proc)


def test_a_summary_without_its_config_is_checked_against_the_checkpoints(finished, tmp_path):
    """A run from before summaries held their config: another variant is refused, not skipped."""
    args, run = copy_run(finished, tmp_path)
    summary = json.loads((run / "summary.json").read_text())
    del summary["config"]
    (run / "summary.json").write_text(json.dumps(summary))
    proc = screen(*args, "variant=baseline", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 2 and "holds a finished run of another config (variant" in one_error_line(proc)
    screen(*args, f"hydra.run.dir={run}", cwd=tmp_path, check=True)  # its own command: skipped


def test_non_finite_training_keeps_a_finite_last_checkpoint_that_samples(tmp_path, small_corpus):
    run = tmp_path / "run"
    proc = screen(*ARGS, f"data.path={small_corpus}", f"hydra.run.dir={run}", "train.lr=1e30",
                  "budget.checkpoint_every=1", cwd=tmp_path)
    assert proc.returncode == 1 and "last good checkpoint kept" in one_error_line(proc)
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    sample = [sys.executable, "-m", "ngt.generate", f"run={run}", "max_new_tokens=5", "device=cpu"]
    best = subprocess.run(sample, capture_output=True, text=True, timeout=120)
    assert best.returncode == 0, best.stderr
    last = subprocess.run([*sample, "checkpoint=last"], capture_output=True, text=True, timeout=120)
    assert last.returncode != 0 and "not finite" in one_error_line(last)  # finite weights, overflowing outputs


@pytest.fixture
def small_disk(tmp_path):
    """A 200 kB tmpfs (root only): room for Hydra's records, not for a checkpoint."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_is_one_line_naming_the_cause(small_disk, small_corpus, tmp_path):
    run = small_disk / "run"
    proc = screen(*ARGS, f"data.path={small_corpus}", f"hydra.run.dir={run}", cwd=tmp_path)
    line = one_error_line(proc)
    assert proc.returncode == 1 and "No space left on device" in line and str(run) in line


def test_a_read_only_folder_is_one_line_naming_the_cause(small_disk, finished, tmp_path):
    args, run = finished
    shutil.copytree(run, small_disk / "run", ignore=shutil.ignore_patterns("*.pt", "tb"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    for where in ("fresh", "run"):  # a new run; a finished one, whose run.log Hydra would open first
        proc = screen(*args, "budget.max_steps=15", f"hydra.run.dir={small_disk / where}", cwd=tmp_path)
        named = small_disk / where if where == "run" else small_disk  # the nearest folder that exists
        assert proc.returncode == 2 and one_error_line(proc) == f"error: Read-only file system: {named}"


@pytest.mark.parametrize("override, named", [
    ("model.d_model=0", "model.d_model=0 is out of range: at least 1"),
    ("model.d_model=30", "model.d_model=30 is out of range: a multiple of model.n_heads=4"),
    ("model.n_layers=0", "model.n_layers=0"), ("model.mlp_dim=0", "model.mlp_dim=0"),
    ("model.coord_dim=0", "model.coord_dim=0"), ("model.head_coord_dim=0", "model.head_coord_dim=0"),
    ("model.dropout=1.5", "model.dropout=1.5 is out of range: 0 <= dropout < 1"),
    ("train.grad_clip=-1", "train.grad_clip=-1.0 is out of range"), ("train.grad_clip=0", "train.grad_clip=0.0"),
    ("train.lr=-1", "train.lr=-1.0 is out of range: greater than 0"), ("train.beta2=1.5", "train.beta2=1.5"),
    ("train.lr=inf", "train.lr=inf is out of range: greater than 0 and finite"),
    ("+train.lrr=0.1", "train.lrr is not a setting of ngt: did you mean train.lr?"),
    ("+foo=1", "foo is not a setting of ngt"),
    ("hydra.run.dir=out/seed=1,variant=b", "cannot read the override 'hydra.run.dir=out/seed=1,variant=b': "
                                           "mismatched input '=' expecting <EOF>; a value holding '=', ',' or "
                                           "spaces needs quotes"),
    ("train.device=tpu", "train.device='tpu' is out of range: auto, cpu, cuda or cuda:N"),
    ("train.block_size=1000", "at most the model's context"), ("budget.max_steps=0", "budget.max_steps=0"),
    ("variant.radius=sharp", "Invalid value 'sharp', expected one of [hard, soft, none]"),
    ("variant.repulsion_interval=-1", "variant.repulsion_interval=-1"),
])
def test_bad_settings_fail_before_anything_is_made(tmp_path, override, named):
    proc = screen(override, cwd=tmp_path)
    assert proc.returncode == 2 and named in one_error_line(proc)
    assert not (tmp_path / "outputs").exists()


def test_a_bad_value_in_one_job_of_a_grid_runs_no_job(tmp_path):
    proc = screen("-m", "model.d_model=32,30", "budget=smoke", cwd=tmp_path)
    assert proc.returncode == 2 and "model.d_model=30" in one_error_line(proc)
    assert not (tmp_path / "outputs").exists()


def test_damaged_records_are_listed_by_the_report_which_writes_the_rest(finished, tmp_path):
    args, run = finished
    for name in ("good", "bad_summary", "bad_overrides"):
        shutil.copytree(run, tmp_path / "sweep" / name, ignore=shutil.ignore_patterns("*.pt", "tb"))
    (tmp_path / "sweep" / "bad_summary" / "summary.json").write_text('{"status": "compl')
    (tmp_path / "sweep" / "bad_overrides" / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    proc = subprocess.run([sys.executable, "-m", "ngt.report", str(tmp_path / "sweep")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    rows = {r.split(",")[0]: r for r in (tmp_path / "sweep" / "results.csv").read_text().splitlines()[1:]}
    assert ",unreadable," in rows["bad_summary"] and "summary.json is damaged" in rows["bad_summary"]
    assert ",completed," in rows["good"] and "overrides.yaml is damaged" in rows["bad_overrides"]


def test_a_second_ctrl_c_stops_at_once_without_a_traceback(tmp_path, small_corpus):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "ngt.screen", *ARGS, f"data.path={small_corpus}",
                             "budget.max_steps=100000", f"hydra.run.dir={run}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for_rows(run / "metrics.jsonl", 2, proc)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=60)[0]
    assert "Traceback" not in out, out[-2000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "interrupted"


class _Payload:
    """Unpickled by a careless loader, it would create ``marker``: code run from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("protocol, why", [(2, "holds objects a safe load refuses to build (code could run)"),
                                           (4, "is not a file a safe load reads (Unsupported operand 149; "
                                               "nothing in it was run)")])
def test_an_unsafe_checkpoint_is_refused_for_safety_and_never_run(finished, tmp_path, protocol, why):
    args, run = copy_run(finished, tmp_path)
    marker = tmp_path / "code-ran"
    with (run / "checkpoints" / "last.pt").open("wb") as f:
        pickle.dump({"model": _Payload(marker)}, f, protocol=protocol)
    proc = screen(f"continue={run}", "budget.max_steps=15", cwd=tmp_path)
    assert proc.returncode == 2 and why in one_error_line(proc)
    assert not marker.exists()


def test_a_folder_of_the_run_it_cannot_write_is_one_line(finished, tmp_path):
    """An immutable tb/ (root ignores permissions, not chattr +i): TensorBoard's writer
    would fail in its own thread, with a traceback; the preflight names the folder."""
    args, run = copy_run(finished, tmp_path)
    if subprocess.run(["chattr", "+i", str(run / "tb")], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        proc = screen(f"continue={run}", "budget.max_steps=15", cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(run / "tb")], check=True)
    assert proc.returncode == 2 and one_error_line(proc) == f"error: Permission denied: {run / 'tb'}"
    assert "Traceback" not in proc.stdout + proc.stderr
