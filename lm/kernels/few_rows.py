"""``x @ weight.T (+ bias)`` for the few rows of a decode step on CPU.

For one row, ``F.linear`` becomes MKL's GEMV, which on this project's CPU streams a row-major weight at about
half the speed of a GEMM; for a handful of rows it picks a transposed-B GEMM that is no better. Computing
``weight @ x.T`` instead (the weight as the untransposed A, one row duplicated into two columns) measured, for
64 distinct cold fp32 weights: 1.2–1.8× faster at one row, 1.3–2.5× at 2–8 rows, within ±10 % at 16–64 rows;
for the 32k × 512 output head ~2.7 ms instead of ~5 ms (one row) and ~5 ms instead of ~11 ms (8 rows).
Re-measured 2026-12-02 (torch 2.13, one thread, per-thread CPU time): at *one* row ``F.linear`` is now the faster
(64 cold 2 MB weights: 12 ms against 26 ms; the LM head: 5.4 ms against 11.5 ms, i.e. at the memory bandwidth),
so one row takes ``F.linear``; at 8 rows the transposed form still wins for the LM head (12 ms against 18 ms).
Everything else (GPU, one row or more than ``FEW_ROWS``, autograd, other dtypes, non-contiguous weights) is
``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEW_ROWS = 64


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    rows = x.reshape(-1, x.shape[-1])
    count = rows.shape[0]
    if (x.device.type != "cpu" or not 1 < count <= FEW_ROWS or x.dtype != torch.float32
            or weight.dtype != torch.float32 or not weight.is_contiguous()
            or (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))):
        return F.linear(x, weight, bias)
    columns = rows.t()
    out = torch.mm(weight, columns) if bias is None else torch.addmm(bias.to(x.dtype)[:, None], weight, columns)
    return out.t().contiguous().view(*x.shape[:-1], weight.shape[0])


# -- the output head: a weight prepacked by oneDNN for the decode batch -----------------------------------------
# The LM head (vocab × hidden) is about half of what a CPU decode step reads. At several rows neither MKL form
# above streams it well (32000 × 512, 8 rows, one thread: ~10.7 ms as ``weight @ x.T``, ~14 ms as ``F.linear``),
# where oneDNN on a weight reordered once for that row count takes ~6.7 ms. The reordered copy costs the weight's
# size again, so only the head takes this path, and one copy is kept (for the latest row count and weight).
PACKED_HEAD_COPIES = 1
_packed_weights: list[tuple[tuple, torch.Tensor]] = []


def _packed(weight: torch.Tensor, rows: int) -> torch.Tensor:
    # A parameter's ``_version`` moves with every in-place write (optimizer step, ``copy_``, ``load_state_dict``).
    key = (weight.data_ptr(), weight._version, tuple(weight.shape), weight.dtype, rows)
    for i, (k, packed) in enumerate(_packed_weights):
        if k == key:
            _packed_weights.insert(0, _packed_weights.pop(i))
            return packed
    packed = torch.ops.mkldnn._reorder_linear_weight(weight, rows)
    _packed_weights.insert(0, (key, packed))
    del _packed_weights[PACKED_HEAD_COPIES:]
    return packed


def head_packs(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``head_linear`` takes the prepacked path for these rows (else it is ``linear``)."""
    rows = x.numel() // x.shape[-1]
    return (_MKLDNN and x.device.type == "cpu" and 1 < rows <= FEW_ROWS and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def head_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The output head's ``linear`` for a decode step: on CPU at 2–``FEW_ROWS`` rows a oneDNN product on a
    prepacked copy of ``weight`` (one opaque op inside a compiled step), otherwise ``linear``."""
    if not head_packs(x, weight):
        return linear(x, weight, bias)
    rows = x.reshape(-1, x.shape[-1])
    out = torch.ops.zaya_vl.cpu_packed_linear(rows if rows.is_contiguous() else rows.contiguous(), weight, bias)
    return out.view(*x.shape[:-1], weight.shape[0])


_MKLDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


@torch.library.custom_op("zaya_vl::cpu_packed_linear", mutates_args=(), device_types="cpu")
def _cpu_packed_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, _packed(weight, x.shape[0]), bias, "none", [], "")


@_cpu_packed_linear.register_fake
def _(x, weight, bias):
    return x.new_empty(x.shape[0], weight.shape[0])


__all__ = ["FEW_ROWS", "PACKED_HEAD_COPIES", "head_linear", "head_packs", "linear"]
