"""Summary.md: what the original's users wrote by hand after a screen (docs/original.md#artifacts)."""

from __future__ import annotations

import pandas as pd

from ngt.report import rungs
from ngt.report.analysis import Analysis
from ngt.report.compare import variant
from ngt.report.curves import same_note
from ngt.report.markdown import integer, num, percent, ratio, signed, table, text
from ngt.report.stats import LEVEL, POWER
from ngt.report.tables import distinct, machine


def _shown(a: Analysis, t: pd.DataFrame, column: str = "label") -> list[str]:
    return a.with_group(t[column], t["group"])


def _group_note(a: Analysis, group_label: str) -> str:
    return f" [{group_label}]" if a.several_groups and group_label else ""


def answer(a: Analysis) -> str:
    """The screen's answer first: each variant against the baseline, beyond seed noise or not."""
    head = "## Answer\n\n"
    if a.vs_baseline.empty:
        return head + ("No variant could be compared with a baseline: no group has both a baseline run and "
                       "another variant.\n")
    best = ", each at its own best learning rate" if a.tuned else ""
    out = [head + f"Each variant against the baseline of its group in validation loss at step **{a.at.step}**{best}, "
           "paired by seed: the difference (negative: the variant is lower, i.e. better) with its 95% interval. "
           "**beyond noise**: the interval excludes 0; **indistinguishable**: it does not, at these seeds; "
           "**directional**: one seed, so no interval and no verdict. A variant that stopped before that step (a "
           "halving sweep's rung, a run still going) is compared at the last step it and the baseline both "
           "evaluated, named in its line.\n"]
    out += [f"- {x}" for x in a.verdict_lines()]
    out.append(f"\nAt equal training time ({a.equal_times()}, the longest every compared run reached; section 1):\n")
    out += [f"- {x}" for x in a.verdict_lines(at_time=True)]
    if a.time.caution():
        out.append(f"\nCaution: {a.time.caution()}.")
    if len(a.same):
        out.append("\nIdentical curves (within float rounding):\n")
        out += [f"- {same_note(r)}" for _, r in a.same.iterrows()]
    return "\n".join(out) + "\n"


def runs_section(a: Analysis) -> str:
    r = a.results
    counts = r["status"].value_counts()
    tally = ", ".join(f"{n} {status}" for status, n in counts.items())
    cols = {"name": ("run", text), "status": ("status", text), "final_step": ("step", integer),
            "max_steps": ("of", integer), "updated": ("last write (UTC)", text), "message": ("message", text),
            "run": ("directory", text)}
    return f"## Runs\n\n{len(r)} runs: {tally}.\n\n" + table(r, cols)


def fixed_step(a: Analysis) -> str:
    out = ["## 1. Fixed-step comparison\n"]
    if a.at.step is None:
        return out[0] + "\nNo step was evaluated by every compared run: nothing to compare.\n"
    out.append(f"Validation loss at step **{a.at.step}**, the largest step that every completed run evaluated "
               "(every run with an evaluation when none completed); Δ is to the baseline of the same group "
               f"(mean over its seeds{' at its best learning rate' if a.tuned else ''}).\n")
    cols = {"name": ("run", text), "val_loss": ("val loss", num(4)), "ppl": ("ppl", num(2)),
            "delta": ("Δ vs baseline", signed(4)), "status": ("status", text)}
    if a.tuned:
        cols["best"] = ("at its best lr", text)
    out.append(table(a.at.table.assign(best=a.at.table["chosen"].map({True: "yes", False: ""})), cols))
    if len(a.at.missing):
        out.append(f"\nNot compared (no evaluation at step {a.at.step}):\n")
        out += [f"- {r['name']}: {r['status']}, last evaluation at step {text(r['last_eval_step']) or 'none'}"
                for _, r in a.at.missing.iterrows()]
        out.append("")
    if a.at.table["baseline"].isna().any():
        out.append("\nΔ is n/a where the run's group has no baseline run at this step.\n")
    return "\n".join(out) + "\n" + learning_rates(a) + equal_time(a)


def learning_rates(a: Analysis) -> str:
    if not a.tuned:
        return ""
    t = a.at.lrs.copy()
    t["shown"] = _shown(a, t)
    t["seeds"] = [f"{r}/{n}" for r, n in zip(t["reached"], t["runs"])]
    t["chosen"] = [("best" + (f", the {e} rate tried: the optimum may lie beyond it" if e else "")) if b else ""
                   for b, e in zip(t["best"], t["edge"])]
    return ("\n### Learning rates\n\nEach variant is compared at its own best learning rate: the lowest mean "
            f"validation loss over seeds at step {a.at.step}, among the rates with every seed there where any "
            "has (a rate that failed a seed is not one to recommend). Picked on the same evaluation that compares "
            "the variants, which flatters each variant alike.\n\n"
            + table(t, {"shown": ("variant", text), "lr": ("lr", num_g), "seeds": ("seeds at the step", text),
                        "mean": ("mean val loss", num(4)), "chosen": ("", text)}))


def num_g(x: object) -> str:
    return "n/a" if x is None or x != x else f"{float(x):.3g}"


def equal_time(a: Analysis) -> str:
    t = a.time.table
    head = "\n### At equal training time\n\n"
    if t.empty:
        return head + "No run compared: nothing to read at equal time.\n"
    reach = a.time.reach.assign(
        shown=lambda r: _shown(a, r),
        got=lambda r: [f"{m:.1f} s" if m == m else f"not reached ({k} of {n} seeds)"
                       for m, k, n in zip(r["mean_s"], r["reached"], r["seeds"])])
    return (head + "Each compared run read on its own (training seconds, validation loss) curve, interpolated "
            "linearly between evaluations, at the longest training time every compared run of its group "
            f"reached ({a.equal_times()}): a variant slower per step has had fewer steps there. Training seconds "
            "leave out evaluation and step 0's start-up.\n\n"
            + (f"**Caution**: {a.time.caution()}.\n\n" if a.time.caution() else "")
            + table(t, {"name": ("run", text), "equal_time_s": ("at s", num(1)),
                        "val_loss_at_time": ("val loss", num(4)), "val_loss": (f"at step {a.at.step}", num(4)),
                        "elapsed_s": ("its s at that step", num(1))})
            + "\nTime to reach the baseline's loss at the comparison step (the mean of its seeds), interpolated "
            "on each seed's curve; the baseline took its own time to that step.\n\n"
            + table(reach, {"shown": ("variant", text), "target": ("baseline's loss", num(4)),
                            "got": ("time to reach it", text), "baseline_s": ("baseline's time", num(1)),
                            "ratio": ("vs baseline", ratio)}))


def best_vs_last(a: Analysis) -> str:
    t = a.results.assign(gap=a.results["val_loss_final"] - a.results["val_loss_best"])
    return ("## 2. Best vs last\n\nBest validation loss over the run's evaluations against its last evaluation; "
            "a positive gap means the run got worse after its best step.\n\n"
            + table(t, {"name": ("run", text), "val_loss_best": ("best", num(4)), "best_step": ("at step", integer),
                        "val_loss_final": ("last", num(4)), "last_eval_step": ("at step", integer),
                        "gap": ("last - best", signed(4)), "status": ("status", text)}))


def throughput(a: Analysis) -> str:
    head = "## 3. Throughput\n\n"
    if not a.window:
        return head + "No step window shared by the compared runs: no throughput comparison.\n"
    lo, hi = a.window
    how = ("given with --window" if a.window_given
           else "the first evaluation after step 0 to the comparison step, shared by every compared run")
    return (head + f"Over steps **{lo} → {hi}** ({how}): (steps) / (training seconds between the two), as the "
            "original's 500 → 15000; training time excludes evaluation and step 0's start-up. "
            "Ratio: to the baseline of the same group.\n\n"
            + table(a.speeds, {"name": ("run", text), "steps_per_s": ("steps/s", num(3)),
                               "tokens_per_s": ("tokens/s", num(0)), "ratio": ("vs baseline", ratio)}))


def params(a: Analysis) -> str:
    t = a.params.assign(shown=[lab + _group_note(a, g) for lab, g in zip(a.params["label"], a.params["group_label"])])
    return ("## 4. Parameter counts\n\n"
            + table(t, {"shown": ("variant", text), "params": ("parameters", integer),
                        "vs_baseline": ("vs baseline", percent)}))


def seeds(a: Analysis) -> str:
    head = "## 5. Seeds\n\n"
    if a.seeds.empty:
        return head + "No run reached the comparison step.\n"
    spread = a.seeds.assign(shown=_shown(a, a.seeds))
    out = head + (f"Validation loss at step {a.at.step} over seeds, per variant"
                  f"{' at its best learning rate' if a.tuned else ''}.\n\n"
                  + table(spread, {"shown": ("variant", text), "n": ("seeds", integer), "mean": ("mean", num(4)),
                                   "std": ("std", num(4))}))
    if (a.seeds["n"] < 2).all():
        out += ("\nEvery variant has one seed: each difference is directional, not a measured one (rerun with "
                "e.g. `seed=1,2,3` to measure the seed-to-seed noise).\n")
    return out + "\n" + _paired(a)


def _paired(a: Analysis) -> str:
    t = a.vs_baseline[a.vs_baseline["missing"].isna()]
    if t.empty:
        return ""
    t = t.assign(ci=[f"[{lo:+.4f}, {hi:+.4f}]" if lo == lo else "n/a" for lo, hi in zip(t["low"], t["high"])],
                 pair=a.with_group([variant(r, a.tuned) for _, r in t.iterrows()], t["group"]))
    return (f"Against the baseline: runs with the same seed, data_seed and eval_seed are a pair (the same batches "
            f"and evaluation tokens); Δ is the mean paired difference, with a {LEVEL:.0%} t interval on the "
            "paired differences (Welch's on the two sides where seeds are not shared). P(better): bootstrap "
            "probability, resampling seeds, that the variant's mean loss is lower. Detectable: the smallest true "
            f"difference a two-sided {1 - LEVEL:.0%} test on these seeds finds with {POWER:.0%} power, "
            "(t(0.975, df) + t(0.80, df)) x the standard error of Δ.\n\n"
            + table(t, {"pair": ("variant", text), "n": ("seeds", integer), "method": ("how", text),
                        "delta": ("Δ vs baseline", signed(4)), "ci": ("95% CI", text),
                        "p_better": ("P(better)", num(2)), "mde": ("detectable", num(4)),
                        "verdict": ("verdict", text)}))


def idle(a: Analysis) -> str:
    head = ("## 6. Idle parameters\n\nLearned parameters that received no gradient or had no effect, from each "
            "run's switches, confirmed by its logged diagnostics.\n\n")
    if a.idle.empty:
        return head + "_(none: no NGT run with a hard or no cutoff, or with mass outside the scores)_\n"
    return head + table(a.idle, {"name": ("run", text), "parameter": ("parameter", text), "why": ("why", text),
                                 "evidence": ("evidence", text)})


def commands(a: Analysis) -> str:
    out = ["## 7. Reproduce\n"]
    if a.sweep.sweep_commands:
        out.append("The sweep, as last launched into its directory (Hydra keeps one multirun.yaml per directory; "
                   "run again, it skips completed runs and resumes interrupted ones):\n")
        out += [f"```bash\n{c}\n```\n" for c in a.sweep.sweep_commands]
    out.append("Each run alone (writes `outputs/runs/<overrides>/`; add `hydra.run.dir=DIR` to choose):\n")
    out.append("```bash")
    for _, r in a.results.iterrows():
        out.append(f"python -m ngt.screen {r['overrides']}".rstrip() + f"  # {r['name']}")
    out.append("```\n")
    return "\n".join(out)


def render(a: Analysis, title: str) -> str:
    parts = [f"# Summary: {title}\n\nGenerated by `python -m ngt.report` from the run directories "
             "(summary.json, metrics.jsonl, .hydra/); results.csv holds every number per run.\n\n"
             f"Trained on {machine(a.results)}; code {distinct(a.results, 'code')}.\n",
             answer(a), rungs.markdown(a.sweep.halving), runs_section(a), fixed_step(a), best_vs_last(a),
             throughput(a), params(a), seeds(a), idle(a), commands(a)]
    return "\n".join(parts)
