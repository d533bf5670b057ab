"""Where and how a model runs: the device, determinism, mixed precision and compilation.

Shared by everything that runs a model (``ngt.trainer``, ``ngt.bench``, ``ngt.generate``),
so a benchmark times the step exactly as training runs it.
"""

from __future__ import annotations

import os
import resource
from contextlib import AbstractContextManager, nullcontext
from typing import Optional

import torch

from ngt.config import CompileMode, TrainConfig
from ngt.errors import NGTError


def pick_device(name: str, job_num: int = 0, setting: str = "train.device") -> torch.device:
    """``auto``: CUDA when present. Jobs of a grid launched side by side on one node
    (submitit_local shows every job all GPUs) spread over the GPUs by job number; under
    Slurm each job sees only its own GPU, so this is cuda:0 there."""
    if name == "auto":
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", job_num % torch.cuda.device_count())
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise NGTError(f"{setting}={name} but CUDA is not available on this machine")
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
