"""One screening run: config in, run directory out (docs/run-directory.md).

The loop is the recipe of docs/recipe.md: AdamW, linear warmup then cosine, gradient
accumulation, clipping, AMP on CUDA, evaluation on fixed batches, repulsion every
``repulsion_interval`` steps. Everything that influences the numbers is in the
trainer's state, which is the checkpoint, so a killed run resumed from ``last.pt`` is
the same run.

Data-parallel (``torchrun``, or Slurm tasks; ``ngt.runtime.Processes``): every process
holds the whole state and keeps it identical to rank 0's (the same batches drawn, the same
averaged gradients, the same optimizer step), trains its share of each step's
micro-batches, evaluates its share of the batches, and rank 0 alone writes the run
directory. Only dropout differs between processes (``dropout_seed``).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ngt.batches import check_fits, fixed_batches, full_pass, random_starts, windows
from ngt.checkpoint import save_checkpoint
from ngt.config import NEUTRAL_KEYS, Arch, Config, from_plain, plain
from ngt.data import load_token_data
from ngt.errors import NGTError, RunFailed, needs_packages
from ngt.evaluation import diagnostics, mean_loss, project_coords
from ngt.model import build_model, count_params, matched_params
from ngt.model.backends import resolve_backend
from ngt.probes import ProbeSet, keep_probe_steps, record_probes
from ngt.provenance import code_version
from ngt.records import Checkpoint, RNGState, RunSummary, Status, finite_or_none, throughput
from ngt.rundir import RunDir
from ngt.runtime import (PeerFailed, Processes, autocast, compile_mode, compile_model, compiles, device_name,
                         grad_scaler, peak_memory_mb, pick_device, set_threads, use_deterministic)
from ngt.signals import StopRequest
from ngt.step import Repulsion, make_optimizer, train_step

log = logging.getLogger("ngt.train")

# What `continue=` may change besides the neutral keys: the budget, to extend a run.
RESUMABLE_KEYS = (*NEUTRAL_KEYS, "budget")


class Diverged(RunFailed):
    """The loss or the parameters stopped being finite."""


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup to train.lr, then cosine to train.min_lr at budget.max_steps."""
    t, b = cfg.train, cfg.budget
    if step < b.warmup_steps:
        return t.lr * (step + 1) / b.warmup_steps
    span = max(1, b.max_steps - b.warmup_steps)
    progress = min(1.0, (step - b.warmup_steps) / span)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))


@dataclass
class TrainerState:
    """Where a run stands, besides the model, the optimizer and the random streams."""

    step: int = 0
    best: float = math.inf
    best_step: Optional[int] = None
    elapsed: float = 0.0  # training time, summed over resumes (evaluation excluded)
    resumes: list[int] = field(default_factory=list)
    schedule_changes: list[dict[str, Any]] = field(default_factory=list)
    last_rep: Optional[float] = None  # the latest repulsion energy and gradient norm, for the metrics
    last_grad_norm: Optional[float] = None


class Trainer:
    """Holds a run's model, optimizer, data and state; ``run()`` trains it to the budget."""

    def __init__(self, cfg: Config, rd: RunDir, job_num: int = 0, procs: Processes = Processes()):
        self.cfg, self.rd, self.procs = cfg, rd, procs
        set_threads(cfg.train.threads)
        self.device = pick_device(cfg.train.device, job_num, procs=procs)
        self.data = load_token_data(cfg.data)
        t = cfg.train
        check_fits(self.data.train, "train", t.batch_size, t.block_size)
        check_fits(self.data.val, "validation", t.batch_size, t.block_size)
        self.vocab = self.data.tokenizer.vocab_size
        use_deterministic(t)
        torch.manual_seed(cfg.seed)
        self.model = build_model(cfg.model, cfg.variant, self.vocab, self.device)
        self.probes = ProbeSet.locate(cfg.probes.groups, self.data, t.block_size, cfg.probes.occurrences, t.batch_size) \
            if cfg.variant.arch == Arch.ngt and cfg.probes.groups and procs.writes else None
        self.optimizer = make_optimizer(self.model, t)
        self.amp_ctx, self.amp_dtype = autocast(self.device, t.amp)
        self.scaler = grad_scaler(self.amp_dtype)
        self.data_gen = torch.Generator().manual_seed(cfg.data_seed)
        self.rep_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.state = TrainerState()
        self.tokens_per_step = t.batch_size * t.block_size * t.grad_accum
        self.eval_val = fixed_batches(self.data.val, cfg.budget.eval_batches, t.batch_size, t.block_size, cfg.eval_seed)
        self.eval_train = fixed_batches(self.data.train, cfg.budget.eval_batches, t.batch_size, t.block_size,
                                        cfg.eval_seed + 1)
        self.train_model = self.model  # wrapped for data parallelism and compiled in run(), after any resume
        self.summary: Optional[RunSummary] = None
        self.writer = None
        self.saved_step: Optional[int] = None  # the step of checkpoints/last.pt

    def state_dict(self) -> Checkpoint:
        s, cuda = self.state, self.device.type == "cuda"
        return Checkpoint(
            model=self.model.state_dict(), optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
            rng=RNGState(torch=torch.get_rng_state(), data=self.data_gen.get_state(),
                         repulsion=self.rep_gen.get_state(),
                         cuda=torch.cuda.get_rng_state(self.device) if cuda else None),
            step=s.step, best=s.best, best_step=s.best_step, elapsed_s=s.elapsed,
            schedule={"warmup_steps": self.cfg.budget.warmup_steps, "max_steps": self.cfg.budget.max_steps,
                      "lr": self.cfg.train.lr, "min_lr": self.cfg.train.min_lr},
            schedule_changes=s.schedule_changes, resumes=s.resumes, tokenizer=self.data.tokenizer.to_json(),
            config=plain(self.cfg), vocab_size=self.vocab, last_rep=s.last_rep, last_grad_norm=s.last_grad_norm,
            data_fingerprint=self.data.fingerprint,
        )

    def load_state_dict(self, ckpt: Checkpoint) -> None:
        self.model.load_state_dict(ckpt.model)
        self.optimizer.load_state_dict(ckpt.optimizer)
        self.scaler.load_state_dict(ckpt.scaler)
        self.data_gen.set_state(ckpt.rng.data)
        self.rep_gen.set_state(ckpt.rng.repulsion)
        torch.set_rng_state(ckpt.rng.torch)
        if self.device.type == "cuda" and ckpt.rng.cuda is not None:
            torch.cuda.set_rng_state(ckpt.rng.cuda, self.device)
        self.state = TrainerState(ckpt.step, ckpt.best, ckpt.best_step, ckpt.elapsed_s, list(ckpt.resumes),
                                  list(ckpt.schedule_changes), ckpt.last_rep, ckpt.last_grad_norm)

    def resume(self, ckpt: Checkpoint) -> Optional[Config]:
        """Continue from ``ckpt``: the same run, possibly with a longer budget (``continue=``).
        Where the evaluation at its step is missing from metrics.jsonl (a crash cut that row
        mid-append), returns the config it was made under: the model it scored is the
        checkpoint's, so it is made again."""
        if ckpt.tokenizer != self.data.tokenizer.to_json():
            raise NGTError(f"{self.rd.last} was trained with a different tokenizer than "
                           f"data={self.cfg.data.name} gives now")
        if ckpt.data_fingerprint not in (None, self.data.fingerprint):  # None: from before checkpoints held it
            raise NGTError(f"{self.rd.last} was trained on other text than data={self.cfg.data.name} holds now "
                           "(a corpus file changed since the run started): the run cannot go on on it; "
                           "force=true trains it again")
        self.load_state_dict(ckpt)
        self.saved_step = ckpt.step
        s, budget = self.state, self.cfg.budget
        s.resumes.append(s.step)
        old_budget = ckpt.config["budget"]
        if old_budget["max_steps"] != budget.max_steps:
            if budget.max_steps < s.step:
                raise NGTError(f"budget.max_steps={budget.max_steps} is below the checkpoint's step {s.step} "
                               f"in {self.rd.last}")
            s.schedule_changes.append({"step": s.step, "max_steps_from": old_budget["max_steps"],
                                       "max_steps_to": budget.max_steps, "budget_from": old_budget["name"],
                                       "budget_to": budget.name})
            log.info("continuing from step %d with max_steps %d -> %d", s.step, old_budget["max_steps"],
                     budget.max_steps)
        if not self.procs.writes:
            return None  # rank 0 says whether a row is missing (run())
        rows = [r for r in self.rd.read_metrics() if r["step"] <= s.step]
        self.rd.rewrite_metrics(rows)
        keep_probe_steps(self.rd.path, [r["step"] for r in rows])
        log.info("resumed from %s at step %d", self.rd.last, s.step)
        evaluated = s.step % budget.eval_every == 0 or s.step == old_budget["max_steps"]
        return from_plain(ckpt.config) if evaluated and (not rows or rows[-1]["step"] < s.step) else None

    def start_summary(self) -> RunSummary:
        cfg, params = self.cfg, matched_params(self.cfg.model, self.vocab)
        compiled = compiles(cfg.train, self.device)
        ngt = cfg.variant.arch == Arch.ngt
        return RunSummary.of_config(
            cfg, Status.running, final_step=self.state.step,
            params=count_params(self.model), params_ngt=params["ngt"], params_baseline=params["baseline"],
            attn_impl=resolve_backend(cfg.model.attn_impl, self.device) if ngt else "sdpa",
            compiled=compiled, compile_mode=str(compile_mode(cfg.train, self.device)) if compiled else None,
            device=device_name(self.device), torch_version=torch.__version__,
            cuda_version=torch.version.cuda if self.device.type == "cuda" else None, threads=torch.get_num_threads(),
            amp_dtype=str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else None,
            schedule_changes=self.state.schedule_changes, resumed_at_steps=self.state.resumes,
            code=code_version().to_dict(), processes=self.procs.size,
        )

    def finish(self, status: Status, **extra: Any) -> RunSummary:
        """The summary at the end of this launch, written (by rank 0: the others return theirs)."""
        if not self.procs.writes:
            self.summary.status, self.summary.final_step = status, self.state.step
            return self.summary
        rows, s = self.rd.read_metrics(), self.state
        final = rows[-1] if rows else {}
        mem, mem_kind = peak_memory_mb(self.device)
        summary = self.summary
        summary.status, summary.final_step, summary.elapsed_s = status, s.step, s.elapsed
        summary.val_loss_final = finite_or_none(final.get("val/loss"))
        summary.train_loss_final = finite_or_none(final.get("train/loss"))
        summary.val_loss_best, summary.best_step = finite_or_none(s.best), s.best_step
        summary.throughput = throughput({r["step"]: r["elapsed_s"] for r in rows},
                                        list(self.cfg.budget.throughput_window),
                                        self.tokens_per_step) if rows else None
        summary.peak_memory_mb, summary.peak_memory_kind = mem, mem_kind
        for k, v in extra.items():
            setattr(summary, k, v)
        self.rd.write_summary(summary)
        return summary

    def evaluate(self, schedule: Config) -> dict[str, Any]:
        """One row of metrics.jsonl, at the end of optimizer step ``state.step``; its lr is the
        one ``schedule`` gave that step."""
        s, dev, amp, procs = self.state, self.device, self.amp_ctx, self.procs
        return {
            "step": s.step, "train/loss": mean_loss(self.model, self.eval_train, dev, amp, procs),
            "val/loss": mean_loss(self.model, self.eval_val, dev, amp, procs), "repulsion/loss": s.last_rep,
            "lr": lr_at(max(s.step - 1, 0), schedule), "grad_norm": s.last_grad_norm, "elapsed_s": s.elapsed,
            "tokens": s.step * self.tokens_per_step,
            **(diagnostics(self.model, self.eval_val[0][0], dev, amp) if procs.writes else {}),
        }

    def record_evaluation(self, schedule: Optional[Config] = None) -> dict[str, Any]:
        """Evaluate at step ``state.step`` and write the row: metrics.jsonl, TensorBoard, the log."""
        s, b = self.state, self.cfg.budget
        row = self.evaluate(schedule or self.cfg)
        if not self.procs.writes:
            return row
        if self.probes is not None:  # before the metrics row: a step with a row has its probes
            record_probes(self.rd.path, s.step, self.probes.measure(self.model, self.device), self.writer)
        self.rd.append_metrics(row)
        for k, v in row.items():
            if k != "step" and v is not None:
                self.writer.add_scalar(k, v, s.step)
        self.writer.add_scalar("hparam/val_loss_final", row["val/loss"], s.step)
        self.writer.add_scalar("hparam/val_loss_best", min(s.best, row["val/loss"]), s.step)
        log.info("step %d/%d train_loss=%.4f val_loss=%.4f rep_loss=%s elapsed=%.1fs", s.step, b.max_steps,
                 row["train/loss"], row["val/loss"], "n/a" if s.last_rep is None else f"{s.last_rep:.4f}", s.elapsed)
        return row

    def save(self, path: Path) -> None:
        """A checkpoint of finite parameters only: the last good one is never replaced by a
        diverged one. Every process checks (their parameters are the same); rank 0 writes."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise self.diverged(f"parameters are not finite after step {self.state.step}", self.state.step)
        if self.procs.writes:
            save_checkpoint(self.state_dict(), path)
        if path == self.rd.last:
            self.saved_step = self.state.step

    def at_boundary(self) -> None:
        """Evaluation, then checkpoints, at the end of optimizer step ``state.step``."""
        s, b = self.state, self.cfg.budget
        at_end = s.step == b.max_steps
        if s.step % b.eval_every == 0 or at_end:
            row = self.record_evaluation()
            if row["val/loss"] < s.best:
                s.best, s.best_step = row["val/loss"], s.step
                self.save(self.rd.best)
        # A pause (budget.stop_at) keeps its step, evaluation and best included: it goes on from there.
        if s.step % b.checkpoint_every == 0 or at_end or s.step == self.until:
            self.save(self.rd.last)

    def diverged(self, what: str, step: int) -> Diverged:
        """Record the run as failed at ``step``; the error to raise."""
        kept = f", last good checkpoint kept ({self.rd.last.name} at step {self.saved_step})" \
            if self.saved_step is not None else ""
        msg = f"{what}; stopped{kept}"
        self.finish(Status.failed, message=msg, failed_step=step)
        return Diverged(msg)

    def optimizer_step(self, stop: StopRequest) -> float:
        """One step of the recipe; returns its training loss (over every process). Raises
        Diverged on a non-finite loss, having recorded the failure. The processes of a
        data-parallel run also agree on ``stop`` here."""
        cfg, s, t, procs = self.cfg, self.state, self.cfg.train, self.procs
        t0 = time.perf_counter()
        lr = lr_at(s.step, cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        every = cfg.variant.repulsion_interval if cfg.variant.arch == Arch.ngt else 0
        # Every process draws every micro-batch, so the data stream stays rank 0's, and
        # cuts only its own share; the repulsion term is rank 0's, and its draws with it.
        starts = [random_starts(self.data.train, t.batch_size, t.block_size, self.data_gen)
                  for _ in range(t.grad_accum)]
        batches = [windows(self.data.train, starts[i], t.block_size) for i in procs.micro_batches(t.grad_accum)]
        repulsion = Repulsion(cfg.variant.repulsion_weight, cfg.variant.repulsion_samples, self.rep_gen) \
            if every > 0 and s.step % every == 0 and procs.writes else None
        if procs.rank > 0:  # masks of its own (dropout_seed)
            torch.manual_seed(dropout_seed(cfg.seed, procs.rank, s.step))
        try:
            result = train_step(self.model, self.train_model, self.optimizer, self.scaler, self.amp_ctx, batches,
                                t.grad_clip, repulsion, procs, stop.votes())
        except PeerFailed as e:
            raise PeerFailed(f"{e}, in step {s.step + 1}") from None
        if procs.size > 1:
            stop.agree(result.votes)
        if not result.stepped:
            raise self.diverged(f"loss is {result.loss} at step {s.step + 1}", s.step + 1)
        if result.energy is not None:
            s.last_rep = float(result.energy)
        s.last_grad_norm = float(result.grad_norm)
        s.step += 1
        s.elapsed += time.perf_counter() - t0
        return result.loss

    def stop_for(self, stop: StopRequest) -> None:
        """Save at this step boundary and end as the signal asks (never returns)."""
        self.save(self.rd.last)
        if self.procs.writes:
            self.writer.close()
            self.finish(Status.interrupted,
                        message=f"stopped by {stop.signal_name} at step {self.state.step}; resumes from {self.rd.last}")
            log.info("saved %s at step %d after %s", self.rd.last, self.state.step, stop.signal_name)
        # None ends before rank 0 has saved: a launcher that sees one process end stops the others.
        self.procs.barrier()
        stop.chain()  # the process ends as signalled (or submitit requeues it)

    def loop(self) -> None:
        s, max_steps, log_every = self.state, self.cfg.budget.max_steps, self.cfg.train.log_every
        until = self.until
        self.model.train()
        t_log, s_log = time.perf_counter(), s.step
        with StopRequest() as stop:
            while s.step < until:
                loss = self.optimizer_step(stop)
                self.at_boundary()
                if s.step % log_every == 0:
                    now = time.perf_counter()
                    rate = (s.step - s_log) / max(now - t_log, 1e-9)
                    eta = (max_steps - s.step) / max(rate, 1e-9)
                    log.info("step %d/%d | loss %.4f | lr %.2e | %.2f steps/s | %s tokens/s | mem %.0f MB | eta %s",
                             s.step, max_steps, loss, lr_at(s.step - 1, self.cfg), rate,
                             f"{rate * self.tokens_per_step:,.0f}", peak_memory_mb(self.device)[0], _hms(eta))
                    t_log, s_log = now, s.step
                # One process: as soon as asked. Several: at the step they agreed on.
                if (stop.requested if self.procs.size == 1 else stop.agreed) and s.step < until:
                    self.stop_for(stop)

    def run(self, ckpt: Optional[Checkpoint]) -> RunSummary:
        missing_row: Optional[Config] = None
        if ckpt is not None:
            missing_row = self.resume(ckpt)
        elif self.procs.writes:  # a run that died before its first checkpoint starts over
            if self.rd.metrics.exists():
                self.rd.rewrite_metrics([])
            keep_probe_steps(self.rd.path, [])
        missing_row = self.procs.shared(missing_row)  # rank 0 read metrics.jsonl
        self.train_model = compile_model(self.procs.replicate(self.model, self.device), self.cfg.train, self.device)
        self.summary = self.start_summary()
        if self.procs.writes:
            self.open_records(ckpt is not None, missing_row is not None)
        if ckpt is None:
            self.at_boundary()
        elif missing_row is not None:
            self.record_evaluation(missing_row)
        try:
            self.loop()
        except Diverged:
            if self.writer is not None:
                self.writer.close()
            raise
        if self.state.step < self.cfg.budget.max_steps:
            return self.pause()
        return self.complete()

    def open_records(self, resumed: bool, row_again: bool) -> None:
        """TensorBoard's writer, the HParams row, the summary (running) and the first line."""
        with needs_packages("the trainer (TensorBoard scalars in tb/)"):
            from torch.utils.tensorboard import SummaryWriter

        # A resumed run writes its events again from the step after its checkpoint (from the
        # checkpoint's own step where that evaluation is made again).
        purge = self.state.step + (0 if row_again else 1) if resumed else None
        self.writer = SummaryWriter(str(self.rd.tb), purge_step=purge)
        self.write_hparams()
        self.rd.write_summary(self.summary)
        self.announce()

    @property
    def until(self) -> int:
        """The step this launch trains to: the budget's end, or ``budget.stop_at`` before it."""
        b = self.cfg.budget
        return min(b.max_steps, b.stop_at) if b.stop_at is not None else b.max_steps

    def pause(self) -> RunSummary:
        """At ``budget.stop_at``: saved, on the full budget's schedule, to go on when launched
        again with a later ``stop_at`` (a rung of successive halving) or none."""
        if self.writer is not None:
            self.writer.close()
        b = self.cfg.budget  # a run relaunched at an earlier rung than it reached keeps its step
        summary = self.finish(Status.paused, message=f"paused at step {self.state.step} of {b.max_steps} "
                                                     f"(budget.stop_at={b.stop_at})")
        log.info("paused at step %d of %d: %s", self.state.step, self.cfg.budget.max_steps, self.rd.path)
        return summary

    def announce(self) -> None:
        """The run's first line: where it is, what it trains, on what, and how."""
        sm, cfg = self.summary, self.cfg
        how = f"compiled ({sm.compile_mode})" if sm.compiled else "eager"
        start = f"from step {self.state.step}" if self.state.step else "from scratch"
        on = f"{sm.device} x {self.procs.size} processes" if self.procs.size > 1 else sm.device
        log.info("run %s: %s, %s params, %s, attention %s, %s, %d steps of %s tokens, %s", self.rd.path,
                 cfg.variant.name, f"{sm.params:,}", on, sm.attn_impl, how, cfg.budget.max_steps,
                 f"{self.tokens_per_step:,}", start)
        if sm.compiled:
            log.info("compiling the model: the first steps take longer")

    def write_hparams(self) -> None:
        """TensorBoard's HParams row of this run, from its start: running, interrupted and
        failed runs appear too; the evaluations update its metrics (``hparam/*`` scalars)."""
        hparams = {k: v for k, v in _flat(plain(self.cfg)).items() if isinstance(v, (int, float, str, bool))}
        metrics = {f"hparam/{k}": math.nan for k in ("val_loss_final", "val_loss_best", "val_loss_full")}
        self.writer.add_hparams(hparams, metrics, run_name=".", global_step=self.state.step)

    def complete(self) -> RunSummary:
        extra: dict[str, Any] = {}
        t, s = self.cfg.train, self.state
        if t.full_val:
            batches = list(full_pass(self.data.val, t.batch_size, t.block_size))
            tokens = sum(y.numel() for _, y in batches)
            log.info("full validation pass over %s tokens (%d batches)", f"{tokens:,}", len(batches))
            extra["val_loss_full"] = mean_loss(self.model, batches, self.device, self.amp_ctx, self.procs)
            extra["val_loss_full_tokens"] = tokens
            log.info("full validation pass: loss %.4f over %d tokens", extra["val_loss_full"], tokens)
        if not self.procs.writes:
            return self.finish(Status.completed)
        if t.full_val:
            self.writer.add_scalar("hparam/val_loss_full", extra["val_loss_full"], s.step)
        summary = self.finish(Status.completed, **extra)
        project_coords(self.writer, self.model, self.data, t.block_size, self.device, s.step)
        self.writer.close()
        full = f", full split {summary.val_loss_full:.4f}" if summary.val_loss_full is not None else ""
        log.info("done: val loss %.4f at step %d (best %.4f at step %s)%s; %s", summary.val_loss_final,
                 s.step, summary.val_loss_best or math.nan, summary.best_step, full, self.rd.path)
        return summary


def dropout_seed(seed: int, rank: int, step: int) -> int:
    """Dropout of a data-parallel run: rank 0 draws its masks from the run's own stream
    (torch's generator, seeded with ``seed`` and kept in the checkpoint), as one process
    does; every other rank needs masks of its own, and draws each step's from a seed made
    of (seed, rank, step), so that they need no place in the checkpoint and a resumed
    run draws them again."""
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1, np.uint64)[0])


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
