"""``few_rows.head_linear`` (the output head of a CPU decode step) computes ``F.linear``: every row count it takes
and the ones it hands back, with and without bias; its prepacked copy follows the weight."""

import pytest
import torch
import torch.nn.functional as F

from zaya_vl.lm.kernels import few_rows


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
