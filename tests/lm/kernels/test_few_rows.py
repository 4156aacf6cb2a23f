"""``few_rows.linear`` (the decode-step GEMM form on CPU) computes ``F.linear``: every row count it takes and
the ones it hands back, with and without bias, any leading shape; autograd still gets gradients."""

import pytest
import torch
import torch.nn.functional as F

from zaya_vl.lm.kernels import few_rows


@pytest.mark.parametrize("rows", [1, 2, 7, few_rows.FEW_ROWS, few_rows.FEW_ROWS + 1])
@pytest.mark.parametrize("with_bias", [False, True])
@torch.no_grad()
def test_matches_f_linear(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, 48, generator=generator)  # (batch, seq, in): a decode step's shape
    weight = torch.randn(80, 48, generator=generator)
    bias = torch.randn(80, generator=generator) if with_bias else None
    out = few_rows.linear(x, weight, bias)
    assert out.shape == (rows, 1, 80) and out.is_contiguous()
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_non_contiguous_weight_and_other_dtypes_fall_back_exactly():
    x = torch.randn(1, 32)
    transposed_view = torch.randn(32, 16).t()  # column-major: the fast form would be slow here
    assert torch.equal(few_rows.linear(x, transposed_view), F.linear(x, transposed_view))
    half = torch.randn(16, 32, dtype=torch.bfloat16)
    assert torch.equal(few_rows.linear(x.bfloat16(), half), F.linear(x.bfloat16(), half))


def test_gradients_flow_through_the_autograd_path():
    weight = torch.randn(8, 6, requires_grad=True)
    x = torch.randn(1, 6, requires_grad=True)
    few_rows.linear(x, weight).sum().backward()
    torch.testing.assert_close(weight.grad, x.detach().expand(8, 6))
    torch.testing.assert_close(x.grad, weight.detach().sum(0, keepdim=True))


@pytest.mark.parametrize("rows", [1, 2, 8, few_rows.FEW_ROWS, few_rows.FEW_ROWS + 1])
@pytest.mark.parametrize("with_bias", [False, True])
@torch.no_grad()
def test_head_linear_matches_f_linear(rows, with_bias):
    generator = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 1, 48, generator=generator)
    weight = torch.randn(300, 48, generator=generator)
    bias = torch.randn(300, generator=generator) if with_bias else None
    out = few_rows.head_linear(x, weight, bias)
    assert out.shape == (rows, 1, 300)
    torch.testing.assert_close(out, F.linear(x, weight, bias), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_head_linear_repacks_after_an_in_place_weight_change_and_keeps_one_copy():
    if not few_rows.head_packs(torch.randn(4, 16), torch.randn(8, 16)):
        pytest.skip("no oneDNN linear packing in this torch build: head_linear is linear")
    weight = torch.randn(64, 16)
    x = torch.randn(4, 1, 16)
    few_rows.head_linear(x, weight)
    weight.mul_(-2.0)  # e.g. an optimizer step or load_state_dict: same storage, new values
    torch.testing.assert_close(few_rows.head_linear(x, weight), F.linear(x, weight), rtol=1e-5, atol=1e-5)
    for rows in range(2, 2 + few_rows.PACKED_HEAD_COPIES + 2):
        few_rows.head_linear(torch.randn(rows, 16), weight)
    assert len(few_rows._packed_weights) <= few_rows.PACKED_HEAD_COPIES
