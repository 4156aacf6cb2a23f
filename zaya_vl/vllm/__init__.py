"""vLLM model plugin: serve ZAYA1 and ZAYA1-VL checkpoints with ``vllm serve`` / ``vllm.LLM``.

vLLM calls ``register`` in each of its processes through the ``vllm.general_plugins`` entry point. Importing
this package imports nothing from vLLM; the model modules do, when vLLM resolves an architecture.
"""

from __future__ import annotations

# Architecture names in config.json → the vLLM model class that serves them.
ARCHITECTURES = {
    "ZayaLM": "zaya_vl.vllm.lm:ZayaForCausalLM",
    "ZayaForCausalLM": "zaya_vl.vllm.lm:ZayaForCausalLM",
    "ZayaVL": "zaya_vl.vllm.vl:ZayaVLForConditionalGeneration",
    "Zaya1VLForConditionalGeneration": "zaya_vl.vllm.vl:ZayaVLForConditionalGeneration",
}


def register() -> None:
    from vllm import ModelRegistry

    from zaya_vl.vllm.cca import cca_backend_enum
    from zaya_vl.vllm.config import register_config

    register_config()
    # Every vLLM process must know the CCA state's backend name before a layer spec that names it is unpickled
    # there (the engine core receives the workers' KV-cache specs).
    cca_backend_enum()

    supported = set(ModelRegistry.get_supported_archs())
    for architecture, target in ARCHITECTURES.items():
        if architecture not in supported:
            ModelRegistry.register_model(architecture, target)
    _register_config_hooks()


def _register_config_hooks() -> None:
    """vLLM adjusts its engine config per architecture through ``MODELS_CONFIG_MAP``: ZAYA1-VL checkpoints whose
    image tokens attend to later tokens need each prompt prefilled in one step."""
    from vllm.model_executor.models.config import MODELS_CONFIG_MAP

    from zaya_vl.vllm.image_attention import WholePromptPrefill

    for architecture, target in ARCHITECTURES.items():
        if target.startswith("zaya_vl.vllm.vl:"):
            MODELS_CONFIG_MAP.setdefault(architecture, WholePromptPrefill)


__all__ = ["ARCHITECTURES", "register"]
