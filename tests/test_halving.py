"""Successive halving (hydra/sweeper=halving): the rungs, the choices, a real sweep end to
end, and a sweep killed mid-rung that finishes with the same decisions when relaunched."""

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY, numbers, screen
from ngt.halving import configuration, rung_steps, select, varying_keys


def test_rungs_end_at_the_budget_on_evaluated_steps():
    assert rung_steps(15000, 500, 3, 3) == [1500, 5000, 15000]
    assert rung_steps(200, 20, 3, 3) == [20, 60, 200]
    assert rung_steps(9, 1, 3, 3) == [1, 3, 9]
    assert rung_steps(100, 50, 3, 3) == [50, 100]  # rungs below the first evaluation merge into it
    assert rung_steps(100, 10, 2, 1) == [100]


def test_the_best_third_go_on_paired_with_the_best_baseline():
    seeds = ("s1", "s2")
    losses = {"base_lr1": dict(zip(seeds, (3.0, 3.2))), "base_lr2": dict(zip(seeds, (3.1, 3.3))),
              "a": dict(zip(seeds, (2.9, 3.05))), "b": dict(zip(seeds, (3.5, 3.6))),
              "c": dict(zip(seeds, (3.0, math.inf))), "d": dict(zip(seeds, (3.2, 3.2)))}
    rung = select(losses, {"base_lr1", "base_lr2"}, eta=3)
    assert rung.reference == "base_lr1"
    assert rung.kept == ["base_lr1", "a", "d"]  # ceil(4 / 3) = 2 of the four others; c failed on a seed
    assert rung.scores["a"] == pytest.approx(((2.9 - 3.0) + (3.05 - 3.2)) / 2)
    assert rung.scores["c"] == math.inf


def test_configurations_are_named_by_what_varies():
    jobs = [["variant=a", "seed=1", "budget=smoke"], ["variant=b", "seed=1", "budget=smoke"],
            ["variant=a", "seed=2", "budget=smoke"]]
    assert [configuration(j, varying_keys(jobs)) for j in jobs] == ["variant=a", "variant=b", "variant=a"]


def sweep_args(corpus: Path, where: Path, variants: str = "baseline,ngt_default,mass_in_value",
               seeds: str = "1,2", rungs: int = 3) -> list[str]:
    return ["-m", "hydra/sweeper=halving", f"hydra.sweeper.rungs={rungs}", *TINY, "data=text", f"data.path={corpus}",
            "model.attn_impl=reference",
            f"variant={variants}", f"seed={seeds}", "budget.max_steps=9", "budget.eval_every=1",
            "budget.checkpoint_every=1", "budget.eval_batches=1", "train.threads=1", f"hydra.sweep.dir={where}"]


# For the launchers: two configurations, one seed, two rungs (each launches two jobs).
SMALL = {"variants": "baseline,ngt_default", "seeds": "1", "rungs": 2}


@pytest.fixture(scope="module")
def reference(tmp_path_factory, small_corpus) -> Path:
    where = tmp_path_factory.mktemp("halving") / "sweep"
    screen(*sweep_args(small_corpus, where), cwd=where.parent, check=True)
    return where


def decisions(where: Path) -> dict:
    return json.loads((where / "halving.json").read_text())


def test_a_halving_sweep_trains_the_best_to_the_end_and_records_why(reference):
    d = decisions(reference)
    assert d["steps"] == [1, 3, 9] and [len(r["kept"]) for r in d["rungs"]] == [2, 2, 2]
    assert d["rungs"][0]["reference"] == "variant=baseline" and "variant=baseline" in d["rungs"][0]["kept"]
    assert d["steps_trained"] == 6 * 1 + 4 * 2 + 4 * 6 and d["steps_full_grid"] == 6 * 9
    survivor = next(k for k in d["rungs"][-1]["kept"] if k != "variant=baseline").split("=")[1]
    loser = ({"ngt_default", "mass_in_value"} - {survivor}).pop()
    summary = (reference / "Summary.md").read_text()  # the report shows the rungs, and a verdict for the loser
    assert "## Successive halving" in summary and f"variant={loser} | " in summary and "stopped at step 1" in summary
    assert f"{loser} vs baseline at step 1:" in summary
    for seed in (1, 2):
        done = json.loads((reference / f"seed={seed},variant={survivor}" / "summary.json").read_text())
        stopped = json.loads((reference / f"seed={seed},variant={loser}" / "summary.json").read_text())
        assert (done["status"], done["final_step"], stopped["status"], stopped["final_step"]) == \
            ("completed", 9, "paused", 1)
        assert [r["step"] for r in numbers(reference / f"seed={seed},variant={survivor}")] == list(range(10))


def test_a_halving_sweep_killed_mid_rung_finishes_with_the_same_decisions(reference, small_corpus, tmp_path):
    where = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "-m", "ngt.screen", *sweep_args(small_corpus, where)], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while proc.poll() is None and time.time() < deadline:  # the second rung under way
        if (where / "halving.json").exists() and any(
                len(numbers(r)) > 2 for r in where.glob("seed=*") if (r / "metrics.jsonl").exists()):
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(decisions(where)["rungs"]) == 1, "the sweep was not stopped in its second rung"
    screen(*sweep_args(small_corpus, where), cwd=tmp_path, check=True)
    assert decisions(where) == decisions(reference)
    for run in reference.glob("seed=*"):
        assert numbers(where / run.name) == numbers(run)


def test_a_halving_sweep_under_the_local_launcher_takes_the_same_decisions(small_corpus, tmp_path):
    """Each rung's runs as processes at once (hydra/launcher=local): the decisions and numbers
    of the sweep that ran them one after another."""
    here, local = tmp_path / "here", tmp_path / "local"
    screen(*sweep_args(small_corpus, here, **SMALL), cwd=tmp_path, check=True)
    screen(*sweep_args(small_corpus, local, **SMALL), "hydra/launcher=local", cwd=tmp_path, check=True)
    assert decisions(local) == decisions(here) and len(decisions(here)["rungs"]) == 2
    for run in here.glob("seed=*"):
        assert numbers(local / run.name) == numbers(run)
