"""Summary.md: what the original's users wrote by hand after a screen (docs/original.md#artifacts)."""

from __future__ import annotations

import pandas as pd

from ngt.report.analysis import Analysis
from ngt.report.markdown import integer, num, percent, ratio, signed, table, text


def _group_note(a: Analysis, group_label: str) -> str:
    return f" [{group_label}]" if a.several_groups and group_label else ""


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
               "(mean over its seeds).\n")
    out.append(table(a.at.table, {"name": ("run", text), "val_loss": ("val loss", num(4)), "ppl": ("ppl", num(2)),
                                  "delta": ("Δ vs baseline", signed(4)), "status": ("status", text)}))
    if len(a.at.missing):
        out.append(f"\nNot compared (no evaluation at step {a.at.step}):\n")
        out += [f"- {r['name']}: {r['status']}, last evaluation at step {text(r['last_eval_step']) or 'none'}"
                for _, r in a.at.missing.iterrows()]
        out.append("")
    if a.at.table["baseline"].isna().any():
        out.append("\nΔ is n/a where the run's group has no baseline run at this step.\n")
    return "\n".join(out) + "\n"


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
    if not a.seeds:
        return head + ("Every variant has one seed: the ranking is directional, not a measured difference "
                       "(rerun with e.g. `seed=1,2,3` to measure the seed-to-seed noise).\n")
    rows = []
    for s in a.seeds:
        d = s.diff
        rows.append({"variant": s.label, "n": s.n, "mean": s.mean, "std": s.std,
                     "delta": d.delta if d else None, "ci": f"[{d.low:+.4f}, {d.high:+.4f}]" if d else "n/a",
                     "verdict": ("exceeds seed noise" if d.beyond_noise else "within seed noise") if d
                     else ("(baseline)" if s.label == "baseline" else "baseline has fewer than 2 seeds")})
    t = pd.DataFrame(rows)
    single = sorted(set(a.at.table["label"]) - {s.label for s in a.seeds})
    note = (f"\nOne seed only, so directional: {', '.join(single)}.\n" if single else "")
    return (head + f"Validation loss at step {a.at.step} over seeds; Δ to the baseline's mean with a 95% Welch "
            "interval (t quantile at the rounded-down df). A difference exceeds the seed noise when its "
            "interval excludes 0.\n\n"
            + table(t, {"variant": ("variant", text), "n": ("seeds", integer), "mean": ("mean", num(4)),
                        "std": ("std", num(4)), "delta": ("Δ vs baseline", signed(4)), "ci": ("95% CI", text),
                        "verdict": ("", text)}) + note)


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
             "(summary.json, metrics.jsonl, .hydra/); results.csv holds every number per run.\n",
             runs_section(a), fixed_step(a), best_vs_last(a), throughput(a), params(a), seeds(a), idle(a),
             commands(a)]
    return "\n".join(parts)
