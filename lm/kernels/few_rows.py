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


__all__ = ["FEW_ROWS", "linear"]
