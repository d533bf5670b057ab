"""The report's statistics on run directories written by hand, where every answer is known:
a variant clearly better than the baseline, one equal, one worse, one with a single seed,
one whose seeds are not the baseline's (Welch), one whose curves equal another's; a grid over
learning rates; runs that differ in speed, for the comparison at equal training time.

Each figure is checked against a formula written here (numpy and tabulated t quantiles),
not against the code that computes it.
"""

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir

from ngt.config import CONF, register_configs
from ngt.records import RunSummary, Status
from ngt.report import compare, stats, write_report
from ngt.report.analysis import analyse
from ngt.report.equal_time import EqualTime
from ngt.report.headline import headline
from ngt.report.load import load_runs
from ngt.rundir import RunDir

# Student's t quantiles from a printed table, not from the library under test.
T975 = {1: 12.7062, 2: 4.30265, 4: 2.77645}
T80 = {1: 1.37638, 2: 1.06066, 4: 0.940965}
STEPS = [0, 10, 20, 30, 40]
BASE = {1: 3.00, 2: 3.02, 3: 2.98}  # the baseline's final loss per seed
# Paired differences to the baseline, per variant and seed: the answers are known by construction.
DIFFS = {
    "ngt_default": {1: -0.050, 2: -0.046, 3: -0.054},  # better, beyond noise
    "no_radius": {1: +0.010, 2: -0.010, 3: 0.000},  # equal: indistinguishable
    "mass_in_value": {1: +0.030, 2: +0.035, 3: +0.025},  # worse, beyond noise
    "soft_cutoff": {1: -0.010},  # one seed: directional
}
WELCH_FINALS = {4: 2.99, 5: 3.03, 6: 3.01}  # bare, on seeds the baseline does not have: unpaired
# repulsion_interval_8 paused at step 20 (a halving sweep's first rung), worse than the baseline there by these
PAUSED = {1: +0.020, 2: +0.025, 3: +0.015}
SECONDS_PER_STEP = {"ngt_default": 0.15}  # slower per step than the rest (0.1)
_BUILT: dict = {}


def val_curve(final: float) -> list[float]:
    """A straight line from final + 1 at step 0 down to ``final`` at step 40."""
    return [final + (1 - s / STEPS[-1]) for s in STEPS]


def write_run(path: Path, variant: str, seed: int, losses: list[float], *, lr: float = 1e-3,
              seconds_per_step: float = 0.1, status: Status = Status.completed, data_seed: int = 1337) -> None:
    """A run directory as the trainer leaves it: .hydra/ with its overrides, summary.json, metrics.jsonl."""
    (path / ".hydra").mkdir(parents=True)
    overrides = [f"variant={variant}", f"seed={seed}", f"train.lr={lr}"]
    (path / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    arch = "gpt" if variant == "baseline" else "ngt"
    config = {"variant": {"name": variant, "arch": arch, "mass": "scores", "radius": "hard"},
              "model": {"name": "tiny", "n_layers": 2}, "train": {"lr": lr, "block_size": 32},
              "data": {"name": "text"}, "sweep": "constructed"}
    rd = RunDir(path)
    rd.write_summary(RunSummary(
        status=status, variant=variant, arch=arch, model="tiny", data="text", budget="smoke",
        seeds={"seed": seed, "data_seed": data_seed, "eval_seed": 2024}, max_steps=STEPS[-1], config=config,
        final_step=STEPS[len(losses) - 1] if losses else 0, params=700_000, tokens_per_step=128, device="cpu",
        code={"ngt": "0.1.0", "git_commit": "0123456789abcdef", "git_dirty": False, "python": "3.11",
              "libraries": {}}))
    rd.rewrite_metrics({"step": s, "train/loss": v, "val/loss": v, "elapsed_s": s * seconds_per_step}
                       for s, v in zip(STEPS, losses))


def constructed_sweep(root: Path) -> Path:
    """The sweep of the module docstring, written once per session (test_pages.py renders it too)."""
    if "sweep" in _BUILT:
        return _BUILT["sweep"]
    sweep = root / "constructed"
    for seed, b in BASE.items():
        write_run(sweep / f"baseline-{seed}", "baseline", seed, val_curve(b))
        # the same curves as ngt_default's but for float rounding
        write_run(sweep / f"no_repulsion-{seed}", "no_repulsion", seed,
                  [x * (1 + 3e-7) for x in val_curve(b + DIFFS["ngt_default"][seed])])
    for variant, diffs in DIFFS.items():
        for seed, d in diffs.items():
            write_run(sweep / f"{variant}-{seed}", variant, seed, val_curve(BASE[seed] + d),
                      seconds_per_step=SECONDS_PER_STEP.get(variant, 0.1))
    for seed, final in WELCH_FINALS.items():
        write_run(sweep / f"bare-{seed}", "bare", seed, val_curve(final))
    for seed, d in PAUSED.items():
        write_run(sweep / f"repulsion_interval_8-{seed}", "repulsion_interval_8", seed, val_curve(BASE[seed] + d)[:3],
                  status=Status.paused)
    _BUILT["sweep"] = sweep
    _BUILT["report"] = write_report([sweep], sweep)
    return sweep


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    sweep = constructed_sweep(tmp_path_factory.mktemp("constructed"))
    return sweep, _BUILT["report"].analysis


def row(t: pd.DataFrame, other: str, reference: str = "baseline") -> pd.Series:
    (i,) = t.index[(t["other"] == other) & (t["reference"] == reference)]
    return t.loc[i]


def paired_by_hand(d: list[float]) -> dict:
    d = np.array(d)
    n, sd = len(d), d.std(ddof=1)
    half = T975[n - 1] * sd / math.sqrt(n)
    return {"delta": d.mean(), "low": d.mean() - half, "high": d.mean() + half,
            "mde": (T975[n - 1] + T80[n - 1]) * sd / math.sqrt(n)}


@pytest.mark.parametrize("variant,verdict", [("ngt_default", "beyond noise (better)"),
                                             ("no_radius", "indistinguishable"),
                                             ("mass_in_value", "beyond noise (worse)")])
def test_paired_difference_interval_and_detectable_effect(built, variant, verdict):
    _, a = built
    r = row(a.vs_baseline, variant)
    want = paired_by_hand(list(DIFFS[variant].values()))
    assert r["method"] == "paired" and r["n"] == 3
    for key in ("delta", "low", "high", "mde"):
        assert r[key] == pytest.approx(want[key], rel=1e-4, abs=1e-9), key
    assert compare.verdict_words(r) == verdict
    # all three differences on one side of zero: every resample of the seeds is too
    assert r["p_better"] == {"ngt_default": 1.0, "mass_in_value": 0.0}.get(variant, pytest.approx(0.5, abs=0.03))


def test_bootstrap_probability_resamples_seeds():
    # two pairs, -0.03 and +0.01: a resample's mean is < 0 unless both draws are +0.01 (1 in 4)
    d = stats.paired(np.array([1.0, 1.0]), np.array([0.97, 1.01]))
    assert d.p_better == pytest.approx(0.75, abs=0.02)
    assert stats.paired(np.array([1.0, 1.0]), np.array([0.97, 1.01])) == d  # seeded: the same every time


def test_unpaired_seeds_fall_back_to_welch(built):
    _, a = built
    r = row(a.vs_baseline, "bare")
    base, other = np.array(list(BASE.values())), np.array(list(WELCH_FINALS.values()))
    # equal spread and size on both sides: Welch's df is exactly 2 (n - 1) = 4
    assert base.var(ddof=1) == pytest.approx(other.var(ddof=1))
    se = math.sqrt(base.var(ddof=1) / 3 + other.var(ddof=1) / 3)
    delta = other.mean() - base.mean()
    assert r["method"] == "unpaired (Welch)"
    assert [r["delta"], r["low"], r["high"]] == pytest.approx([delta, delta - T975[4] * se, delta + T975[4] * se],
                                                              rel=1e-4)
    assert r["mde"] == pytest.approx((T975[4] + T80[4]) * se, rel=1e-4)
    assert "unpaired (Welch)" in compare.line(r)


def test_one_seed_is_directional_never_a_verdict(built):
    _, a = built
    r = row(a.vs_baseline, "soft_cutoff")
    assert r["method"] == "one seed" and math.isnan(r["low"]) and r["delta"] == pytest.approx(-0.010)
    assert compare.line(r) == "soft_cutoff vs baseline: -0.0100, one seed: directional (better)"


def test_a_variant_stopped_early_is_compared_where_it_stopped(built):
    _, a = built
    r = row(a.vs_baseline, "repulsion_interval_8")
    # at step 20 both curves are 0.5 above their final loss: the paired differences are PAUSED's
    want = paired_by_hand(list(PAUSED.values()))
    assert r["stopped_at"] == 20 and r["method"] == "paired" and r["verdict"] == "beyond noise"
    assert [r["delta"], r["low"], r["high"]] == pytest.approx([want["delta"], want["low"], want["high"]], rel=1e-4)
    assert compare.line(r).startswith(f"repulsion_interval_8 vs baseline at step 20: {want['delta']:+.4f} [")
    assert "did not reach step 40" in row(a.vs_baseline_time, "repulsion_interval_8")["missing"]


def answer_lines(md: str) -> list[str]:
    """The bullet lines of Summary.md's first section, up to the equal-time ones."""
    section = md[md.index("## Answer"):md.index("\n## Runs")]
    return [x[2:] for x in section.split("At equal training time")[0].splitlines() if x.startswith("- ")]


def test_summary_answers_first_in_one_line_per_variant(built):
    sweep, a = built
    md = (sweep / "Summary.md").read_text()
    assert md.index("## Answer") < md.index("## Runs") < md.index("## 1. Fixed-step comparison")
    lines = answer_lines(md)
    assert len(lines) == 7  # every variant but the baseline
    want = paired_by_hand(list(DIFFS["ngt_default"].values()))
    assert (f"ngt_default vs baseline: {want['delta']:+.4f} [{want['low']:+.4f}, {want['high']:+.4f}], beyond noise "
            "(better); 3 paired seeds, P(better) 1.00") in lines
    (equal,) = [x for x in lines if x.startswith("no_radius vs baseline")]
    assert ", indistinguishable; 3 paired seeds" in equal
    assert "no_repulsion: same curve as ngt_default" in md and "its switches had no effect in this run" in md
    report = (sweep / "report.md").read_text()
    assert "| mass_in_value vs ngt_default | " in report and "beyond noise: ngt_default better" in report


def test_headline_values_are_the_summarys(built):
    sweep, a = built
    shown = {}
    for trace in headline(a).data:
        if trace.xaxis in ("x", None):  # the panel at the comparison step
            for y, x, plus, minus, words in zip(trace.y, trace.x, trace.error_x.array, trace.error_x.arrayminus,
                                                trace.text):
                shown[y] = (x, x - minus, x + plus, words)
    # 'X vs baseline at step 20: ...' is the point named 'X (step 20)'
    lines = {m[1] + (f" (step {m[2]})" if m[2] else ""): m[3]
             for m in (re.match(r"(.*?) vs baseline(?: at step (\d+))?: (.*)", x) for x in
                       answer_lines((sweep / "Summary.md").read_text()))}
    assert sorted(shown) == sorted(lines)
    for name, rest in lines.items():
        delta, low, high, words = shown[name]
        if "one seed" in rest:
            assert rest == f"{delta:+.4f}, {words}"
        else:
            assert rest.startswith(f"{delta:+.4f} [{low:+.4f}, {high:+.4f}], {words}")


def test_equal_training_time_and_time_to_reach_the_baseline(built):
    sweep, a = built
    t = a.time.table.set_index("name")
    (equal_time,) = a.time.times.values()
    assert equal_time == pytest.approx(4.0)  # the baseline's 40 steps at 0.1 s; ngt_default took 6 s
    # ngt_default at 4.0 s is between its evaluations at 3.0 s (step 20) and 4.5 s (step 30)
    for seed, d in DIFFS["ngt_default"].items():
        v20, v30 = val_curve(BASE[seed] + d)[2:4]
        assert t.at[f"ngt_default seed={seed}", "val_loss_at_time"] == pytest.approx(v20 + (1.0 / 1.5) * (v30 - v20))
    at_time = row(a.vs_baseline_time, "ngt_default")
    diffs = [t.at[f"ngt_default seed={s}", "val_loss_at_time"] - t.at[f"baseline seed={s}", "val_loss_at_time"]
             for s in BASE]
    assert at_time["delta"] == pytest.approx(np.mean(diffs)) and at_time["verdict"] == "beyond noise"
    assert at_time["direction"] == "worse"  # fewer steps in the same time: its per-step lead is gone
    # Time to come down to the baseline's mean loss at step 40 (3.00): a straight line in steps, 0.15 s a step.
    reach = a.time.reach.set_index("label")
    want = np.mean([40 * (1 - (3.00 - (BASE[s] + d))) * 0.15 for s, d in DIFFS["ngt_default"].items()])
    assert reach.at["ngt_default", "mean_s"] == pytest.approx(want)
    assert reach.at["mass_in_value", "reached"] == 0 and math.isnan(reach.at["mass_in_value", "mean_s"])
    sec = (sweep / "Summary.md").read_text()
    assert "not reached (0 of 3 seeds)" in sec and f"{want:.1f} s" in sec


def test_unlike_training_times_of_one_variant_call_for_caution(built):
    _, a = built
    assert a.time.caution() is None  # every variant's seeds took the same time here
    uneven = a.time.table.assign(elapsed_s=[2.0 if name == "bare seed=5" else 1.0 for name in a.time.table["name"]])
    caution = EqualTime(a.time.times, uneven, a.time.reach).caution()
    assert "(bare) took up to 2.0x as long" in caution


def test_results_csv_keeps_one_row_per_run_with_the_comparison_columns(built):
    sweep, a = built
    csv = pd.read_csv(sweep / "results.csv").set_index("run")
    assert len(csv) == len(list(sweep.glob("*/summary.json")))
    assert (csv["comparison_step"] == 40).all()
    assert csv["lr_chosen"].to_dict() == (csv["status"] == "completed").to_dict()  # paused: no best lr at step 40
    assert csv.at["ngt_default-1", "val_loss_at_step"] == pytest.approx(BASE[1] + DIFFS["ngt_default"][1])
    assert csv.at["ngt_default-1", "equal_time_s"] == pytest.approx(4.0)
    assert csv.at["ngt_default-1", "time_to_baseline_s"] == pytest.approx(40 * (1 - 0.05) * 0.15)


# A grid over learning rates: {variant: {lr: {seed: final loss}}}; None: the run diverged before the end.
LR_GRID = {
    "baseline": {1e-3: {1: 3.10, 2: 3.12}, 2e-3: {1: 3.00, 2: 3.02}, 4e-3: {1: 3.05, 2: 3.07}},
    "ngt_default": {1e-3: {1: 3.20, 2: 3.20}, 2e-3: {1: 3.05, 2: 3.06}, 4e-3: {1: 2.95, 2: 2.99}},
    "mass_in_value": {1e-3: {1: 3.20, 2: 3.20}, 2e-3: {1: 3.04, 2: 3.06}, 4e-3: {1: 2.90, 2: None}},
}


@pytest.fixture(scope="module")
def lr_grid(tmp_path_factory):
    sweep = tmp_path_factory.mktemp("lr") / "sweep"
    for variant, rates in LR_GRID.items():
        for lr, seeds in rates.items():
            for seed, final in seeds.items():
                losses = val_curve(final) if final is not None else val_curve(3.0)[:2]
                write_run(sweep / f"{variant}-{lr}-{seed}", variant, seed, losses, lr=lr,
                          status=Status.completed if final is not None else Status.failed)
    return analyse(load_runs([sweep], sweep))


def test_each_variant_at_its_own_best_learning_rate(lr_grid):
    a = lr_grid
    assert a.results["group"].nunique() == 1  # train.lr does not split the grid into groups
    best = a.at.lrs[a.at.lrs["best"]].set_index("label")
    assert best["lr"].to_dict() == {"baseline": 2e-3, "ngt_default": 4e-3, "mass_in_value": 2e-3}
    # ngt_default's best is the highest rate it tried: the optimum may lie beyond the grid
    assert best["edge"].to_dict() == {"baseline": None, "ngt_default": "highest", "mass_in_value": None}
    # mass_in_value's lowest mean is at 4e-3, where a seed diverged: not a rate to pick
    r = row(a.vs_baseline, "ngt_default")
    d = [LR_GRID["ngt_default"][4e-3][s] - LR_GRID["baseline"][2e-3][s] for s in (1, 2)]
    assert r["n"] == 2 and r["delta"] == pytest.approx(np.mean(d))
    assert r["high"] - r["delta"] == pytest.approx(T975[1] * np.std(d, ddof=1) / math.sqrt(2))
    assert (r["lr_other"], r["lr_ref"]) == (4e-3, 2e-3)
    line = a.verdict_lines()[1]
    assert line.startswith("ngt_default (lr 0.004) vs baseline (lr 0.002): ")
    assert re.search(r"lr=0\.004 seed=1", " ".join(a.results["name"]))


@pytest.mark.parametrize("name,variants,rates,seeds", [
    ("demo_lr", 3, [5e-4, 1e-3, 2e-3], [1, 2]),
    ("w3_25m_lr", 6, [7.5e-5, 1.5e-4, 3e-4, 6e-4, 1.2e-3], [42, 43, 44]),
])
def test_named_learning_rate_sweeps(name, variants, rates, seeds):
    """sweep=NAME grids variant x train.lr x seed, the rates log-spaced (a factor 2 apart)."""
    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=[f"sweep={name}"], return_hydra_config=True)
        params = cfg.hydra.sweeper.params
        assert len(params["variant"].split(",")) == variants and "baseline" in params["variant"]
        assert [int(s) for s in str(params["seed"]).split(",")] == seeds
        swept = [compose("config", overrides=[f"sweep={name}", f"train.lr={x}"]).train.lr
                 for x in params["train.lr"].split(",")]
    assert swept == pytest.approx(rates) and np.diff(np.log2(swept)) == pytest.approx([1.0] * (len(rates) - 1))
