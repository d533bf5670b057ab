"""report.md: the ranked table and the pairwise ablation questions of the original's screen (docs/original.md#artifacts)."""

from __future__ import annotations

import pandas as pd

from ngt.report.analysis import Analysis
from ngt.report.markdown import integer, num, ratio, signed, table, text
from ngt.report.stats import BEYOND, DIRECTIONAL, INDISTINGUISHABLE


def ranked(a: Analysis) -> str:
    head = "## Ranking\n\n"
    if a.at.step is None:
        return head + "No step was evaluated by every compared run: nothing to rank.\n"
    t = a.at.table.join(a.results[["val_loss_best", "best_step", "params"]]).join(a.speeds[["steps_per_s"]])
    t["rank"] = t.groupby("group")["val_loss"].rank(method="min").astype(int)
    t["best"] = [f"{v:.4f} ({s})" for v, s in zip(t["val_loss_best"], t["best_step"])]
    cols = {"rank": ("#", integer), "name": ("run", text), "val_loss": (f"val loss @{a.at.step}", num(4)),
            "ppl": ("ppl", num(2)), "delta": ("Δ vs baseline", signed(4)), "best": ("best (step)", text),
            "steps_per_s": ("steps/s", num(3)), "params": ("params", integer), "status": ("status", text)}
    out = head + f"Ranked by validation loss at step {a.at.step} (see Summary.md, section 1)"
    out += ", within each group of identical other overrides.\n\n" if a.several_groups else ".\n\n"
    out += table(t, cols)
    if len(a.at.missing):
        out += f"\nNot ranked (no evaluation at step {a.at.step}): " + ", ".join(
            f"{r['name']} ({r['status']})" for _, r in a.at.missing.iterrows()) + ".\n"
    return out


def _answer(r: pd.Series) -> str:
    """The verdict in the Summary's words, naming the variant that came out lower."""
    if isinstance(r["missing"], str):
        return f"missing: {r['missing']}"
    lower = r["other"] if r["delta"] < 0 else r["reference"]
    if r["verdict"] == DIRECTIONAL:
        return f"{DIRECTIONAL} (one seed): {lower} lower" if r["delta"] != 0 else f"{DIRECTIONAL} (one seed): equal"
    if r["verdict"] == BEYOND:
        return f"{BEYOND}: {lower} better"
    return INDISTINGUISHABLE


def ablations(a: Analysis) -> str:
    t = a.ablations.copy()
    t["pair"] = t["other"] + " vs " + t["reference"]
    if a.several_groups:
        labels = a.group_labels()
        t["pair"] += t["group"].map(lambda g: f" [{labels[g]}]" if g is not None and labels[g] else "")
    t["ci"] = [f"[{lo:+.4f}, {hi:+.4f}]" if pd.notna(lo) else "n/a" for lo, hi in zip(t["low"], t["high"])]
    t["seeds"] = [f"{n} ({m})" if pd.notna(n) else "" for n, m in zip(t["n"], t["method"])]
    t["verdict"] = t.apply(_answer, axis=1)
    best = " (each variant at its own best learning rate)" if a.tuned else ""
    return ("## Ablations\n\nEach line answers one question: Δ = loss(second) − loss(first) at step "
            f"{a.at.step}{best}, paired by seed as in Summary.md's Answer (negative: the second is better); "
            "P(better): bootstrap probability that the second is better; speed = second's steps/s over the "
            "first's.\n\n"
            + table(t, {"question": ("question", text), "pair": ("second vs first", text),
                        "delta": ("Δ val loss", signed(4)), "ci": ("95% CI", text), "seeds": ("seeds", text),
                        "p_better": ("P(better)", num(2)), "speed_ratio": ("speed", ratio),
                        "verdict": ("answer", text)}))


def render(a: Analysis, title: str) -> str:
    return f"# Report: {title}\n\n" + ranked(a) + "\n" + ablations(a)
