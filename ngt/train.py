"""One screening run: config in, run directory out (see ``ngt.rundir`` for the contract).

The loop is the recipe of SPEC's 'Training recipe': AdamW, linear warmup then cosine,
gradient accumulation, clipping, AMP on CUDA, evaluation on fixed batches, repulsion
every ``repulsion_interval`` steps. Everything that influences the numbers lives in
the checkpoint, so a killed run resumed from ``last.pt`` is the same run.
"""

from __future__ import annotations

import logging
import math
import os
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from ngt.batches import Batch, check_fits, fixed_batches, full_pass, random_batch
from ngt.checkpoint import load_checkpoint, save_checkpoint
from ngt.config import Config, TrainConfig
from ngt.data import TokenData, load_token_data
from ngt.errors import NGTError
from ngt.model import build_model, count_params, matched_params, repulsion_energy
from ngt.model.gravity import can_compile, resolve_backend, room_for_graphs
from ngt.model.layers import causal_lm_loss
from ngt.rundir import RunDir, finite_or_none
from ngt.signals import StopRequest

log = logging.getLogger("ngt.train")

# Keys that may differ between a checkpoint's config and the config resuming it:
# where and how fast it runs, and (to continue a finished run) how long.
_RESUMABLE_CHANGES = ("budget", "train.device", "train.threads", "train.log_every", "train.compile", "train.compile_mode", "train.deterministic", "model.attn_impl", "sweep")


class Diverged(NGTError):
    pass


def lr_at(step: int, cfg: Config) -> float:
    """Linear warmup to train.lr, then cosine to train.min_lr at budget.max_steps."""
    t, b = cfg.train, cfg.budget
    if step < b.warmup_steps:
        return t.lr * (step + 1) / b.warmup_steps
    span = max(1, b.max_steps - b.warmup_steps)
    progress = min(1.0, (step - b.warmup_steps) / span)
    return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + math.cos(math.pi * progress))


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_mode(t: TrainConfig, device: torch.device) -> str:
    """``train.compile_mode``, or where it is null the device's: CUDA graphs on CUDA."""
    if t.compile_mode is None:
        return "reduce-overhead" if device.type == "cuda" else "default"
    if t.compile_mode not in COMPILE_MODES:
        raise NGTError(f"train.compile_mode={t.compile_mode!r}: choose from {', '.join(COMPILE_MODES)}")
    return t.compile_mode


def compile_model(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.nn.Module:
    """What training calls: ``model`` itself, or under ``train.compile`` (by default on
    CUDA, where inductor can build kernels) its compiled wrapper, with the same parameters,
    in ``compile_mode``."""
    mode = compile_mode(t, device)
    on = t.compile if t.compile is not None else device.type == "cuda" and can_compile(device)
    if not on:
        return model
    room_for_graphs()
    return torch.compile(model, mode=mode)


def use_deterministic(t: TrainConfig) -> None:
    """``train.deterministic``, for the whole process as torch keeps it. cuBLAS reads its
    workspace setting once, so it is fixed before the first CUDA matmul."""
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(t.deterministic, warn_only=True)


def pick_device(name: str, job_num: int = 0) -> torch.device:
    """``auto``: CUDA when present. Jobs of a grid launched side by side on one node
    (submitit_local shows every job all GPUs) spread over the GPUs by job number; under
    Slurm each job sees only its own GPU, so this is cuda:0 there."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", job_num % torch.cuda.device_count())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NGTError(f"train.device={name} but CUDA is not available on this machine")
    return torch.device(name)


def validate(cfg: Config, data: TokenData) -> None:
    t = cfg.train
    if t.block_size > cfg.model.context:
        raise NGTError(
            f"train.block_size={t.block_size} is beyond the model's context (model.context={cfg.model.context})"
        )
    for name, value in (("train.batch_size", t.batch_size), ("train.block_size", t.block_size),
                        ("train.grad_accum", t.grad_accum), ("budget.max_steps", cfg.budget.max_steps),
                        ("budget.eval_every", cfg.budget.eval_every), ("budget.eval_batches", cfg.budget.eval_batches),
                        ("budget.checkpoint_every", cfg.budget.checkpoint_every)):
        if value < 1:
            raise NGTError(f"{name} must be at least 1, got {value}")
    check_fits(data.train, "train", t.batch_size, t.block_size)
    check_fits(data.val, "validation", t.batch_size, t.block_size)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for k in sorted(set(a) | set(b)):
        path = f"{prefix}{k}"
        if any(path == c or path.startswith(c + ".") for c in _RESUMABLE_CHANGES):
            continue
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            keys += _diff_keys(va, vb, path + ".")
        elif va != vb:
            keys.append(f"{path}: {va!r} -> {vb!r}")
    return keys


def _amp(device: torch.device, enabled: bool) -> tuple[Any, Optional[torch.dtype]]:
    if device.type != "cuda" or not enabled:
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def _peak_memory_mb(device: torch.device) -> tuple[float, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"


@torch.no_grad()
def evaluate(model, batches, device, amp_ctx) -> float:
    model.eval()
    total = 0.0
    for x, y in batches:
        with amp_ctx:
            logits, _ = model(x.to(device))
        total += float(causal_lm_loss(logits, y.to(device)))
    model.train()
    return total / len(batches)


@torch.no_grad()
def diagnostics(model, x, device, amp_ctx) -> dict[str, float]:
    """Per-layer gravity statistics on one fixed batch; empty for the baseline."""
    if getattr(model, "arch", None) != "ngt":
        return {}
    model.eval()
    layers: list[dict] = []
    with amp_ctx:
        model(x.to(device), diagnostics=layers)
    model.train()
    out = {f"ngt/L{i}/{k}": v for i, d in enumerate(layers) for k, v in d.items()}
    out["ngt/gamma_mean"] = sum(d["gamma_mean"] for d in layers) / len(layers)
    out["ngt/radius_mean"] = sum(d["radius"] for d in layers) / len(layers)
    return out


@torch.no_grad()
def project_coords(writer, model, data: TokenData, block_size: int, device, step: int) -> None:
    """The original's TensorBoard projector of z: the last layer's coordinates for the
    first validation window, one point per token, labelled with the token and its mass."""
    if getattr(model, "arch", None) != "ngt":
        return
    n = min(block_size, len(data.val))
    ids = torch.as_tensor(data.val[:n].astype("int64"), device=device)[None]
    model.eval()
    _, (z, m) = model(ids, want_coords=True)
    model.train()
    labels = [[data.tokenizer.token_label(i), f"{w:.4f}"] for i, w in zip(ids[0].tolist(), m[0].tolist())]
    writer.add_embedding(z[0].float().cpu(), metadata=labels, metadata_header=["token", "mass"],
                         global_step=step, tag="coords_z")


def throughput(rows: list[dict], window: list[int], tokens_per_step: int) -> dict[str, Any]:
    """Steps/s between two evaluated steps: by default the first evaluation after step 0
    (compilation and warm-up excluded, as the original's 500 -> 15000) and the last."""
    steps = {r["step"]: r["elapsed_s"] for r in rows}
    if window:
        a, b = window
    else:
        evaluated = sorted(steps)
        after0 = [s for s in evaluated if s > 0]
        a, b = (after0[0], evaluated[-1]) if len(after0) > 1 else (evaluated[0], evaluated[-1])
    if a not in steps or b not in steps or b <= a or steps[b] <= steps[a]:
        return {"window": [a, b], "steps_per_s": None, "tokens_per_s": None}
    sps = (b - a) / (steps[b] - steps[a])
    return {"window": [a, b], "steps_per_s": sps, "tokens_per_s": sps * tokens_per_step}


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.AdamW:
    return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay)


@dataclass
class Repulsion:
    """The repulsion term of one optimizer step (SPEC: on the last micro-batch only)."""

    weight: float
    samples: int
    generator: torch.Generator


@dataclass
class StepResult:
    loss: float  # mean over the micro-batches, repulsion included
    grad_norm: torch.Tensor
    energy: Optional[torch.Tensor]
    stepped: bool  # False when the loss was not finite: the parameters are left as they were


def train_step(model, train_model, optimizer, scaler, amp_ctx, batches: list[Batch], grad_clip: float,
               repulsion: Optional[Repulsion]) -> StepResult:
    """One optimizer step: forward, loss, backward over ``batches`` (gradient
    accumulation), clipping, then AdamW unless the loss is not finite.

    ``train_model`` is ``model`` or its compiled wrapper; the trainer and ``ngt.bench``
    both time exactly this function.
    """
    device = next(model.parameters()).device
    loss_sum = torch.zeros((), device=device)
    energy = None
    for micro, (x, y) in enumerate(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        rep_now = repulsion is not None and micro == len(batches) - 1
        if train_model is not model:
            # Under CUDA graphs each call replays into the same output memory: this
            # micro-batch's outputs replace the last one's, whose loss and backward are done.
            torch.compiler.cudagraph_mark_step_begin()
        with amp_ctx:
            logits, coords = train_model(x, want_coords=rep_now)
            loss = causal_lm_loss(logits, y)
            if rep_now:
                energy = repulsion_energy(*coords, repulsion.samples, repulsion.generator)
                loss = loss + repulsion.weight * energy
        scaler.scale(loss / len(batches)).backward()
        loss_sum += loss.detach()
    energy = None if energy is None else energy.detach()  # reported, not differentiated
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    loss_value = float(loss_sum) / len(batches)
    if not math.isfinite(loss_value):
        return StepResult(loss_value, grad_norm, energy, stepped=False)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, grad_norm, energy, stepped=True)


def train(cfg: Config, run_dir: Path, job_num: int = 0) -> dict[str, Any]:
    """Run (or continue) the run in ``run_dir``; returns its summary."""
    rd = RunDir(Path(run_dir))
    resolved = asdict(cfg)
    prior = rd.read_summary()
    if (prior and prior.get("status") == "completed" and prior.get("final_step") == cfg.budget.max_steps
            and rd.last.exists()):
        log.info("run already completed at step %d: %s (skipped)", prior["final_step"], rd.path)
        return {**prior, "skipped": True}

    state = load_checkpoint(rd.last) if rd.last.exists() else None
    if state is not None:
        changed = _diff_keys(state["config"], resolved)
        if changed:
            raise NGTError(
                f"{rd.path} holds a run with a different config ({'; '.join(changed[:3])}); "
                "use another output directory to start a new run"
            )

    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = pick_device(cfg.train.device, job_num)
    data = load_token_data(cfg.data)
    if state is not None and state["tokenizer"] != data.tokenizer.to_json():
        raise NGTError(f"{rd.last} was trained with a different tokenizer than data={cfg.data.name} gives now")
    validate(cfg, data)
    vocab = data.tokenizer.vocab_size

    use_deterministic(cfg.train)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, cfg.variant, vocab, device)
    optimizer = make_optimizer(model, cfg.train)
    amp_ctx, amp_dtype = _amp(device, cfg.train.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    data_gen = torch.Generator().manual_seed(cfg.data_seed)
    rep_gen = torch.Generator().manual_seed(cfg.seed + 1)

    step, best, best_step, elapsed = 0, math.inf, None, 0.0
    schedule_changes: list[dict] = []
    resumes: list[int] = []
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        data_gen.set_state(state["rng"]["data"])
        rep_gen.set_state(state["rng"]["repulsion"])
        torch.set_rng_state(state["rng"]["torch"])
        if device.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        step, best, best_step, elapsed = state["step"], state["best"], state["best_step"], state["elapsed_s"]
        schedule_changes = list(state.get("schedule_changes", []))
        resumes = list(state.get("resumes", [])) + [step]
        old_max = state["config"]["budget"]["max_steps"]
        if old_max != cfg.budget.max_steps:
            if cfg.budget.max_steps < step:
                raise NGTError(f"budget.max_steps={cfg.budget.max_steps} is below the checkpoint's step {step} in {rd.last}")
            schedule_changes.append({"step": step, "max_steps_from": old_max, "max_steps_to": cfg.budget.max_steps,
                                     "budget_from": state["config"]["budget"]["name"], "budget_to": cfg.budget.name})
            log.info("continuing from step %d with max_steps %d -> %d", step, old_max, cfg.budget.max_steps)
        rd.rewrite_metrics(r for r in rd.read_metrics() if r["step"] <= step)
        log.info("resumed from %s at step %d", rd.last, step)
    elif rd.metrics.exists():
        rd.rewrite_metrics([])  # a run that died before its first checkpoint starts over

    train_model = compile_model(model, cfg.train, device)
    params = matched_params(cfg.model, vocab)
    tokens_per_step = cfg.train.batch_size * cfg.train.block_size * cfg.train.grad_accum
    eval_val = fixed_batches(data.val, cfg.budget.eval_batches, cfg.train.batch_size, cfg.train.block_size, cfg.eval_seed)
    eval_train = fixed_batches(data.train, cfg.budget.eval_batches, cfg.train.batch_size, cfg.train.block_size, cfg.eval_seed + 1)

    summary: dict[str, Any] = {
        "status": "running", "message": None, "failed_step": None,
        "variant": cfg.variant.name, "arch": cfg.variant.arch, "model": cfg.model.name, "data": cfg.data.name,
        "budget": cfg.budget.name,
        "seeds": {"seed": cfg.seed, "data_seed": cfg.data_seed, "eval_seed": cfg.eval_seed, "repulsion_seed": cfg.seed + 1},
        "params": count_params(model), "params_ngt": params["ngt"], "params_baseline": params["baseline"],
        "final_step": step, "max_steps": cfg.budget.max_steps, "tokens_per_step": tokens_per_step,
        "attn_impl": resolve_backend(cfg.model.attn_impl, device) if cfg.variant.arch == "ngt" else "sdpa",
        # Whether train.compile took effect here (its default depends on the device): compiled
        # and eager steps differ in speed and, with dropout, in their random draws.
        "compiled": train_model is not model,
        "compile_mode": compile_mode(cfg.train, device) if train_model is not model else None,
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "torch_version": torch.__version__, "threads": torch.get_num_threads(),
        "amp_dtype": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
        "schedule_changes": schedule_changes, "resumed_at_steps": resumes,
    }

    def full_state() -> dict[str, Any]:
        return {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "data": data_gen.get_state(), "repulsion": rep_gen.get_state(),
                    "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None},
            "step": step, "best": best, "best_step": best_step, "elapsed_s": elapsed,
            "schedule": {"warmup_steps": cfg.budget.warmup_steps, "max_steps": cfg.budget.max_steps,
                         "lr": cfg.train.lr, "min_lr": cfg.train.min_lr},
            "schedule_changes": schedule_changes, "resumes": resumes,
            "tokenizer": data.tokenizer.to_json(), "config": resolved, "vocab_size": vocab,
        }

    def finish(status: str, **extra) -> dict[str, Any]:
        rows = rd.read_metrics()
        final = rows[-1] if rows else {}
        mem, mem_kind = _peak_memory_mb(device)
        summary.update(
            status=status, final_step=step, elapsed_s=elapsed,
            val_loss_final=final.get("val/loss"), train_loss_final=final.get("train/loss"),
            val_loss_best=finite_or_none(best), best_step=best_step,
            throughput=throughput(rows, list(cfg.budget.throughput_window), tokens_per_step) if rows else None,
            peak_memory_mb=mem, peak_memory_kind=mem_kind, **extra,
        )
        rd.write_summary(summary)
        return summary

    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(rd.tb), purge_step=step + 1 if state is not None else None)
    last_rep: Optional[float] = None
    last_grad_norm: Optional[float] = None
    rd.write_summary(summary)

    def boundary() -> None:
        """Evaluation, then checkpoints, at the end of optimizer step ``step``."""
        nonlocal best, best_step
        at_end = step == cfg.budget.max_steps
        if step % cfg.budget.eval_every == 0 or at_end:
            row = {
                "step": step, "train/loss": evaluate(model, eval_train, device, amp_ctx),
                "val/loss": evaluate(model, eval_val, device, amp_ctx), "repulsion/loss": last_rep,
                "lr": lr_at(max(step - 1, 0), cfg), "grad_norm": last_grad_norm, "elapsed_s": elapsed,
                "tokens": step * tokens_per_step, **diagnostics(model, eval_val[0][0], device, amp_ctx),
            }
            rd.append_metrics(row)
            for k, v in row.items():
                if k != "step" and v is not None:
                    writer.add_scalar(k, v, step)
            log.info("step %d/%d train_loss=%.4f val_loss=%.4f rep_loss=%s elapsed=%.1fs", step, cfg.budget.max_steps,
                     row["train/loss"], row["val/loss"], "n/a" if last_rep is None else f"{last_rep:.4f}", elapsed)
            if row["val/loss"] < best:
                best, best_step = row["val/loss"], step
                save_checkpoint(full_state(), rd.best)
        if step % cfg.budget.checkpoint_every == 0 or at_end:
            save_checkpoint(full_state(), rd.last)

    if state is None:
        boundary()

    rep_every = cfg.variant.repulsion_interval if cfg.variant.arch == "ngt" else 0
    model.train()
    t_log, s_log = time.perf_counter(), step
    with StopRequest() as stop:
        while step < cfg.budget.max_steps:
            t0 = time.perf_counter()
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with_rep = rep_every > 0 and step % rep_every == 0
            batches = [random_batch(data.train, cfg.train.batch_size, cfg.train.block_size, data_gen)
                       for _ in range(cfg.train.grad_accum)]
            repulsion = Repulsion(cfg.variant.repulsion_weight, cfg.variant.repulsion_samples, rep_gen) if with_rep else None
            result = train_step(model, train_model, optimizer, scaler, amp_ctx, batches, cfg.train.grad_clip, repulsion)
            if not result.stepped:
                writer.close()
                msg = (f"loss is {result.loss} at step {step + 1}; stopped, last good checkpoint kept "
                       f"({rd.last.name} at step {step - step % cfg.budget.checkpoint_every})")
                finish("failed", message=msg, failed_step=step + 1)
                raise Diverged(msg)
            loss_value = result.loss
            if with_rep:
                last_rep = float(result.energy)
            last_grad_norm = float(result.grad_norm)
            step += 1
            elapsed += time.perf_counter() - t0
            boundary()
            if step % cfg.train.log_every == 0:
                now = time.perf_counter()
                rate = (step - s_log) / max(now - t_log, 1e-9)
                eta = (cfg.budget.max_steps - step) / max(rate, 1e-9)
                log.info("step %d/%d | loss %.4f | lr %.2e | %.2f steps/s | eta %s", step, cfg.budget.max_steps,
                         loss_value, lr, rate, _hms(eta))
                t_log, s_log = now, step
            if stop.requested and step < cfg.budget.max_steps:
                save_checkpoint(full_state(), rd.last)
                writer.close()
                finish("interrupted", message=f"stopped by {stop.signal_name} at step {step}; resumes from {rd.last}")
                log.info("saved %s at step %d after %s", rd.last, step, stop.signal_name)
                stop.chain()  # never returns: the process ends as signalled (or submitit requeues it)

    extra: dict[str, Any] = {}
    if cfg.train.full_val:
        batches = list(full_pass(data.val, cfg.train.batch_size, cfg.train.block_size))
        extra["val_loss_full"] = evaluate(model, batches, device, amp_ctx)
        extra["val_loss_full_tokens"] = sum(y.numel() for _, y in batches)
        log.info("full validation pass: loss %.4f over %d tokens", extra["val_loss_full"], extra["val_loss_full_tokens"])
    result = finish("completed", **extra)
    project_coords(writer, model, data, cfg.train.block_size, device, step)
    writer.add_hparams(
        {k: v for k, v in _flat(resolved).items() if isinstance(v, (int, float, str, bool))},
        {"hparam/val_loss_final": result["val_loss_final"], "hparam/val_loss_best": result["val_loss_best"] or math.nan},
        run_name=".",
    )
    writer.close()
    return result


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
