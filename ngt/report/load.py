"""Run directories in, two pandas tables out: one row per run, one row per evaluation.

Only the run directory contract is read (``ngt.rundir``: summary.json, metrics.jsonl,
``.hydra/``), so a report can be made of runs still going, of runs that failed, and of
run directories copied off another machine.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Optional

import pandas as pd
import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException

from ngt.config import is_neutral
from ngt.errors import NGTError, os_error_line
from ngt.records import RunSummary, Status
from ngt.rundir import METRICS, SUMMARY, RunDir
from ngt.naming import sweep_dir_overrides
from ngt.provenance import CodeVersion
from ngt.report import rungs

# What the trainer measured, copied from summary.json into each run's row.
MEASURED = ("params", "val_loss_full", "tokens_per_step", "peak_memory_mb", "peak_memory_kind", "device", "attn_impl",
            "compiled", "torch_version", "cuda_version")
# Overrides that pick what a run is (its label) and which replicate it is (its seed);
# every other override puts the run in a group, and runs are compared within a group.
LABEL_KEYS = ("variant",)
REPLICATE_KEYS = ("seed", "data_seed")
# Overrides tuned per variant: runs differing only in them are in one group, and each
# variant is compared at its own best value (ngt.report.lr).
TUNED_KEYS = ("train.lr",)
# A run's own folders: they hold no runs, and tb/ can hold many files.
RUN_PARTS = ("checkpoints", "tb", ".hydra")


@dataclass(frozen=True)
class Sweep:
    runs: pd.DataFrame  # index: run id (path relative to the report); see ``load_runs``
    metrics: pd.DataFrame  # one row per evaluation: run, step, train/loss, val/loss, ...
    override_keys: list[str]  # the override columns of ``runs``, in first-seen order
    sweep_commands: list[str]  # ``python -m ngt.screen -m ...``, the last launch into each sweep directory
    halving: Optional[dict[str, Any]] = None  # a halving sweep's decisions (halving.json), ngt.report.rungs


def is_run_dir(path: Path) -> bool:
    return (path / SUMMARY).exists() or (path / METRICS).exists() or (path / ".hydra" / "config.yaml").exists()


def find_run_dirs(paths: Iterable[Path]) -> list[Path]:
    """Every run directory at or under ``paths`` (a run dir, a sweep dir, or a parent of sweeps)."""
    found: list[Path] = []
    for top in paths:
        if not top.is_dir():
            raise NGTError(f"no such directory: {top}")
        for root, dirs, _ in os.walk(top):
            if is_run_dir(Path(root)):
                found.append(Path(root))
                # Runs can lie below a run: one trained into a sweep directory (hydra.run.dir=SWEEP).
                dirs[:] = [d for d in dirs if d not in RUN_PARTS]
            dirs.sort()
    if not found:
        listed = ", ".join(str(p) for p in paths)
        raise NGTError(f"no run directories under {listed} (a run directory holds summary.json, metrics.jsonl "
                       "or .hydra/config.yaml)")
    return sorted(set(found))


def _yaml(path: Path, kind: type = object) -> Any:
    """The file's YAML if it holds a ``kind``; None if it is absent. Raises NGTError where
    it is damaged."""
    try:
        value = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise NGTError(f"{path} is damaged ({str(e).splitlines()[0][:80]})") from None
    if value is not None and not isinstance(value, kind):
        raise NGTError(f"{path} is damaged (not a {kind.__name__})")
    return value


def _hydra_record(path: Path) -> tuple[dict, list[str], Optional[str]]:
    """Hydra's record of a run: its config, its overrides, and what is damaged in them."""
    try:
        config = _yaml(path / ".hydra" / "config.yaml", dict) or {}
        overrides = [str(o) for o in _yaml(path / ".hydra" / "overrides.yaml", list) or []]
        return config, overrides, None
    except NGTError as e:
        return {}, [], str(e)


def _override_items(overrides: list[str]) -> dict[str, str]:
    """{'model.d_model': '32', ...}; '+key=v' adds a key, '~key' deletes one (kept as such).
    Values as Hydra reads them: a grid records ``False`` where a single run says ``false``,
    ``1e-3`` and ``0.001`` are one rate, and runs are grouped by what they trained with."""
    parser, items = OverridesParser.create(), {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key.startswith("~"):
            items[key] = value
            continue
        try:
            value = parser.parse_override(o).get_value_element_as_str()
        except (HydraException, ValueError):  # a damaged record: the text as it stands
            pass
        items[key.lstrip("+")] = value
    return items


def _updated(path: Path) -> str:
    """When the run last wrote its record: tells a live 'running' run from a dead one."""
    times = [p.stat().st_mtime for p in (path / SUMMARY, path / METRICS) if p.exists()]
    return datetime.fromtimestamp(max(times), timezone.utc).isoformat(timespec="seconds") if times else ""


def _status(summary: RunSummary | None, metrics: list[dict]) -> str:
    if summary is not None:
        return str(summary.status)
    # The trainer writes summary.json before its first evaluation, so no summary means the
    # run died (or is) between Hydra creating its directory and the trainer starting.
    return "running" if metrics else "started"


def _read_summary(rd: RunDir) -> tuple[RunSummary | None, str | None]:
    """The run's summary, or None and why it could not be read."""
    try:
        return rd.read_summary(), None
    except NGTError as e:
        return None, str(e)
    except OSError as e:  # a directory in its place, no permission
        return None, os_error_line(e)


def _read_metrics(rd: RunDir) -> tuple[list[dict], Optional[str]]:
    try:
        return rd.read_metrics(), None
    except NGTError as e:
        return [], str(e)
    except OSError as e:
        return [], os_error_line(e)


def _row_written(summary: RunSummary, config: dict) -> bool:
    """Whether the trainer wrote the row of the summary's final_step before the summary: the
    row of an evaluated step precedes the completed, paused or diverged (failed_step) summary
    of that step. A running or interrupted summary, or a failure ngt.runner recorded, may
    stand at the step its launch started from, whose row a resume has yet to make again."""
    s, step = summary, summary.final_step
    if s.status not in (Status.completed, Status.paused) and not (s.status == Status.failed and s.failed_step):
        return False
    budget = config.get("budget")
    every = budget.get("eval_every") if isinstance(budget, dict) else None
    if isinstance(every, int) and isinstance(step, int) and every > 0 and step % every == 0:
        return True
    # max_steps is evaluated too, where the last launch took a step (one from a checkpoint at
    # max_steps makes that row again only at an eval_every step). -1: a fresh run.
    started = (s.resumed_at_steps or [-1])[-1]
    return s.status == Status.completed and step == s.max_steps and isinstance(started, int) and step > started


def _cut_short(rd: RunDir, summary: RunSummary | None, config: dict, metrics: list[dict]) -> Optional[str]:
    """Why metrics.jsonl is not the whole record: it ends before the step whose row the
    trainer wrote before its summary (a file cut or copied short). Its losses would be taken
    for the run's final ones."""
    if summary is None or not _row_written(summary, config):
        return None
    last = max((r["step"] for r in metrics), default=None)
    if last is not None and last >= summary.final_step:
        return None
    ends = f"ends at step {last}" if last is not None else "has no rows" if rd.metrics.exists() else "is missing"
    return f"{rd.metrics} {ends} but {SUMMARY} says the run {summary.status} at step {summary.final_step}"


def _run_row(path: Path, root: Path) -> tuple[dict[str, Any], list[dict], dict[str, str]]:
    rd = RunDir(path)
    summary, damaged = _read_summary(rd)
    metrics, bad_metrics = _read_metrics(rd)
    hydra_config, overrides, bad_record = _hydra_record(path)
    items = _override_items(overrides)
    # The config the run recorded itself, else Hydra's (a run that never reached the trainer).
    config = (summary.config if summary else None) or hydra_config
    cut = _cut_short(rd, summary, config, metrics)
    if cut:
        metrics = []  # its last rows would pass for the run's final numbers
    damaged = damaged or bad_metrics or cut
    variant_cfg, model_cfg, train_cfg = config.get("variant", {}), config.get("model", {}), config.get("train", {})
    steps = [r["step"] for r in metrics]
    row = {
        "run": os.path.relpath(path, root),
        "variant": summary.variant if summary else variant_cfg.get("name") or items.get("variant", "?"),
        "arch": summary.arch if summary else variant_cfg.get("arch"),
        **{k: summary.seeds.get(k) if summary else config.get(k) for k in ("seed", "data_seed", "eval_seed")},
        "status": "unreadable" if damaged else _status(summary, metrics),
        "message": "; ".join(m for m in (damaged, bad_record, summary.message if summary else None) if m) or None,
        # The summary's step is written when the run ends; a live or killed run has only its metrics.
        "final_step": max([summary.final_step if summary else 0, *steps]),
        "max_steps": summary.max_steps if summary else config.get("budget", {}).get("max_steps"),
        # throughput is comparable only between runs alike in device, backend and compilation
        **{k: getattr(summary, k, None) for k in MEASURED},
        "mass": variant_cfg.get("mass"),
        "radius": variant_cfg.get("radius"),
        "n_layers": model_cfg.get("n_layers"),
        "lr": train_cfg.get("lr"),
        "model": summary.model if summary else model_cfg.get("name"),
        "data": summary.data if summary else config.get("data", {}).get("name"),
        "sweep": config.get("sweep"),
        "code": CodeVersion.from_dict(summary.code).short() if summary and summary.code else None,
        "block_size": train_cfg.get("block_size"),
        "overrides": shlex.join(overrides),  # as typed on a command line
        "checkpoint": str(rd.last) if rd.last.exists() else None,
        "updated": _updated(path),
        "path": str(path.resolve()),
    }
    return row, metrics, items


def _sweep_command(sweep_dir: Path) -> str | None:
    """The command that last launched a sweep into ``sweep_dir``, from the multirun.yaml Hydra
    writes there (each launch replaces it), as typed: without what ``ngt.screen`` adds itself."""
    try:
        saved = _yaml(sweep_dir / "multirun.yaml", dict) or {}
    except NGTError:
        return None
    overrides = saved.get("hydra", {}).get("overrides", {})
    task, hydra = overrides.get("task"), overrides.get("hydra") or []
    if task is None:
        return None
    implied = {"hydra.mode=MULTIRUN", *sweep_dir_overrides(task)[len(task):]}
    args = [*task, *(h for h in hydra if h not in implied)]
    return "python -m ngt.screen -m " + " ".join(shlex.quote(a) for a in args)


def _names(runs: pd.DataFrame) -> pd.Series:
    """Short unique display names: the label, plus the learning rate, the seed and the group
    only where they tell runs apart."""
    varying_groups = runs["group"].nunique() > 1
    seeds_per_label = runs.groupby(["label", "group"])["seed"].transform("nunique")
    lrs_per_label = runs.groupby(["label", "group"])["lr"].transform("nunique")
    names = []
    for (_, r), n_seeds, n_lrs in zip(runs.iterrows(), seeds_per_label, lrs_per_label):
        name = r["label"]
        if n_lrs > 1 and pd.notna(r["lr"]):
            name += f" lr={r['lr']:g}"
        if n_seeds > 1:
            name += f" seed={r['seed']}"
        if varying_groups and r["group_label"]:
            name += f" [{r['group_label']}]"
        names.append(name)
    names = pd.Series(names, index=runs.index)
    dup = names.groupby(names).cumcount()
    return names.where(dup == 0, names + " #" + (dup + 1).astype(str))


def load_runs(paths: Iterable[Path], root: Path) -> Sweep:
    """Read every run under ``paths``; run ids are paths relative to ``root`` (where the report goes)."""
    paths = [Path(p) for p in paths]
    rows, metric_frames, items_per_run = [], [], []
    found = find_run_dirs(paths)
    for path in found:
        row, metrics, items = _run_row(path, root)
        rows.append(row)
        items_per_run.append(items)
        if metrics:
            metric_frames.append(pd.DataFrame(metrics).assign(run=row["run"]))

    keys: list[str] = []
    for items in items_per_run:
        keys += [k for k in items if k not in keys]
    override_keys = [k for k in keys if k not in ("variant", "seed", "data_seed", "eval_seed")]
    for row, items in zip(rows, items_per_run):
        label_parts = [f"{k}={v}" for k, v in items.items() if k.startswith("variant.")]
        row["label"] = row["variant"] + (f"[{','.join(label_parts)}]" if label_parts else "")
        # Neutral settings (where a run went, budget.stop_at of a halving rung) group nothing.
        group = {k: v for k, v in items.items() if k not in LABEL_KEYS + REPLICATE_KEYS + TUNED_KEYS
                 and not k.startswith("variant.") and not is_neutral(k)}
        row["group"] = ",".join(f"{k}={v}" for k, v in sorted(group.items()))
        row["_group_items"] = group
        row.update({k: items.get(k) for k in override_keys})
    runs = pd.DataFrame(rows).set_index("run", drop=False)
    # A run with no readable config has no lr: NaN, not None, so lr is a float column in every
    # table and merge (lr.chosen_runs).
    runs["lr"] = pd.to_numeric(runs["lr"], errors="coerce").astype(float)
    # Baseline first, then variants by name, seeds in order: the order of every table.
    order = runs.assign(_b=runs["label"] != "baseline").sort_values(["group", "_b", "label", "lr", "seed"],
                                                                      kind="stable")
    runs = runs.loc[order.index]
    runs["group_label"] = _group_labels(runs.pop("_group_items"))
    runs["name"] = _names(runs)

    metrics = pd.concat(metric_frames, ignore_index=True) if metric_frames else pd.DataFrame(columns=["run", "step"])
    metrics = metrics.sort_values(["run", "step"], kind="stable").reset_index(drop=True)
    for col in metrics.columns:
        if col != "run":
            metrics[col] = pd.to_numeric(metrics[col], errors="coerce")  # null (diverged) -> NaN
    # A sweep's multirun.yaml sits beside its runs, also when a parent of several sweeps was given.
    sweep_dirs = sorted({*paths, *(p.parent for p in found)})
    commands = sorted({c for d in sweep_dirs for c in [_sweep_command(d)] if c})
    return Sweep(runs, metrics, override_keys, commands, rungs.read(sweep_dirs))


def _group_labels(groups: pd.Series) -> list[str]:
    """Each group shown by only the overrides that differ between groups."""
    keys = {k for g in groups for k in g}
    varying = sorted(k for k in keys if len({g.get(k) for g in groups}) > 1)
    return [",".join(f"{k}={g[k]}" for k in varying if k in g) for g in groups]
