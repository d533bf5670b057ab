"""``python -m ngt.bench``: how long one training step takes, and how much memory it needs.

A step is ``ngt.step.train_step``, the trainer's own: forward, cross-entropy plus
repulsion (on each variant's schedule), backward, clipping, AdamW. Every variant is
built from the suite's configs (``conf/``) and warmed up (compilation included), then
the variants take turns, one step each, ``--steps`` times: a machine that gets busier
or quieter midway slows every variant alike, so the ratios to the baseline stay fair.
The table shows the median step; ``bench.json`` keeps it with the setting it ran in.

Peak memory is what one step holds at its highest: the model's parameters and AdamW
state plus the most torch allocated above that during the step. CUDA reads it from
the caching allocator's statistics; on CPU it is summed from the allocation events of
torch's profiler (the process's RSS would count freed memory malloc keeps, and
tracemalloc does not see torch's allocator at all).

    python -m ngt.bench                        # CPU target: d256, 4 layers, block 256, batch 8
    python -m ngt.bench --model tiny
    python -m ngt.bench --model w3_25m --block 512 --batch 16 --variants baseline,ngt_default
    python -m ngt.bench --context-sweep --variants baseline,ngt_default
    python -m ngt.bench --processes 1,2 --variants ngt_default   # data-parallel scaling

``--processes 1,2,...`` times data-parallel steps: for each count N, torchrun starts N
processes of this command, which split one global step of ``--accum`` micro-batches as
the trainer does (DDP, gloo on CPU, NCCL on CUDA); rank 0 times the step. The table gives
the speedup over the first count and the scaling efficiency (speedup / N). On a CPU every
count shares ``--threads`` threads out, so each row uses the same cores.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import statistics
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager, nullcontext, redirect_stdout
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ngt.config import CONF, Arch, Config, TrainConfig, register_configs, variant_names
from ngt.errors import NGTError, exit_on_user_error
from ngt.model import build_model, count_params
from ngt.model.backends import resolve_backend
from ngt.naming import register_resolvers
from ngt.runtime import (Processes, autocast, compile_mode, compile_model, device_name, grad_scaler, is_compiled,
                         pick_device, sync, use_deterministic)
from ngt.step import Repulsion, make_optimizer, train_step


@dataclass
class Size:
    model: str  # a conf/model group file
    overrides: list[str]
    batch: int
    block: int
    vocab: int


# The CPU target of issue 5 ("small": the tiny file widened to d256) and the two shipped
# sizes at the setting each trains in: tiny with the bundled corpus' 75 characters, w3_25m
# with the recipe's BPE-8192 (docs/recipe.md).
SIZES = {
    "small": Size("tiny", ["model.d_model=256", "model.n_heads=8", "model.coord_dim=64", "model.mlp_dim=1024"],
                  8, 256, 8192),
    "tiny": Size("tiny", [], 16, 128, 75),
    "w3_25m": Size("w3_25m", [], 16, 512, 8192),
}


def compose_config(size: Size, variant: str, extra: list[str]) -> Config:
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        node = compose(config_name="config", overrides=[f"model={size.model}", f"variant={variant}", *size.overrides,
                                                         f"train.batch_size={size.batch}",
                                                         f"train.block_size={size.block}", *extra])
    # Learned positions need a row per position: longer blocks widen the table.
    node.model.context = max(node.model.context, size.block)
    return OmegaConf.to_object(node)


@dataclass
class Runner:
    """One variant's model, optimizer and step counter: what ``train`` holds for a run."""

    name: str
    cfg: Config
    device: torch.device
    vocab: int
    procs: Processes = Processes()
    model: torch.nn.Module = field(init=False)
    times_ms: list[float] = field(default_factory=list)
    step: int = 0
    compiled: Optional[dict[str, Any]] = None  # what dynamo made of the step, from warm_up
    warmup_peak: int = 0  # bytes above the start, in warm-up: where CUDA graphs take their memory

    def __post_init__(self):
        use_deterministic(self.cfg.train)
        torch.manual_seed(self.cfg.seed)
        self.model = build_model(self.cfg.model, self.cfg.variant, self.vocab, self.device).train()
        # As the trainer runs it: compiled on CUDA or under train.compile=true; replicated over processes.
        self.train_model = compile_model(self.procs.replicate(self.model, self.device), self.cfg.train, self.device)
        self.mode = compile_mode(self.cfg.train, self.device) if is_compiled(self.train_model) else None
        self.cuda_graphs = self.device.type == "cuda" and self.mode in ("reduce-overhead", "max-autotune")
        self.optimizer = make_optimizer(self.model, self.cfg.train)
        self.amp_ctx, amp_dtype = autocast(self.device, self.cfg.train.amp)
        self.scaler = grad_scaler(amp_dtype)
        self.rep_gen = torch.Generator().manual_seed(self.cfg.seed + 1)
        t = self.cfg.train
        g = torch.Generator().manual_seed(self.cfg.data_seed)
        ids = [torch.randint(self.vocab, (t.batch_size, t.block_size + 1), generator=g) for _ in range(t.grad_accum)]
        # This process's share of the step's micro-batches (all of them on one process).
        self.batches = [(ids[i][:, :-1], ids[i][:, 1:]) for i in self.procs.micro_batches(t.grad_accum)]

    @property
    def attn(self) -> str:
        if self.cfg.variant.arch != Arch.ngt:
            return "sdpa"
        return resolve_backend(self.cfg.model.attn_impl, self.device)

    def run_step(self) -> None:
        v = self.cfg.variant
        every = v.repulsion_interval if v.arch == Arch.ngt else 0
        rep = Repulsion(v.repulsion_weight, v.repulsion_samples, self.rep_gen) \
            if every and self.step % every == 0 and self.procs.writes else None
        result = train_step(self.model, self.train_model, self.optimizer, self.scaler, self.amp_ctx, self.batches,
                            self.cfg.train.grad_clip, rep, self.procs)
        if not result.stepped:
            raise RuntimeError(f"{self.name}: loss {result.loss} is not finite")
        self.step += 1

    def warm_up(self, steps: int) -> None:
        """Run ``steps`` untimed steps; under torch.compile, count the graphs dynamo built in
        them and the graph breaks it met (each one splits the step into separately compiled
        pieces, with Python run between them on every step)."""
        from torch._dynamo.utils import counters

        graphs, breaks = counters["stats"]["unique_graphs"], Counter(counters["graph_break"])
        held = self.static_bytes()
        with _allocation_peak(self.device) if self.cuda_graphs else nullcontext([0]) as peak:
            for _ in range(steps):
                self.run_step()
        if self.cuda_graphs:  # less AdamW's moments, made by the first step: static_bytes counts them
            self.warmup_peak = max(0, peak[0] - (self.static_bytes() - held))
        if self.mode is not None:
            new = Counter(counters["graph_break"]) - breaks
            self.compiled = {"mode": self.mode, "graphs": counters["stats"]["unique_graphs"] - graphs,
                             "graph_breaks": sum(new.values()),
                             "break_reasons": {reason.splitlines()[0][:200]: n for reason, n in new.most_common(5)}}

    def timed_step(self) -> None:
        sync(self.device)
        t0 = time.perf_counter()
        self.run_step()
        sync(self.device)
        self.times_ms.append(1000 * (time.perf_counter() - t0))

    def static_bytes(self) -> int:
        """Parameters and AdamW moments: held for the whole run, not only during a step."""
        tensors = {id(p): p for p in self.model.parameters()}
        for state in self.optimizer.state.values():
            tensors.update((id(t), t) for t in state.values() if torch.is_tensor(t))
        return sum(t.numel() * t.element_size() for t in tensors.values())

    def peak_memory_mb(self) -> float:
        """Under CUDA graphs, the graphs' private pool is allocated while warm-up records
        them and held from then on, so a later step allocates little: the peak counts the
        warm-up's too."""
        with _allocation_peak(self.device) as peak:
            self.run_step()
        return (self.static_bytes() + max(peak[0], self.warmup_peak)) / 2**20


@contextmanager
def _allocation_peak(device: torch.device) -> Iterator[list[int]]:
    """Yields a one-item list that holds, on exit, the most bytes allocated above the
    amount allocated on entry."""
    out = [0]
    if device.type == "cuda":
        sync(device)
        start = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        yield out
        sync(device)
        out[0] = torch.cuda.max_memory_allocated(device) - start
        return
    from torch.profiler import ProfilerActivity

    with _profiling(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        yield out
    # Each "[memory]" event is one allocation (+bytes) or free (-bytes) of torch's CPU allocator.
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = 0
    for e in events:
        held += e.nbytes()
        out[0] = max(out[0], held)


@contextmanager
def _profiling(**kwargs: Any) -> Iterator[Any]:
    """torch's profiler (``torch.profiler.profile(**kwargs)``) over the ``with`` body."""
    from torch.profiler import profile

    prof = profile(**kwargs)
    with _native_stderr_muted():
        prof.start()
    try:
        yield prof
    finally:
        with _native_stderr_muted():
            prof.stop()


@contextmanager
def _native_stderr_muted() -> Iterator[None]:
    """Silence file descriptor 2 while the profiler starts or stops: kineto's C++ logs a
    "USDT: profiler_start/stop" line there each time, past any Python setting. Only those
    two calls are muted, never the step being measured."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def measure(runners: list[Runner], steps: int, warmup: int, memory: bool = True) -> list[dict[str, Any]]:
    for r in runners:
        r.warm_up(warmup)
    for _ in range(steps):
        for r in runners:
            r.timed_step()
    rows = []
    for r in runners:
        t = r.cfg.train
        ms = statistics.median(r.times_ms)
        rows.append({
            "variant": r.name, "arch": str(r.cfg.variant.arch), "attn": r.attn, "params": count_params(r.model),
            "batch": t.batch_size, "block": t.block_size, "accum": t.grad_accum, "processes": r.procs.size,
            "ms_per_step": ms, "ms_min": min(r.times_ms), "ms_max": max(r.times_ms),
            "tokens_per_s": t.batch_size * t.block_size * t.grad_accum / (ms / 1000),
            "peak_memory_mb": r.peak_memory_mb() if memory else None,
            "compiled": r.compiled,
        })
    base = next((row["ms_per_step"] for row in rows if row["arch"] == "baseline"), None)
    for row in rows:
        row["ratio_to_baseline"] = row["ms_per_step"] / base if base else None
    return rows


def profile_steps(runners: list[Runner], steps: int, top: int = 12) -> list[dict[str, Any]]:
    """Where each variant's step goes, from torch's profiler over ``steps`` more steps: the
    wall time, how much of it the device spends in kernels (a step whose kernels fill little
    of its wall time is bound by launching them from Python), the number of kernels, and
    the ops that take the most device time (CPU time on a CPU), and on CUDA those that take
    the most host time."""
    from torch.profiler import ProfilerActivity

    rows = []
    for r in runners:
        cuda = r.device.type == "cuda"
        sync(r.device)
        with _profiling(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
            t0 = time.perf_counter()
            for _ in range(steps):
                r.run_step()
            sync(r.device)
            wall_ms = 1000 * (time.perf_counter() - t0) / steps
        events = prof.key_averages()
        key = "self_device_time_total" if cuda else "self_cpu_time_total"
        # Device-side events, less the GPU copies of record_function ranges (the optimizer's
        # step, compiled regions): each spans kernels already counted.
        kernels = [e for e in prof.events()
                   if cuda and e.device_type == torch.autograd.DeviceType.CUDA and not e.is_user_annotation]
        ops = sorted(events, key=lambda e: getattr(e, key), reverse=True)[:top]
        row = {
            "variant": r.name, "attn": r.attn, "wall_ms_per_step": wall_ms,
            "device_busy_ms_per_step": sum(k.time_range.elapsed_us() for k in kernels) / 1000 / steps if cuda else None,
            "kernels_per_step": len(kernels) / steps if cuda else None,
            # Each one leaves the device idle until the host has queued the next kernels. The
            # device-wide sync is this function's own, after the steps.
            "host_syncs_per_step": sum(e.count for e in events if "Synchronize" in e.key
                                       and e.key != "cudaDeviceSynchronize") / steps if cuda else None,
            "top_ops": _per_step(ops, key, steps),
            # On CUDA also where the host's time goes: a step bound by launching kernels
            # spends it in these, not in the kernels.
            "top_host_ops": _per_step(sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top],
                                      "self_cpu_time_total", steps) if cuda else None,
        }
        rows.append(row)
        busy = (f", kernels busy {row['device_busy_ms_per_step']:.1f} ms ({row['kernels_per_step']:.0f} kernels, "
                f"{row['host_syncs_per_step']:.0f} host syncs)" if cuda else "")
        print(f"\n{r.name} ({r.attn}): {wall_ms:.1f} ms/step under the profiler{busy}")
        lists = [(f"by {'device' if cuda else 'CPU'} time", row["top_ops"]), ("by host time", row["top_host_ops"])]
        for title, listed in lists[:2 if cuda else 1]:
            print(f"  top ops {title} per step:")
            for op in listed:
                print(f"  {op['ms_per_step']:8.2f} ms  {op['calls_per_step']:6.0f}x  {op['name'][:90]}")
    return rows


def _per_step(events, key: str, steps: int) -> list[dict[str, Any]]:
    return [{"name": e.key, "ms_per_step": getattr(e, key) / 1000 / steps, "calls_per_step": e.count / steps}
            for e in events]


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "memory" in str(err).lower()


def context_sweep(size: Size, variants: list[str], extra: list[str], device, args,
                  procs: Processes = Processes()) -> list[dict[str, Any]]:
    """Each variant alone at L = 256, 512, ... up to --max-context or its first out-of-memory."""
    rows = []
    for name in variants:
        L = 256
        while L <= args.max_context:
            sized = Size(size.model, size.overrides, size.batch, L, size.vocab)
            try:
                runner = Runner(name, compose_config(sized, name, extra), device, size.vocab, procs)
                row = measure([runner], args.sweep_steps, args.warmup)[0]
            except (RuntimeError, torch.OutOfMemoryError) as err:
                if not _is_oom(err):
                    raise
                rows.append({"variant": name, "block": L, "oom": True, "error": str(err).splitlines()[0][:200]})
                print(f"{name:22s} L={L:5d}  out of memory")
                break
            finally:
                runner = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            rows.append(row)
            print(f"{name:22s} L={L:5d}  {row['ms_per_step']:9.1f} ms  {row['peak_memory_mb']:9.0f} MB")
            L *= 2
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print(f"{'variant':22s} {'attn':9s} {'ms/step':>9s} {'(min-max)':>15s} {'tokens/s':>10s} {'peak MB':>9s} {'x base':>7s}")
    for r in rows:
        ratio = f"{r['ratio_to_baseline']:.2f}" if r["ratio_to_baseline"] else "-"
        spread = f"{r['ms_min']:.0f}-{r['ms_max']:.0f}"
        mem = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
        print(f"{r['variant']:22s} {r['attn']:9s} {r['ms_per_step']:9.1f} {spread:>15s} {r['tokens_per_s']:10.0f} "
              f"{mem:>9s} {ratio:>7s}")
    for r in rows:
        c = r["compiled"]
        if c is not None:
            reasons = "".join(f"\n    {n}x {reason}" for reason, n in c["break_reasons"].items())
            print(f"{r['variant']}: compiled ({c['mode']}) into {c['graphs']} graph(s) in warm-up, "
                  f"{c['graph_breaks']} graph break(s){reasons}")


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    paragraphs = __doc__.replace("``", "").split("\n\n")  # the docstring, without its markup
    examples = next(x for x in paragraphs if x.lstrip().startswith("python -m ngt.bench"))
    p = argparse.ArgumentParser(prog="python -m ngt.bench", description="\n\n".join(paragraphs[:2]),
                                epilog="examples:\n" + examples, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=sorted(SIZES), default="small",
                   help="small (default): d256, 4 layers, vocab 8192, block 256, batch 8")
    p.add_argument("--batch", type=int, help="batch size (default: the size's)")
    p.add_argument("--block", type=int, help="context length of a batch (default: the size's)")
    p.add_argument("--vocab", type=int, help="vocabulary size (default: the size's)")
    p.add_argument("--variants", default=",".join(variant_names()), help="comma-separated conf/variant names")
    p.add_argument("--impl", default="auto", help="model.attn_impl for the NGT variants")
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant (median reported)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation happens here)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--threads", type=int, default=2, help="CPU threads (default 2; 0 = torch's default)")
    p.add_argument("--context-sweep", action="store_true",
                   help="time and memory at L = 256, 512, ... instead (on CUDA each length compiles, some 30 s "
                        "a variant; train.compile=false times it eagerly)")
    p.add_argument("--max-context", type=int, default=4096, help="--context-sweep: the longest context (default 4096)")
    p.add_argument("--sweep-steps", type=int, default=3, help="--context-sweep: timed steps at each length")
    p.add_argument("--profile", type=int, default=0, metavar="N",
                   help="after timing, profile N more steps per variant: device busy time, kernel count, top ops")
    p.add_argument("--processes", metavar="N,M,...",
                   help="data-parallel scaling: time the step on each count of processes (torchrun), the global "
                        "step (train.grad_accum, by default the counts' lcm) split over them; speedup and efficiency")
    p.add_argument("--out", default="bench.json", help="the JSON file of every figure (default bench.json)")
    p.add_argument("overrides", nargs="*", help="further Hydra overrides, e.g. model.dropout=0.1 (anywhere on "
                                                "the line, as Hydra takes them)")
    # Intermixed: overrides before and after options, which plain parse_args refuses.
    return p.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    register_configs()
    register_resolvers()
    if args.processes:
        return scaling(args)
    procs = Processes.from_env()  # under torchrun: one of several processes, each timing its share
    device = pick_device(args.device, setting="--device", procs=procs)
    procs.join(device, TrainConfig().collective_timeout_s)
    with nullcontext() if procs.writes else redirect_stdout(io.StringIO()):  # rank 0 alone reports
        report = bench(args, device, procs)
    if procs.writes:
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}")
    return report


def bench(args: argparse.Namespace, device: torch.device, procs: Processes) -> dict[str, Any]:
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    base = SIZES[args.model]
    size = Size(base.model, base.overrides, args.batch or base.batch, args.block or base.block, args.vocab or base.vocab)
    extra = [f"model.attn_impl={args.impl}", *args.overrides]
    variants = [v for v in args.variants.split(",") if v]
    report: dict[str, Any] = {
        "device": device_name(device),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "processes": procs.size,
        "size": args.model, "config": asdict(size), "overrides": extra, "steps": args.steps, "warmup": args.warmup,
        "memory": "cuda max_memory_allocated" if device.type == "cuda" else "torch profiler allocation events",
    }
    print(f"device {report['device']}, torch {report['torch']}, {report['threads']} threads, {args.model} "
          f"batch {size.batch} block {size.block} vocab {size.vocab}" + (f", {procs.size} processes" if procs.size > 1 else ""))
    if args.context_sweep:
        report["context_sweep"] = context_sweep(size, variants, extra, device, args, procs)
    else:
        runners = [Runner(v, compose_config(size, v, extra), device, size.vocab, procs) for v in variants]
        report["variants"] = measure(runners, args.steps, args.warmup)
        print_table(report["variants"])
        if args.profile:
            report["profile"] = profile_steps(runners, args.profile)
    return report


def scaling(args: argparse.Namespace) -> dict[str, Any]:
    """``--processes``: the step timed on each count of processes, each count under its own
    torchrun, all with the same global step; on a CPU the counts share ``--threads`` out."""
    counts = [int(n) for n in args.processes.split(",")]
    overrides = list(args.overrides)
    if not any(o.startswith("train.grad_accum=") for o in overrides):  # whole micro-batches for every count
        overrides.append(f"train.grad_accum={math.lcm(*counts)}")
    runs = []
    for n in counts:
        out = Path(args.out).with_suffix(f".{n}.json")
        threads = max(1, args.threads // n) if args.threads else 0
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={n}", "-m",
               "ngt.bench", *_forwarded(args), "--threads", str(threads), "--out", str(out), *overrides]
        print(f"{n} process(es): {' '.join(cmd[1:])}", flush=True)
        if subprocess.run(cmd).returncode != 0:
            raise NGTError(f"the bench on {n} processes failed (its output is above)")
        runs.append(json.loads(out.read_text()))
    rows = scaling_rows(runs)
    print_scaling(rows)
    report = {"device": runs[0]["device"], "torch": runs[0]["torch"], "threads": args.threads, "processes": counts,
              "scaling": rows, "runs": runs}
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return report


def _forwarded(args: argparse.Namespace) -> list[str]:
    """The options of a ``--processes`` command that each count's runs take as they are."""
    given = [("--model", args.model), ("--batch", args.batch), ("--block", args.block), ("--vocab", args.vocab),
             ("--variants", args.variants), ("--impl", args.impl), ("--steps", args.steps),
             ("--warmup", args.warmup), ("--device", args.device)]
    return [str(x) for flag, value in given if value is not None for x in (flag, value)]


def scaling_rows(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per variant and count: the step time, and against the first count the speedup and the
    efficiency (speedup per process added: 1.0 is perfect scaling)."""
    rows = []
    first = {r["variant"]: r for r in runs[0]["variants"]}
    for run in runs:
        for r in run["variants"]:
            speedup = first[r["variant"]]["ms_per_step"] / r["ms_per_step"]
            rows.append({"variant": r["variant"], "processes": r["processes"], "threads": run["threads"],
                         "accum": r["accum"], "ms_per_step": r["ms_per_step"], "tokens_per_s": r["tokens_per_s"],
                         "speedup": speedup, "efficiency": speedup * first[r["variant"]]["processes"] / r["processes"]})
    return rows


def print_scaling(rows: list[dict[str, Any]]) -> None:
    print(f"{'variant':22s} {'processes':>9s} {'threads':>7s} {'ms/step':>9s} {'tokens/s':>10s} {'speedup':>8s} "
          f"{'efficiency':>10s}")
    for r in sorted(rows, key=lambda r: (r["variant"], r["processes"])):
        print(f"{r['variant']:22s} {r['processes']:9d} {r['threads']:7d} {r['ms_per_step']:9.1f} "
              f"{r['tokens_per_s']:10.0f} {r['speedup']:8.2f} {r['efficiency']:10.2f}")


def cli() -> None:
    """``python -m ngt.bench``: a bad override or an impossible setting is one line, not a traceback."""
    with exit_on_user_error():
        main()


if __name__ == "__main__":
    cli()
