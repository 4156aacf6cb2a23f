"""Triton kernel for the CCA q|k mixing of ``CCAProjection.mix`` (imported only when Triton is).

One program per (sequence, token tile, conv group). A conv group is one head, so everything after the conv
is local to the program: the folded causal conv over ``window + 1`` taps (one ``dot`` per tap, rows before the
chunk read from the conv state), bias, and the residual means of the raw q/k. In decode (``UPDATE_STATE``, all
new tokens in one tile) the program also shifts its own channels of the conv state in place, so a decode step
makes no copies. Prefill and decode are the same kernel, specialised by the constexpr flags.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _padded_rows(qk_ptr, state_ptr, src, row_ok, chans, chan_ok, window, stride_qs, stride_hw, stride_hc):
    """Rows ``src`` of [state; qk] (negative rows are the state's), in the q|k dtype."""
    in_state = src < 0
    mask = row_ok[:, None] & chan_ok[None, :]
    new = tl.load(qk_ptr + src[:, None] * stride_qs + chans[None, :], mask=mask & ~in_state[:, None], other=0.0)
    old = tl.load(state_ptr + (src + window)[:, None] * stride_hw + chans[None, :] * stride_hc,
                  mask=mask & in_state[:, None], other=0.0)
    return tl.where(in_state[:, None], old.to(new.dtype), new)


@triton.jit
def _cca_conv(qk_ptr, state_ptr, kernel_ptr, bias_ptr, out_ptr,
              seq, window, head_dim, num_heads, kv_groups, query_width,
              stride_qb, stride_qs, stride_hb, stride_hw, stride_hc,
              stride_kg, stride_ko, stride_ki, stride_kt, stride_ob, stride_os,
              UPDATE_STATE: tl.constexpr, DOT_FP32: tl.constexpr, PRECISION: tl.constexpr,
              BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr):
    batch, group = tl.program_id(0), tl.program_id(2)
    qk_ptr += batch.to(tl.int64) * stride_qb
    state_ptr += batch.to(tl.int64) * stride_hb
    tokens = tl.program_id(1) * BLOCK_S + tl.arange(0, BLOCK_S)
    token_ok = tokens < seq
    dims = tl.arange(0, BLOCK_D)
    dim_ok = dims < head_dim
    chans = group * head_dim + dims
    kernel_ptr += group * stride_kg + dims[:, None] * stride_ki + dims[None, :] * stride_ko  # (in, out) per tap
    kernel_mask = dim_ok[:, None] & dim_ok[None, :]

    acc = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    for tap in range(window + 1):  # tap `window` is the token itself
        x = _padded_rows(qk_ptr, state_ptr, tokens - window + tap, token_ok, chans, dim_ok,
                         window, stride_qs, stride_hw, stride_hc)
        w = tl.load(kernel_ptr + tap * stride_kt, mask=kernel_mask, other=0.0)
        if DOT_FP32:  # the CPU interpreter has no bf16 dot
            x, w = x.to(tl.float32), w.to(tl.float32)
        acc = tl.dot(x, w.to(x.dtype), acc, input_precision=PRECISION)
    acc += tl.load(bias_ptr + chans, mask=dim_ok, other=0.0).to(tl.float32)[None, :]

    # Residual means of the raw q/k: a query head pairs with its key head, a key head averages its query heads.
    is_query = group < num_heads
    kv_head = tl.where(is_query, group // kv_groups, group - num_heads)
    first_query = tl.where(is_query, group, kv_head * kv_groups)
    num_queries = tl.where(is_query, 1, kv_groups)
    row_mask = token_ok[:, None] & dim_ok[None, :]
    rows = qk_ptr + tokens[:, None] * stride_qs + dims[None, :]
    query_sum = tl.zeros((BLOCK_S, BLOCK_D), dtype=tl.float32)
    for j in range(num_queries):
        query_sum += tl.load(rows + (first_query + j) * head_dim, mask=row_mask, other=0.0).to(tl.float32)
    key = tl.load(rows + query_width + kv_head * head_dim, mask=row_mask, other=0.0).to(tl.float32)
    acc += 0.5 * (query_sum / num_queries + key)

    out = out_ptr + batch.to(tl.int64) * stride_ob + tokens[:, None] * stride_os + chans[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_mask)

    if UPDATE_STATE:  # new state row r = [state; qk] row seq + r; this program owns these channels
        slots = tl.arange(0, BLOCK_W)
        shifted = _padded_rows(qk_ptr, state_ptr, seq - window + slots, slots < window, chans, dim_ok,
                               window, stride_qs, stride_hw, stride_hc)
        tl.debug_barrier()  # every thread has read the old state before any overwrites it
        tl.store(state_ptr + slots[:, None] * stride_hw + chans[None, :] * stride_hc,
                 shifted.to(state_ptr.dtype.element_ty), mask=(slots[:, None] < window) & dim_ok[None, :])


def cca_conv(qk: torch.Tensor, history: torch.Tensor, kernel: torch.Tensor, bias: torch.Tensor,
             num_heads: int, num_kv_heads: int, *, update_state: bool = False,
             block_s: int | None = None) -> torch.Tensor:
    """``CCAProjection.mix`` without document cuts, in one kernel. ``update_state`` needs every new token in one
    tile (decode)."""
    batch, seq, channels = qk.shape
    groups, head_dim, _, taps = kernel.shape
    window = taps - 1
    qk = qk.contiguous()
    kernel = kernel.to(qk.dtype)
    out = torch.empty_like(qk)
    block_s = max(16, triton.next_power_of_2(seq)) if update_state else (block_s or 64)
    if update_state and seq > block_s:
        raise ValueError(f"update_state needs all {seq} tokens in one tile (block_s={block_s})")
    if seq == 0:
        return out
    grid = (batch, triton.cdiv(seq, block_s), groups)
    _cca_conv[grid](qk, history, kernel, bias, out,
                    seq, window, head_dim, num_heads, num_heads // num_kv_heads, num_heads * head_dim,
                    qk.stride(0), qk.stride(1), history.stride(0), history.stride(1), history.stride(2),
                    *kernel.stride(), out.stride(0), out.stride(1),
                    UPDATE_STATE=update_state, DOT_FP32=qk.device.type == "cpu",
                    PRECISION="ieee" if qk.dtype == torch.float32 else "tf32",
                    BLOCK_S=block_s, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                    BLOCK_W=max(16, triton.next_power_of_2(window)))
    return out


__all__ = ["cca_conv"]
