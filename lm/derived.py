"""Tensors derived from parameters (a fused weight, a folded kernel), rebuilt only when a parameter changes.

At inference the derived tensor is built once and reused; a parameter's ``_version`` (bumped by every
in-place write: optimizer steps, ``load_state_dict``, ``copy_``), storage, dtype and device key the memo.
While autograd records, it is rebuilt every call so gradients flow back to the parameters.
"""

from __future__ import annotations

import torch


class DerivedTensors:
    def __init__(self) -> None:
        self._memo: dict[str, tuple[tuple, object]] = {}

    def get(self, name: str, sources: list[torch.Tensor], build):
        if torch.compiler.is_compiling():
            # A compiled step cannot key on storage pointers: it reuses what the eager prefill memoised
            # (the graph guards on that tensor), or builds the tensor inside the graph.
            memo = self._memo.get(name)
            return memo[1] if memo is not None else build()
        if torch.is_grad_enabled() and any(t.requires_grad for t in sources):
            self._memo.pop(name, None)
            return build()
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in sources)
        memo = self._memo.get(name)
        if memo is None or memo[0] != key:
            with torch.no_grad():
                memo = (key, build())
            self._memo[name] = memo
        return memo[1]


__all__ = ["DerivedTensors"]
