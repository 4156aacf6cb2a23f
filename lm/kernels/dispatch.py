"""Pick the kernel for a call: the torch path (``torch._grouped_mm``, oneDNN/cuBLAS GEMMs) or our Triton kernels.

``ZAYA_VL_KERNELS`` = ``auto`` (default) | ``torch`` | ``triton``. The Triton kernels are validated against
their torch references in Triton's interpreter (CPU) but have not yet been compiled and measured on a GPU in
this project, so ``auto`` takes the torch path everywhere for now; set ``ZAYA_VL_KERNELS=triton`` on a GPU to
use them (and run ``tests/lm/kernels`` there first). ``triton`` also runs
the kernels on CPU when ``TRITON_INTERPRET=1`` (how the tests drive them); where they cannot run, it warns
once and uses torch, so CPU always works. The Triton kernels have no backward: a call that autograd must
differentiate takes the torch path. Triton is imported lazily, on the first call that wants it, so
``TRITON_INTERPRET`` set by then is honoured and a missing or broken Triton only means torch.
"""

from __future__ import annotations

import importlib
import os
import warnings
from functools import lru_cache

import torch

from zaya_vl.lm.kernels.grouped import (ExpertLoRA, expert_mlp_tokens_reference, grouped_linear_reference,
                                        grouped_mm_supported, grouped_swiglu_reference)

_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
DECODE_MAX_TOKENS = 8  # up to this many tokens a step skips the MoE sort and updates the CCA state in place


@lru_cache(maxsize=None)
def _triton_modules():
    try:
        return tuple(importlib.import_module(f"zaya_vl.lm.kernels.{name}") for name in ("moe_triton", "cca_triton"))
    except Exception:  # noqa: BLE001 - no Triton, or one that cannot load here: torch it is
        return None


def _interpreter_active() -> bool:
    """Triton picks interpreter or compiler when it is imported, so TRITON_INTERPRET=1 must predate that import
    (torch._dynamo imports Triton too): its standard library tells which one it got."""
    if os.environ.get("TRITON_INTERPRET", "0").lower() not in ("1", "true", "on", "yes"):
        return False
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(tl.zeros, JITFunction)


@lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    warnings.warn(message, RuntimeWarning, stacklevel=3)


def kernel_backend(device: torch.device | str, dtype: torch.dtype) -> str:
    """``"triton"`` or ``"torch"`` for tensors on ``device`` of ``dtype``."""
    choice = os.environ.get("ZAYA_VL_KERNELS", "auto").strip().lower() or "auto"
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"ZAYA_VL_KERNELS={choice!r}; expected auto, torch or triton.")
    device_type = torch.device(device).type
    if choice == "torch" or dtype not in _DTYPES:
        return "torch"
    if choice == "auto":
        return "torch"  # until the kernels are validated compiled on a GPU (see the module docstring)
    if _triton_modules() is not None and (device_type == "cuda" or device_type == "cpu" and _interpreter_active()):
        return "triton"
    _warn_once(f"ZAYA_VL_KERNELS=triton cannot run on {device_type} here (Triton missing, or on CPU: "
               "TRITON_INTERPRET=1 not set before Triton was imported); using the torch kernels.")
    return "torch"


def use_triton(*tensors: torch.Tensor | None) -> bool:
    """Whether a call on these tensors runs the Triton kernel: the backend says so and autograd need not
    differentiate it (the kernels have no backward)."""
    present = [t for t in tensors if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in present):
        return False
    return kernel_backend(present[0].device, present[0].dtype) == "triton"


def _lora_tensors(lora: ExpertLoRA | None) -> tuple:
    return (lora.A, lora.B) if lora is not None else ()


def grouped_linear(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor,
                   lora: ExpertLoRA | None = None) -> torch.Tensor:
    """Rows of ``x`` sorted by expert through ``weight[e]`` (+ the vision LoRA on the image rows)."""
    if use_triton(x, weight, *_lora_tensors(lora)):
        return _triton_modules()[0].grouped_gemm(x, weight, offsets, lora)
    return grouped_linear_reference(x, weight, offsets, lora)


def grouped_swiglu(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor,
                   lora: ExpertLoRA | None = None) -> torch.Tensor:
    """``silu(gate) * up`` of the grouped gate_up projection (+ LoRA on the image rows, before the activation)."""
    if use_triton(x, weight, *_lora_tensors(lora)):
        return _triton_modules()[0].grouped_gemm(x, weight, offsets, lora, swiglu=True)
    return grouped_swiglu_reference(x, weight, offsets, lora)


def expert_mlp_tokens(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, expert: torch.Tensor) -> torch.Tensor:
    """A few unsorted tokens through their experts' MLPs (skip-routed: zeros)."""
    if use_triton(x, gate_up, down):
        return _triton_modules()[0].expert_mlp_tokens(x, gate_up, down, expert)
    return expert_mlp_tokens_reference(x, gate_up, down, expert)


def cca_conv(qk: torch.Tensor, history: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
             num_heads: int, num_kv_heads: int, *, update_state: bool = False) -> torch.Tensor:
    """The Triton kernel for CCA's conv + bias + residual means of raw q|k; ``update_state`` shifts ``history``
    in place. Callers check ``use_triton`` first: the torch path is ``CCAProjection.mix``'s own."""
    return _triton_modules()[1].cca_conv(qk, history, kernel, bias, num_heads, num_kv_heads, update_state=update_state)


__all__ = ["DECODE_MAX_TOKENS", "ExpertLoRA", "kernel_backend", "use_triton", "grouped_mm_supported", "grouped_linear",
           "grouped_swiglu", "expert_mlp_tokens", "cca_conv"]
