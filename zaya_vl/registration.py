"""Registration with transformers' Auto classes, so `AutoModelForImageTextToText.from_pretrained(path)` and
`AutoProcessor.from_pretrained(path)` work on our checkpoints (native and reference layouts) without
`trust_remote_code`."""

from __future__ import annotations

from transformers import AutoConfig, AutoModel, AutoModelForImageTextToText, AutoProcessor

_done = False


def register() -> None:
    global _done
    if _done:
        return
    from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig
    from zaya_vl.modeling import ReferenceLayoutZayaVL, ReferenceLayoutZayaVLModel, ZayaVL, ZayaVLModel

    AutoConfig.register(ZayaVLConfig.model_type, ZayaVLConfig, exist_ok=True)
    AutoConfig.register(ReferenceZayaVLConfig.model_type, ReferenceZayaVLConfig, exist_ok=True)
    AutoModelForImageTextToText.register(ZayaVLConfig, ZayaVL, exist_ok=True)
    AutoModelForImageTextToText.register(ReferenceZayaVLConfig, ReferenceLayoutZayaVL, exist_ok=True)
    AutoModel.register(ZayaVLConfig, ZayaVLModel, exist_ok=True)  # the headless model, as for qwen2_5_vl
    AutoModel.register(ReferenceZayaVLConfig, ReferenceLayoutZayaVLModel, exist_ok=True)
    # AutoProcessor for both model types: `zaya1_vl` folders (Zyphra's release, the transformers port's layout)
    # otherwise resolve to a bare tokenizer.
    from zaya_vl.processing import Zaya1VLProcessor, ZayaVLProcessor

    AutoProcessor.register(ZayaVLConfig, ZayaVLProcessor, exist_ok=True)
    AutoProcessor.register(ReferenceZayaVLConfig, Zaya1VLProcessor, exist_ok=True)
    _done = True


__all__ = ["register"]
