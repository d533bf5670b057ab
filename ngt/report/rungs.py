"""The rungs of a successive-halving sweep (hydra/sweeper=halving), from the halving.json it
writes beside its runs: at each rung's step, each configuration's mean loss difference to
the reference baseline, paired over seeds, and whether it went on; and the steps trained
against the full grid's."""

from __future__ import annotations

import html
import json
import logging
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd

from ngt.halving import STATE

log = logging.getLogger("ngt.report")
DAMAGED = "damaged"  # the key of what read() returns for a file it cannot show


def read(dirs: Iterable[Path]) -> Optional[dict[str, Any]]:
    """The decisions of the first halving sweep among ``dirs``; None where none was one;
    ``{DAMAGED: why}`` where its halving.json cannot be read or shown."""
    for d in dirs:
        path = Path(d) / STATE
        try:
            decisions = json.loads(path.read_text())
            table(decisions), saved(decisions)  # every key the report shows, of the right kind
            return decisions
        except FileNotFoundError:
            continue
        except OSError as e:
            why = e.strerror or type(e).__name__
        except ValueError as e:  # not JSON, not UTF-8, or a value of the wrong kind
            why = str(e).splitlines()[0][:80]
        except (KeyError, TypeError, AttributeError, IndexError) as e:
            why = f"not halving decisions: {type(e).__name__} {e}"[:100]
        note = f"{path} is damaged ({why}): the halving decisions are not shown"
        log.warning("report: %s", note)
        return {DAMAGED: note}
    return None


def table(decisions: dict[str, Any]) -> pd.DataFrame:
    """One row per rung and configuration: step, configuration, its paired difference to the
    reference (NaN: a run failed or never got there), and what became of it."""
    rows, steps = [], [r["step"] for r in decisions["rungs"]]
    for i, rung in enumerate(decisions["rungs"]):
        last = i == len(decisions["rungs"]) - 1
        for config, score in sorted(rung["scores"].items(), key=lambda kv: (kv[1] is None, kv[1] or 0.0, kv[0])):
            went_on = config in rung["kept"]
            fate = ("reference" if config == rung["reference"] else "trained to the end" if last
                    else f"went on to step {steps[i + 1]}" if went_on else f"stopped at step {rung['step']}")
            rows.append({"step": rung["step"], "configuration": config, "delta": score, "fate": fate})
    return pd.DataFrame(rows, columns=["step", "configuration", "delta", "fate"])


def saved(decisions: dict[str, Any]) -> str:
    trained, full = decisions["steps_trained"], decisions["steps_full_grid"]
    return (f"{trained:,} optimizer steps trained over all runs, against {full:,} for the full grid "
            f"({1 - trained / max(full, 1):.0%} saved; eta {decisions['eta']}, rungs at steps "
            f"{', '.join(str(s) for s in decisions['steps'])})")


def markdown(decisions: Optional[dict[str, Any]]) -> str:
    from ngt.report.markdown import signed, table as md_table, text

    if not decisions:
        return ""
    if DAMAGED in decisions:
        return f"## Successive halving\n\n{decisions[DAMAGED]}.\n"
    return ("## Successive halving\n\n" + saved(decisions) + ". At each rung, each configuration's mean "
            "validation loss minus the reference baseline's, paired over seeds; the best 1/eta went on.\n\n"
            + md_table(table(decisions), {"step": ("rung step", text), "configuration": ("configuration", text),
                                          "delta": ("Δ vs reference", signed(4)), "fate": ("", text)}))


def html_section(decisions: Optional[dict[str, Any]]) -> str:
    if not decisions:
        return ""
    if DAMAGED in decisions:
        return f'<h2>Successive halving</h2><p class="note">{html.escape(decisions[DAMAGED])}.</p>'
    rows = "".join(
        f"<tr><td>{r.step}</td><td>{html.escape(r.configuration)}</td>"
        f"<td>{'n/a' if pd.isna(r.delta) else f'{r.delta:+.4f}'}</td><td>{html.escape(r.fate)}</td></tr>"
        for r in table(decisions).itertuples())
    return (f"<h2>Successive halving</h2><p>{html.escape(saved(decisions))}.</p><table><tr><th>rung step</th>"
            f"<th>configuration</th><th>Δ vs reference</th><th></th></tr>{rows}</table>")
