"""The backends that compute gravity attention, and which one a device uses.

Every backend is a ``Backend``: ``(zq, v, m, g, dropout_p) -> out`` with the shapes of
``ngt.model.gravity``. They differ only in how much of the L x L work they hold at once;
``reference`` states the math and the others are tested against it (docs/model.md#backends).
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

from ngt.config import AttnImpl
from ngt.errors import NGTError
from ngt.model.gravity import Gravity, blocked_attention, reference_attention
from ngt.runtime import can_compile, room_for_graphs

Backend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Gravity, float], torch.Tensor]


@functools.cache
def _compiled() -> Backend:
    """``blocked_attention`` under torch.compile: per block, the elementwise score math,
    the masks and the softmax fused into a few loops, forward and backward, instead of one
    pass (and one saved tensor) per operation. The first call per shape and switch setting
    compiles (seconds).

    Static shapes: a run sees two or three (training, evaluation, a last partial batch),
    and each gets its own fully specialised kernel instead of one slower symbolic one."""
    room_for_graphs()
    return torch.compile(blocked_attention, dynamic=False)


def _triton() -> Backend:
    # Imported only when chosen: triton is a CUDA dependency a CPU user need not have.
    from ngt.model.triton_gravity import triton_gravity_attention

    return triton_gravity_attention


_BACKENDS: dict[AttnImpl, Callable[[], Backend]] = {
    AttnImpl.reference: lambda: reference_attention,
    AttnImpl.compiled: _compiled,
    AttnImpl.triton: _triton,
}


def get_backend(name: str) -> Backend:
    """The function that computes attention for a backend's name (not ``auto``: see
    ``resolve_backend``)."""
    return _BACKENDS[AttnImpl(name)]()


def available(name: str, device: torch.device) -> bool:
    if name == AttnImpl.reference:
        return True
    if name == AttnImpl.compiled:
        return can_compile(device)
    # Triton kernels run on CPU only in its interpreter (for tests): training needs CUDA.
    return name == AttnImpl.triton and device.type == "cuda" and can_compile(device)


def resolve_backend(name: str, device: torch.device) -> str:
    """The backend actually used for ``name`` on ``device``; ``auto`` picks the fastest one
    whose gradients are verified: triton on CUDA, else compiled where inductor can build
    kernels, else reference."""
    name = AttnImpl(name)
    if name == AttnImpl.auto:
        fastest_first = (AttnImpl.triton, AttnImpl.compiled, AttnImpl.reference)
        return next(b for b in fastest_first if available(b, device)).value
    if not available(name, device):
        raise NGTError(f"model.attn_impl={name} cannot train on {device.type} here (use auto or reference)")
    return name.value
