"""Triton kernels for the MoE experts; torch references in ``grouped.py`` (imported only when Triton is).

``_grouped_gemm``: rows sorted by expert, one program per (row tile of one expert, column tile). The tile
map is built on the device from the offsets with a static upper bound on the tile count, so launching
needs no host sync; spare tiles exit at once. Empty experts own no tiles; ragged tails are masked.
Accumulation is fp32. Epilogue options: the vision LoRA expand ``shrunk @ B[e].T`` added only in tiles
that hold image rows (the tail of each expert's range), and SwiGLU over the gate/up halves, so gate_up
never writes its (rows, 2I) output. The LoRA shrink is the same kernel with rank-sized weights.

``_token_gemv``: a handful of unsorted decode tokens, each reading its own expert's weights: no sort.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from zaya_vl.lm.kernels.grouped import ExpertLoRA


@triton.jit
def _grouped_gemm(x_ptr, w_ptr, out_ptr, tile_expert_ptr, tile_row_ptr, bounds_ptr,
                  lora_x_ptr, lora_w_ptr, image_bounds_ptr,
                  N, K, R, stride_x, stride_we, stride_wn, stride_out, stride_lx, stride_le, stride_ln,
                  SWIGLU: tl.constexpr, HAS_LORA: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
                  BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_R: tl.constexpr):
    expert = tl.load(tile_expert_ptr + tl.program_id(0))
    if expert < 0:  # the grid is an upper bound on the tiles
        return
    row_end = tl.load(bounds_ptr + expert + 1)
    first_row = tl.load(tile_row_ptr + tl.program_id(0))
    rows = first_row + tl.arange(0, BLOCK_M)
    row_ok = rows < row_end
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    x_rows = x_ptr + rows.to(tl.int64)[:, None] * stride_x
    w_cols = w_ptr + expert.to(tl.int64) * stride_we + cols[None, :] * stride_wn  # (k, n): W[e].T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(x_rows + ks[None, :], mask=row_ok[:, None] & (ks[None, :] < K), other=0.0)
        w_mask = (ks[:, None] < K) & col_ok[None, :]
        w = tl.load(w_cols + ks[:, None], mask=w_mask, other=0.0)
        if DOT_FP32:  # the CPU interpreter has no bf16 dot
            a, w = a.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(a, w, acc, input_precision=PRECISION)
        if SWIGLU:  # up rows sit N rows below the gate rows
            w_up = tl.load(w_cols + N * stride_wn + ks[:, None], mask=w_mask, other=0.0)
            acc_up = tl.dot(a, w_up.to(a.dtype), acc_up, input_precision=PRECISION)
    if HAS_LORA:
        image_end = tl.load(image_bounds_ptr + expert + 1)
        first_image_row = row_end - (image_end - tl.load(image_bounds_ptr + expert))
        if (first_image_row < row_end) & (first_image_row < first_row + BLOCK_M):  # tile holds image rows
            rs = tl.arange(0, BLOCK_R)
            image_row = rows - row_end + image_end  # the row's index among the image rows
            a_mask = row_ok[:, None] & (rows[:, None] >= first_image_row) & (rs[None, :] < R)
            a = tl.load(lora_x_ptr + image_row.to(tl.int64)[:, None] * stride_lx + rs[None, :], mask=a_mask, other=0.0)
            b_cols = lora_w_ptr + expert.to(tl.int64) * stride_le + cols[None, :] * stride_ln + rs[:, None]
            b_mask = (rs[:, None] < R) & col_ok[None, :]
            b = tl.load(b_cols, mask=b_mask, other=0.0)
            if DOT_FP32:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=PRECISION)
            if SWIGLU:
                acc_up = tl.dot(a, tl.load(b_cols + N * stride_ln, mask=b_mask, other=0.0).to(a.dtype), acc_up,
                                input_precision=PRECISION)
    if SWIGLU:
        acc = acc * tl.sigmoid(acc) * acc_up
    out = out_ptr + rows.to(tl.int64)[:, None] * stride_out + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


def _bounds(ends: torch.Tensor) -> torch.Tensor:
    return torch.cat([ends.new_zeros(1), ends]).to(torch.int64)


def _tile_map(bounds: torch.Tensor, rows: int, block_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per tile: its expert (-1 for spare tiles) and first row. Σ ceil(count/B) ≤ ceil(rows/B) + experts."""
    experts = bounds.numel() - 1
    tiles = (bounds.diff() + block_m - 1) // block_m
    tile_ends = tiles.cumsum(0)
    tile = torch.arange(triton.cdiv(rows, block_m) + experts, device=bounds.device)
    expert = torch.searchsorted(tile_ends, tile, right=True).clamp_max(experts - 1)
    first_row = bounds[expert] + (tile - (tile_ends[expert] - tiles[expert])) * block_m
    expert = torch.where(tile < tile_ends[-1], expert, -1)
    return expert.to(torch.int32), first_row.to(torch.int32)


def grouped_gemm(x: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor, lora: ExpertLoRA | None = None, *,
                 swiglu: bool = False, block_m: int | None = None, block_n: int | None = None,
                 block_k: int | None = None) -> torch.Tensor:
    """``grouped_linear_reference`` (``swiglu=False``) or ``grouped_swiglu_reference`` in one kernel (plus the
    LoRA shrink, when there are image rows). As there, ``offsets[-1]`` is the number of rows of ``x``."""
    rows, K = x.shape
    N = weight.shape[1] // 2 if swiglu else weight.shape[1]
    out = x.new_empty(rows, N)
    if rows == 0:
        return out
    x, weight = x.contiguous(), weight.to(x.dtype).contiguous()
    cpu = x.device.type == "cpu"  # only the interpreter runs CPU tensors: fewer, larger programs there
    block_m, block_n, block_k = block_m or (32 if cpu else 64), block_n or 64, block_k or (64 if cpu else 32)
    bounds = _bounds(offsets.to(x.device))
    tile_expert, tile_row = _tile_map(bounds, rows, block_m)
    lora_x = lora_w = image_bounds = x  # placeholders, never read without HAS_LORA
    R = 0
    if lora is not None and lora.image_positions.numel():
        image_bounds = _bounds(lora.image_ends.to(x.device))
        lora_x = grouped_gemm(x[lora.image_positions], lora.A, lora.image_ends, block_m=block_m, block_k=block_k)
        lora_w, R = lora.B.to(x.dtype).contiguous(), lora.B.shape[-1]
    grid = (tile_expert.numel(), triton.cdiv(N, block_n))
    _grouped_gemm[grid](x, weight, out, tile_expert, tile_row, bounds, lora_x, lora_w, image_bounds,
                        N, K, R, x.stride(0), weight.stride(0), weight.stride(1), out.stride(0),
                        lora_x.stride(0), lora_w.stride(0), lora_w.stride(1),
                        SWIGLU=swiglu, HAS_LORA=R > 0, DOT_FP32=cpu,
                        PRECISION="ieee" if x.dtype == torch.float32 else "tf32",  # fp32 models: no TF32
                        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_R=max(16, triton.next_power_of_2(R)))
    return out


@triton.jit
def _token_gemv(x_ptr, w_ptr, out_ptr, expert_ptr, num_experts, N, K, stride_x, stride_we, stride_wn, stride_out,
                SWIGLU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    token = tl.program_id(0)
    expert = tl.load(expert_ptr + token)
    routed = expert < num_experts
    expert = tl.where(routed, expert, 0).to(tl.int64)
    k_limit = tl.where(routed, K, 0)  # skip-routed tokens read nothing and get zeros
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    w_rows = w_ptr + expert * stride_we + cols[:, None] * stride_wn
    acc = tl.zeros((BLOCK_N,), dtype=tl.float32)
    acc_up = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        xk = tl.load(x_ptr + token * stride_x + ks, mask=ks < k_limit, other=0.0).to(tl.float32)
        w_mask = (cols[:, None] < N) & (ks[None, :] < k_limit)
        acc += tl.sum(tl.load(w_rows + ks[None, :], mask=w_mask, other=0.0).to(tl.float32) * xk[None, :], axis=1)
        if SWIGLU:
            w_up = tl.load(w_rows + N * stride_wn + ks[None, :], mask=w_mask, other=0.0).to(tl.float32)
            acc_up += tl.sum(w_up * xk[None, :], axis=1)
    if SWIGLU:
        acc = acc * tl.sigmoid(acc) * acc_up
    tl.store(out_ptr + token * stride_out + cols, acc.to(out_ptr.dtype.element_ty), mask=cols < N)


def _gemv_block_n(tokens: int, N: int, device: torch.device, block_n: int = 64) -> int:
    """Column tile for ``_token_gemv``: one program per (token, tile), so at batch 1 a 64-wide tile gives a
    2048-wide projection 32 programs — a quarter of a 132-SM GPU. Halve it (down to 16) until every SM has
    about two programs."""
    if device.type != "cuda":
        return block_n
    programs_wanted = 2 * torch.cuda.get_device_properties(device).multi_processor_count
    while block_n > 16 and tokens * triton.cdiv(N, block_n) < programs_wanted:
        block_n //= 2
    return block_n


def expert_mlp_tokens(x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, expert: torch.Tensor,
                      block_n: int | None = None, block_k: int = 64) -> torch.Tensor:
    """``expert_mlp_tokens_reference``: two GEMV launches (gate_up + SwiGLU, then down), no sort."""
    x, expert = x.contiguous(), expert.to(torch.int32).contiguous()
    gate_up, down = gate_up.to(x.dtype).contiguous(), down.to(x.dtype).contiguous()
    tokens, num_experts = x.shape[0], gate_up.shape[0]
    activated = x.new_empty(tokens, down.shape[2])
    out = x.new_empty(tokens, down.shape[1])
    for inputs, weight, result, swiglu in ((x, gate_up, activated, True), (activated, down, out, False)):
        N, K = result.shape[1], inputs.shape[1]
        tile = block_n or _gemv_block_n(tokens, N, x.device)
        _token_gemv[(tokens, triton.cdiv(N, tile))](
            inputs, weight, result, expert, num_experts, N, K, inputs.stride(0), weight.stride(0), weight.stride(1),
            result.stride(0), SWIGLU=swiglu, BLOCK_N=tile, BLOCK_K=block_k)
    return out


__all__ = ["grouped_gemm", "expert_mlp_tokens"]
