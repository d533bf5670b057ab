"""The run directory: the contract between a run and every tool that reads it.

    metrics.jsonl         one JSON object per evaluation
    summary.json          status, seeds, params, losses, throughput, device
    checkpoints/last.pt   full state, every checkpoint_every steps and at the end
    checkpoints/best.pt   full state at the best validation loss
    tb/                   TensorBoard scalars and hparams
    .hydra/, <job>.log    Hydra's record of the config and the run's log
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ngt.checkpoint import atomic_write_bytes

SUMMARY = "summary.json"
METRICS = "metrics.jsonl"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def last(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "checkpoints" / "best.pt"

    @property
    def metrics(self) -> Path:
        return self.path / METRICS

    @property
    def summary(self) -> Path:
        return self.path / SUMMARY

    @property
    def tb(self) -> Path:
        return self.path / "tb"

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics.exists():
            return []
        rows = []
        for line in self.metrics.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut by a kill mid-write: everything after it is lost work
        return rows

    def rewrite_metrics(self, rows: Iterable[dict[str, Any]]) -> None:
        """Replace metrics.jsonl atomically (used on resume to drop evaluations past
        the checkpoint, which the resumed run will produce again)."""
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write_bytes(self.metrics, lambda f: f.write(text.encode()))

    def append_metrics(self, row: dict[str, Any]) -> None:
        with open(self.metrics, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def read_summary(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.summary.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None

    def write_summary(self, summary: dict[str, Any]) -> None:
        text = json.dumps(summary, indent=2, default=_jsonable) + "\n"
        atomic_write_bytes(self.summary, lambda f: f.write(text.encode()))


def _jsonable(x: Any) -> Any:
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def finite_or_none(x: float | None) -> float | None:
    """JSON has no NaN; a diverged value is recorded as null."""
    return x if x is not None and math.isfinite(x) else None
