"""Kernel tests run every Triton kernel against its torch reference. Without a GPU they run in Triton's CPU
interpreter. Triton reads TRITON_INTERPRET once, when it is imported — and torch._dynamo imports it along with
zaya_vl.lm — so tests/conftest.py sets it before any import; the setdefault here only covers running this
folder with another root conftest, and ``_require_triton`` skips with the reason where it came too late."""

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _triton_unusable() -> str | None:
    try:
        import triton.language as tl
        from triton.runtime.jit import JITFunction
    except Exception as error:  # noqa: BLE001
        return f"triton cannot be imported ({error!r}): the Triton kernels are not tested here"
    if DEVICE == "cpu" and isinstance(tl.zeros, JITFunction):
        return "triton was imported before TRITON_INTERPRET=1 was set, so its CPU interpreter is off"
    return None


@pytest.fixture(autouse=True)
def _require_triton(request):
    if getattr(request.module, "NEEDS_TRITON", True) and (reason := _triton_unusable()):
        pytest.skip(reason)


def bf16_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Within bf16 rounding of the result's scale: a few ulps (2^-8) of the largest magnitude."""
    scale = expected.abs().max().clamp_min(1.0)
    torch.testing.assert_close(actual.float(), expected.float(), rtol=2e-2, atol=float(2e-2 * scale))


def fp32_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    scale = float(expected.abs().max().clamp_min(1.0))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5 * scale)


def close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    (bf16_close if dtype == torch.bfloat16 else fp32_close)(actual, expected)


@pytest.fixture
def triton_backend(monkeypatch):
    """Force the Triton kernels through the dispatch (the interpreter on CPU); skip where Triton is missing."""
    monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
    from zaya_vl.lm.kernels import dispatch

    assert dispatch.kernel_backend(DEVICE, torch.float32) == "triton"
    return dispatch


@pytest.fixture
def device():
    return DEVICE


@pytest.fixture
def assert_close():
    """``assert_close(actual, expected, dtype)``: fp32 tight, bf16 within bf16 tolerance."""
    return close
