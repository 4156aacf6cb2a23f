"""The output head's ``x @ weight.T (+ bias)`` for the few rows of a decode step on CPU.

The LM head (vocab × hidden) is the largest weight a CPU decode step reads. At 2–64 rows MKL's GEMM streams it
at well under the read bandwidth (32000 × 512, 8 rows, one thread, weight not in cache: ~11 ms as ``F.linear``),
where oneDNN on a copy of the weight reordered once for that row count takes ~6 ms. The reordered copy costs the
weight's size again, so only the head takes this path, and one copy is kept (for the latest row count and
weight). For the other, smaller weights of a step, ``F.linear`` is the fastest form measured (2026-12-02, torch
2.13: at 8 rows on 1–2 MB weights not in cache, 8.5 GB/s against 7.2 GB/s for ``weight @ x.T`` and less for
prepacked MKL or oneDNN copies). Everything else (GPU, one row or more than ``FEW_ROWS``, autograd, other dtypes,
non-contiguous weights) is ``F.linear``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEW_ROWS = 64

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
    """Whether ``head_linear`` takes the prepacked path for these rows (else it is ``F.linear``)."""
    rows = x.numel() // x.shape[-1]
    return (_MKLDNN and x.device.type == "cpu" and 1 < rows <= FEW_ROWS and x.dtype == torch.float32
            and weight.dtype == torch.float32 and weight.is_contiguous()
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def head_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """The output head's ``linear`` for a decode step: on CPU at 2–``FEW_ROWS`` rows a oneDNN product on a
    prepacked copy of ``weight`` (one opaque op inside a compiled step), otherwise ``F.linear``."""
    if not head_packs(x, weight):
        return F.linear(x, weight, bias)
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


__all__ = ["FEW_ROWS", "PACKED_HEAD_COPIES", "head_linear", "head_packs"]
