"""Which kernels run where: ZAYA_VL_KERNELS, device, dtype, autograd, and a missing Triton."""

import sys
import warnings

import pytest
import torch

from zaya_vl.lm.kernels import dispatch
from zaya_vl.lm.kernels.grouped import grouped_linear_reference

NEEDS_TRITON = False  # conftest: these run without Triton too


@pytest.fixture(autouse=True)
def _fresh_dispatch():
    dispatch._warn_once.cache_clear()
    yield
    dispatch._triton_modules.cache_clear()
    dispatch._warn_once.cache_clear()


def test_cpu_defaults_to_torch_whatever_the_interpreter(monkeypatch):
    monkeypatch.delenv("ZAYA_VL_KERNELS", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the interpreter is for tests, never the fast path
    assert dispatch.kernel_backend("cpu", torch.float32) == "torch"
    assert dispatch.kernel_backend("cpu", torch.bfloat16) == "torch"
    # auto stays on torch on GPUs too until the Triton kernels are validated compiled there (opt in: triton).
    assert dispatch.kernel_backend("cuda", torch.bfloat16) == "torch"


def test_torch_override_and_unsupported_dtypes(monkeypatch):
    monkeypatch.setenv("ZAYA_VL_KERNELS", "torch")
    assert dispatch.kernel_backend("cuda", torch.bfloat16) == "torch"
    monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
    assert dispatch.kernel_backend("cuda", torch.float64) == "torch"
    monkeypatch.setenv("ZAYA_VL_KERNELS", "fast")
    with pytest.raises(ValueError, match="ZAYA_VL_KERNELS"):
        dispatch.kernel_backend("cpu", torch.float32)


def test_forced_triton_on_cpu_without_interpreter_warns_and_uses_torch(monkeypatch):
    monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.warns(RuntimeWarning, match="TRITON_INTERPRET"):
        assert dispatch.kernel_backend("cpu", torch.float32) == "torch"


def test_forced_triton_on_cpu_with_interpreter(monkeypatch):
    pytest.importorskip("triton", reason="triton is not installed")
    if not dispatch._interpreter_active():
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set")
    monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
    assert dispatch.kernel_backend("cpu", torch.float32) == "triton"
    assert dispatch.kernel_backend("cuda", torch.bfloat16) == "triton"


def test_without_triton_everything_runs_on_torch(monkeypatch):
    for name in ("triton", "zaya_vl.lm.kernels.moe_triton", "zaya_vl.lm.kernels.cca_triton"):
        monkeypatch.setitem(sys.modules, name, None)  # `import` now raises ImportError
    dispatch._triton_modules.cache_clear()
    monkeypatch.setenv("ZAYA_VL_KERNELS", "auto")
    assert dispatch.kernel_backend("cuda", torch.bfloat16) == "torch"
    monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
    x, weight, ends = torch.randn(7, 8), torch.randn(3, 5, 8), torch.tensor([2, 2, 7])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        assert torch.equal(dispatch.grouped_linear(x, weight, ends), grouped_linear_reference(x, weight, ends))


def test_autograd_takes_the_torch_path(monkeypatch):
    """The Triton kernels have no backward: a call autograd must differentiate never reaches them."""
    monkeypatch.setenv("ZAYA_VL_KERNELS", "triton")
    monkeypatch.setattr(dispatch, "kernel_backend", lambda device, dtype: "triton")
    x = torch.randn(7, 8, requires_grad=True)
    weight, ends = torch.randn(3, 10, 8), torch.tensor([2, 2, 7])
    dispatch.grouped_swiglu(x, weight, ends).sum().backward()
    assert x.grad is not None
