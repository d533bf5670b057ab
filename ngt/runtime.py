"""Where and how a model runs: the device, determinism, mixed precision, compilation, and
the processes of a data-parallel run.

Shared by everything that runs a model (``ngt.trainer``, ``ngt.bench``, ``ngt.generate``),
so a benchmark times the step exactly as training runs it.
"""

from __future__ import annotations

import os
import re
import resource
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator, Optional

import torch
import torch.distributed as dist

from ngt.config import DEVICES, CompileMode, TrainConfig
from ngt.errors import NGTError, RunFailed


@dataclass(frozen=True)
class Processes:
    """The processes that train one run together, data-parallel (README, "Data-parallel
    runs"), as torchrun sets them in the environment (and hydra/launcher=slurm_ddp from
    submitit's): this process's ``rank`` of ``size``, and ``local_rank``, its GPU on its
    node. A plain run is rank 0 of 1, and every method here is then a no-op."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Processes:
        env = os.environ
        return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))

    @property
    def writes(self) -> bool:
        """Rank 0 alone writes the run directory; the others' state is its copy."""
        return self.rank == 0

    def check_split(self, t: TrainConfig) -> None:
        t.check_split(self.size, f"WORLD_SIZE={self.size}")

    def micro_batches(self, n: int) -> range:
        """Which of a step's ``n`` micro-batches this process trains on: rank 0 the last
        share, which holds the step's repulsion term (ngt.step.Repulsion), the others the
        shares before it in rank order. One process: all of them, in order."""
        k = n // self.size
        return range(n - k, n) if self.rank == 0 else range((self.rank - 1) * k, self.rank * k)

    def join(self, device: torch.device, timeout_s: float) -> None:
        """Join the run's process group (once per process: a grid's runs reuse it): gloo on
        the CPU, NCCL on CUDA. A collective that waits longer than ``timeout_s`` fails."""
        if self.size == 1 or dist.is_initialized():
            return
        if device.type == "cuda":
            torch.cuda.set_device(device)
        with communicating("joining the other processes"):
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """``values`` summed over the processes, in place."""
        if self.size > 1:
            with communicating("adding up the step's losses"):
                dist.all_reduce(values)
        return values

    def gathered(self, mine: list[Any]) -> list[list[Any]]:
        """Every process's ``mine``, by rank."""
        if self.size == 1:
            return [mine]
        out: list[Any] = [None] * self.size
        with communicating("gathering evaluation losses"):
            dist.all_gather_object(out, mine)
        return out

    def shared(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every process."""
        if self.size == 1:
            return obj
        box = [obj]
        with communicating("receiving rank 0's decision"):
            dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            with communicating("waiting for the other processes"):
                dist.barrier()

    def replicate(self, model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
        """``model``, or on several processes its DistributedDataParallel wrapper, which
        starts every process from rank 0's parameters and averages the gradients over them
        in backward. NGT's last coordinate update feeds only the repulsion term, and a hard
        radius gets no gradient at all: DDP must look for unused parameters at every forward."""
        if self.size == 1:
            return model
        with communicating("replicating the model"):
            return torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=getattr(model, "arch", None) == "ngt")


class PeerFailed(RunFailed):
    """A collective failed: another process of the run died, failed or stopped answering."""


@contextmanager
def communicating(what: str) -> Iterator[None]:
    """Around a collective: its failure (gloo's RuntimeError, NCCL's DistBackendError, a
    timeout) becomes one line saying that another process failed, not a traceback."""
    try:
        yield
    except torch.OutOfMemoryError:
        raise  # this process's own failure
    except RuntimeError as e:
        # gloo's first sentence, without the source file it names: "Connection closed by peer [host]:port"
        text = re.sub(r"^\[[^\]]*\] ", "", str(e).strip()).split(". ")[0].splitlines()[0] if str(e).strip() else ""
        raise PeerFailed(f"another process of this data-parallel run failed or stopped answering "
                         f"({what}: {text[:200] or type(e).__name__})") from None


def is_compiled(train_model: torch.nn.Module) -> bool:
    return isinstance(train_model, torch._dynamo.eval_frame.OptimizedModule)


def no_sync(train_model: torch.nn.Module) -> AbstractContextManager:
    """Gradients stay local (accumulated, not averaged) inside this context; nothing under
    one process. ``train_model`` is a model, its DDP wrapper, or either compiled."""
    inner = train_model._orig_mod if is_compiled(train_model) else train_model
    return inner.no_sync() if isinstance(inner, torch.nn.parallel.DistributedDataParallel) else nullcontext()


def pick_device(name: str, job_num: int = 0, setting: str = "train.device",
                procs: Processes = Processes()) -> torch.device:
    """``auto``: CUDA when present. Jobs of a grid launched side by side on one node
    (submitit_local shows every job all GPUs) spread over the GPUs by job number; under
    Slurm each job sees only its own GPU, so this is cuda:0 there. The processes of a
    data-parallel run take one GPU each, cuda:LOCAL_RANK."""
    if not DEVICES.fullmatch(name):
        raise NGTError(f"{setting}={name!r} is out of range: auto, cpu, cuda or cuda:N")
    if name == "auto" and not torch.cuda.is_available():
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NGTError(f"{setting}={name} but CUDA is not available on this machine")
    if procs.size > 1 and name in ("auto", "cuda"):
        return torch.device("cuda", procs.local_rank)
    if procs.size > 1 and name.startswith("cuda:"):
        raise NGTError(f"{setting}={name} names one GPU, but each of the {procs.size} processes of a data-parallel "
                       f"run takes its own (cuda:LOCAL_RANK): use {setting}=cuda or auto")
    if name == "auto":
        return torch.device("cuda", job_num % torch.cuda.device_count())
    device = torch.device(name)
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise NGTError(f"{setting}={name} but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def set_threads(threads: int) -> None:
    """``train.threads``: torch's CPU threads; 0 leaves torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)


def use_deterministic(t: TrainConfig) -> None:
    """``train.deterministic``, for the whole process as torch keeps it. cuBLAS reads its
    workspace setting once, so it is fixed before the first CUDA matmul."""
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(t.deterministic, warn_only=True)


def autocast(device: torch.device, enabled: bool) -> tuple[AbstractContextManager, Optional[torch.dtype]]:
    """Mixed precision on CUDA (``train.amp``): bf16 where supported, else fp16, which
    needs a gradient scaler (``grad_scaler``). Off elsewhere: a no-op context and None."""
    if device.type != "cuda" or not enabled:
        return nullcontext(), None
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast("cuda", dtype=dtype), dtype


def grad_scaler(amp_dtype: Optional[torch.dtype]) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)


def can_compile(device: torch.device) -> bool:
    """Whether torch.compile can build kernels here: inductor needs Triton on CUDA and a
    C++ compiler on CPU."""
    try:
        if device.type == "cuda":
            from torch.utils._triton import has_triton

            return has_triton()
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
        return True
    except Exception:  # no compiler, or an inductor without this probe: stay eager
        return False


def room_for_graphs(limit: int = 64) -> None:
    """Let dynamo keep up to ``limit`` graphs of one function. A local grid runs every
    variant in one process: each switch setting, times each shape (and the model's
    ``want_coords``), is one more graph, and past the default of 8 dynamo warns and runs
    the rest eagerly, which would time later runs differently from earlier ones."""
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # before torch 2.7
    setattr(config, name, max(getattr(config, name), limit))


def compile_mode(t: TrainConfig, device: torch.device) -> CompileMode:
    """``train.compile_mode``, or where it is null the device's: CUDA graphs on CUDA, whose
    compiled steps are otherwise bound by launching kernels (docs/performance.md)."""
    if t.compile_mode is not None:
        return t.compile_mode
    return CompileMode("reduce-overhead" if device.type == "cuda" else "default")


def compiles(t: TrainConfig, device: torch.device) -> bool:
    """``train.compile``, or where it is null: on CUDA, where inductor can build kernels."""
    return t.compile if t.compile is not None else device.type == "cuda" and can_compile(device)


def compile_model(model: torch.nn.Module, t: TrainConfig, device: torch.device) -> torch.nn.Module:
    """What training calls: ``model`` itself, or under ``train.compile`` its compiled
    wrapper, with the same parameters, in ``compile_mode``."""
    if not compiles(t, device):
        return model
    room_for_graphs()
    return torch.compile(model, mode=str(compile_mode(t, device)))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on CPU), so a clock reads finished work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else str(device)


def peak_memory_mb(device: torch.device) -> tuple[float, str]:
    """The most memory held so far, and what was measured: the CUDA allocator's peak, or
    the process's peak resident size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "process_max_rss"
