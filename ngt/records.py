"""What a run writes down, as types: its summary (``summary.json``) and its checkpoint.

The trainer writes these and every later stage (``ngt.screen``'s checks, the report,
``ngt.generate``) reads them back through the same classes, so a field is named once.
The layout is stated in docs/run-directory.md. Summaries written before these classes
existed hold the same keys and load as they are.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from typing import Any, Optional

from ngt.config import BudgetConfig, Config, plain
from ngt.errors import NGTError


class Status(StrEnum):
    running = "running"
    interrupted = "interrupted"  # stopped by a signal; resumes from checkpoints/last.pt
    paused = "paused"  # reached budget.stop_at; goes on when launched with a later one
    completed = "completed"
    failed = "failed"


def finite_or_none(x: Optional[float]) -> Optional[float]:
    """JSON has no NaN; a diverged value is recorded as null."""
    return x if x is not None and math.isfinite(x) else None


@dataclass
class Throughput:
    """Training steps per second between two evaluated steps (docs/recipe.md#throughput)."""

    window: list[int]
    steps_per_s: Optional[float] = None
    tokens_per_s: Optional[float] = None


def throughput(elapsed: dict[int, float], window: list[int], tokens_per_step: int) -> Throughput:
    """From each evaluated step's training time: over ``window`` ([a, b] steps) or by default
    from the first evaluation after step 0 (compilation and warm-up excluded, as the
    original's 500 -> 15000) to the last."""
    if window:
        a, b = window
    else:
        evaluated = sorted(elapsed)
        after0 = [s for s in evaluated if s > 0]
        a, b = (after0[0], evaluated[-1]) if len(after0) > 1 else (evaluated[0], evaluated[-1])
    if a not in elapsed or b not in elapsed or b <= a or elapsed[b] <= elapsed[a]:
        return Throughput([a, b])
    sps = (b - a) / (elapsed[b] - elapsed[a])
    return Throughput([a, b], sps, sps * tokens_per_step)


@dataclass
class RunSummary:
    """``summary.json``: what a run is, where it stands and what it measured. What the
    config says is always there; what the trainer measures is None until it has."""

    status: Status
    variant: str
    arch: str
    model: str
    data: str
    budget: str
    seeds: dict[str, int]
    max_steps: int
    config: Optional[dict[str, Any]] = None  # the resolved config (ngt.config.plain): later commands are checked against it
    final_step: int = 0
    message: Optional[str] = None
    failed_step: Optional[int] = None
    params: Optional[int] = None
    params_ngt: Optional[int] = None
    params_baseline: Optional[int] = None
    tokens_per_step: Optional[int] = None
    attn_impl: Optional[str] = None
    compiled: Optional[bool] = None  # whether train.compile took effect here (its default depends on the device)
    compile_mode: Optional[str] = None
    device: Optional[str] = None
    torch_version: Optional[str] = None
    cuda_version: Optional[str] = None  # the CUDA that torch was built with, on a GPU
    threads: Optional[int] = None
    processes: int = 1  # how many processes trained the latest launch, data-parallel (rank 0's figures above)
    amp_dtype: Optional[str] = None
    schedule_changes: list[dict[str, Any]] = field(default_factory=list)
    resumed_at_steps: list[int] = field(default_factory=list)
    elapsed_s: float = 0.0
    val_loss_final: Optional[float] = None
    train_loss_final: Optional[float] = None
    val_loss_best: Optional[float] = None
    best_step: Optional[int] = None
    throughput: Optional[Throughput] = None
    peak_memory_mb: Optional[float] = None
    peak_memory_kind: Optional[str] = None
    val_loss_full: Optional[float] = None
    val_loss_full_tokens: Optional[int] = None
    code: Optional[dict[str, Any]] = None  # ngt.provenance.CodeVersion of the process that last trained it

    @classmethod
    def of_config(cls, cfg: Config, status: Status, **measured: Any) -> RunSummary:
        t = cfg.train
        return cls(status=status, variant=cfg.variant.name, arch=str(cfg.variant.arch), model=cfg.model.name,
                   data=cfg.data.name, budget=cfg.budget.name,
                   seeds={"seed": cfg.seed, "data_seed": cfg.data_seed, "eval_seed": cfg.eval_seed,
                          "repulsion_seed": cfg.seed + 1},
                   max_steps=cfg.budget.max_steps, config=plain(cfg),
                   tokens_per_step=t.batch_size * t.block_size * t.grad_accum, **measured)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def done_under(self, budget: BudgetConfig) -> bool:
        """Whether a launch with ``budget`` has nothing to train: the run completed it, or
        paused at or past where that launch would pause it (a halving rung launched again)."""
        if self.status == Status.completed:
            return self.final_step == budget.max_steps
        return (self.status == Status.paused and budget.stop_at is not None
                and self.final_step >= min(budget.stop_at, budget.max_steps))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSummary:
        """Read back; keys this version does not know are ignored, missing optional ones
        take their defaults. A record missing a required key raises NGTError."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in d.items() if k in known}
        _check_shapes(values)
        try:
            summary = cls(**values)
        except TypeError as e:
            raise NGTError(f"not an ngt run summary ({e})") from None
        try:
            summary.status = Status(summary.status)
        except ValueError:
            raise NGTError(f"unknown run status {summary.status!r}") from None
        if isinstance(summary.throughput, dict):
            summary.throughput = Throughput(**summary.throughput)
        return summary


# What each field of summary.json must hold where it is not null: a hand-edited or damaged
# summary is refused when read, not met later as a type error deep in a comparison.
_SHAPES: dict[str, type | tuple[type, ...]] = {
    "status": str, "variant": str, "arch": str, "model": str, "data": str, "budget": str, "seeds": dict,
    "max_steps": int, "config": dict, "final_step": int, "message": str, "params": int, "schedule_changes": list,
    "resumed_at_steps": list, "elapsed_s": (int, float), "throughput": dict, "code": dict, "best_step": int,
    "val_loss_final": (int, float), "val_loss_best": (int, float), "processes": int}
_REQUIRED = ("status", "variant", "arch", "model", "data", "budget", "seeds", "max_steps")


def _check_shapes(values: dict[str, Any]) -> None:
    for key, kind in _SHAPES.items():
        v = values.get(key)
        if v is None:
            if key in _REQUIRED:
                raise NGTError(f"it has no {key}")
        elif not isinstance(v, kind) or (isinstance(v, bool) and kind in (int, (int, float))):
            raise NGTError(f"its {key} is {type(v).__name__} {str(v)[:30]!r}")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in values["seeds"].values()):
        raise NGTError(f"its seeds are not whole numbers ({str(values['seeds'])[:40]})")


@dataclass
class RNGState:
    """Every random stream that changes a run's numbers: dropout and init (torch's global
    generator, and CUDA's), the order of training batches, the repulsion samples."""

    torch: Any
    data: Any
    repulsion: Any
    cuda: Any = None


@dataclass
class Checkpoint:
    """``checkpoints/last.pt`` and ``best.pt``: everything a run needs to go on as if it had
    never stopped, stored as plain containers and tensors so ``torch.load(weights_only=True)``
    reads it."""

    model: dict[str, Any]
    optimizer: dict[str, Any]
    scaler: dict[str, Any]
    rng: RNGState
    step: int
    best: float
    best_step: Optional[int]
    elapsed_s: float
    schedule: dict[str, Any]
    schedule_changes: list[dict[str, Any]]
    resumes: list[int]
    tokenizer: str
    config: dict[str, Any]
    vocab_size: int
    last_rep: Optional[float] = None  # the latest repulsion energy and gradient norm, as the metrics show them
    last_grad_norm: Optional[float] = None
    data_fingerprint: Optional[str] = None  # the corpus's text and tokenizer (ngt.data.TokenData.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["rng"] = asdict(self.rng)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str) -> Checkpoint:
        # Older checkpoints lack these.
        optional = {"schedule_changes", "resumes", "last_rep", "last_grad_norm", "data_fingerprint"}
        missing = {f.name for f in fields(cls)} - optional - set(d)
        if missing:
            raise NGTError(f"{where} is not an ngt checkpoint (it has no {', '.join(sorted(missing))})")
        values = {k: d[k] for k in {f.name for f in fields(cls)} if k in d}
        values.setdefault("schedule_changes", [])
        values.setdefault("resumes", [])
        values["rng"] = RNGState(**d["rng"])
        return cls(**values)
