"""The ZAYA1-VL config as vLLM's process reads it.

vLLM's transformers (an older 5.x than ours) instantiates a config class with no arguments when it prints or
diffs a config; our ``ZayaVLConfig()`` defaults pair the 8B LM with a default vision tower whose output width does
not match, and refuse. This subclass only makes the defaults consistent (the tower's output width follows the LM);
every config that loads in our package loads the same here.
"""

from __future__ import annotations

from typing import Any

from zaya_vl.configuration import ReferenceZayaVLConfig, ZayaVLConfig


class ServingZayaVLConfig(ZayaVLConfig):
    def __post_init__(self, **kwargs: Any) -> None:
        if self.vision_config is None:
            text = self.text_config
            hidden = text.hidden_size if hasattr(text, "hidden_size") else dict(text or {}).get("hidden_size", 2048)
            self.vision_config = {"out_hidden_size": hidden}
        super().__post_init__(**kwargs)


class ServingReferenceZayaVLConfig(ReferenceZayaVLConfig):
    """A release's ``zaya1_vl`` config, answering vLLM's questions about the LM from its native conversion."""

    def get_text_config(self, *args, **kwargs):
        return native_vl_config(self).text_config


def register_config() -> None:
    from transformers import AutoConfig

    AutoConfig.register(ServingZayaVLConfig.model_type, ServingZayaVLConfig, exist_ok=True)
    AutoConfig.register(ServingReferenceZayaVLConfig.model_type, ServingReferenceZayaVLConfig, exist_ok=True)


def native_vl_config(config):
    """Our native ``ZayaVLConfig`` for a VL config of either layout (the reference's flat config converted)."""
    if getattr(config, "model_type", None) == "zaya1_vl":
        cached = getattr(config, "_zaya_native", None)
        if cached is None:
            # vLLM's hf_overrides set attributes on the loaded config; the one a user sets here is the image
            # attention mode (to serve a release's checkpoint causally, as its reference code attends).
            overrides = {"image_attention": config.image_attention} if hasattr(config, "image_attention") else {}
            cached = config.to_native(**overrides)
            object.__setattr__(config, "_zaya_native", cached)
        return cached
    return config


def text_config(config):
    """Our ``ZayaLMConfig`` for the LM inside a config of any of our kinds (text-only, native VL, reference VL)."""
    config = native_vl_config(config)
    return native_lm_config(getattr(config, "text_config", None) or config)


def native_lm_config(config):
    """A text config as our ``ZayaLMConfig``: vLLM's transformers reads a ``zaya`` checkpoint as its own
    ``ZayaConfig``, which shares our field names but not our settings' derived properties the LM modules read."""
    from zaya_vl.lm.config import ZayaLMConfig

    if isinstance(config, ZayaLMConfig):
        return config
    cached = getattr(config, "_zaya_native", None)
    if cached is None:
        cached = ZayaLMConfig.from_dict(config.to_dict())
        object.__setattr__(config, "_zaya_native", cached)
    return cached


def image_attention_mode(config) -> str:
    """How image tokens attend in the checkpoint whose config vLLM loaded (``"causal"`` for a text model)."""
    config = native_vl_config(config)
    return getattr(config, "image_attention", None) if hasattr(config, "text_config") else "causal"


__all__ = ["ServingReferenceZayaVLConfig", "ServingZayaVLConfig", "image_attention_mode", "native_lm_config",
           "native_vl_config", "register_config", "text_config"]
