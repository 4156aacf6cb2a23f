"""The plugin reads the checkpoint's layout from the config vLLM loaded (it sees the tensors only as a stream)."""

from __future__ import annotations

from zaya_vl.conversion import NATIVE, TRANSFORMERS, ZYPHRA
from zaya_vl.vllm.weights import checkpoint_layout


def test_layout_is_read_from_the_config():
    from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig  # noqa: F401  (registers the types)

    class Release:
        model_type, layout = "zaya1_vl", "zyphra"

    class Port:
        model_type, layout = "zaya1_vl", "transformers"

    class Native:
        model_type = "zaya_vl"

    assert checkpoint_layout(Release()) is ZYPHRA
    assert checkpoint_layout(Port()) is TRANSFORMERS
    assert checkpoint_layout(Native()) is NATIVE
