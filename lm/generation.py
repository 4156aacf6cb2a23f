"""What every model with a ZAYA1 decoder (``self.model``) and an ``lm_head`` shares: the loss/logits head and
generation with the compressed cache. ``ZayaLM`` and ``zaya_vl.ZayaVL`` both mix it in.

Caches: ``generate()`` builds a ``ZayaCache`` sized to the generation (grown by doubling if a caller's is not),
or with ``cache_implementation="static"`` a ``StaticZayaCache`` whose capacity is rounded up by
``static_cache_capacity`` (the next of 64, 96, 128, 192, 256, 384, …), and then compiles the decode step
(``torch.compile(fullgraph=True, dynamic=False)``): every step, and every prompt whose prompt + new tokens round
to the same capacity, reuses one graph.
The prefill runs eagerly. On CUDA the static cache is the default and the step is captured as a CUDA graph
(``mode="reduce-overhead"``); elsewhere pass ``cache_implementation="static"`` to compile (inductor, on CPU with
its C++ wrapper; a ``compile_config`` chooses another backend), or ``disable_compile=True`` to run the static
cache eagerly.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CompileConfig, GenerationMixin

from zaya_vl.lm.cache import StaticZayaCache, ZayaCache
from zaya_vl.lm.kernels import few_rows
from zaya_vl.lm.loss import causal_lm_loss
from zaya_vl.lm.outputs import ZayaCausalLMOutputWithPast


class ZayaGenerationMixin(GenerationMixin):
    """Models list this mixin *before* their pretrained base: ``PreTrainedModel`` also defines
    ``get_compiled_call``, ``_default_compile_config``, ``_is_stateful`` and the embedding accessors, and with it
    first the compiled decode step would run with transformers' defaults (no fullgraph, our derived weights rebuilt
    inside every step)."""

    _is_stateful = True

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def head_outputs(self, outputs, labels, logits_to_keep, segment_ids, loss_chunk_size,
                     return_logits, output_class=ZayaCausalLMOutputWithPast, **fields):
        """With ``labels`` the loss is computed in chunks of ``loss_chunk_size`` tokens without ever holding full
        fp32 logits, and logits are not returned unless ``return_logits=True``. ``fields`` are further fields of
        ``output_class`` (a subclass of :class:`ZayaCausalLMOutputWithPast` that declares them)."""
        hidden = outputs.last_hidden_state
        loss = logits = None
        if labels is not None:
            loss = causal_lm_loss(hidden, self.lm_head.weight, labels, bias=self.lm_head.bias,
                                  chunk_size=loss_chunk_size, segment_ids=segment_ids)
        if labels is None or return_logits:
            keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
            logits = few_rows.head_linear(hidden[:, keep], self.lm_head.weight, self.lm_head.bias)
        return output_class(loss=loss, logits=logits, cache=outputs.cache, routings=outputs.routings, **fields)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length, *args, **kwargs) -> None:
        # Our own compressed cache, preallocated to the generation's max length, replaces transformers' caches.
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return
        copies = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        implementation = generation_config.cache_implementation
        if implementation is None and self.device.type == "cuda" and copies == 1:
            implementation = "static"  # compiled, CUDA-graph captured decode by default on GPUs
        if implementation not in (None, "dynamic", "static"):
            raise ValueError(f"cache_implementation={implementation!r}: ZAYA1 models support 'dynamic' (the default "
                             "off CUDA) and 'static' (fixed-size, compiled decode).")
        cache_class, length = ZayaCache, max_cache_length
        if implementation == "static":
            cache_class, length = StaticZayaCache, static_cache_capacity(max_cache_length)
        model_kwargs["cache"] = cache_class.for_model(self, batch_size * copies, max_length=length)

    # -- the compiled decode step -------------------------------------------------------------------------
    def _valid_auto_compile_criteria(self, model_kwargs, generation_config) -> bool:
        cache = model_kwargs.get("cache")
        if generation_config.disable_compile or not isinstance(cache, StaticZayaCache):
            return False
        devices = set(getattr(self, "hf_device_map", {}).values())
        return not ({"cpu", "disk"} & devices and len(devices) > 1)  # offloaded models do not compile

    def _default_compile_config(self) -> CompileConfig:
        if self.device.type == "cuda":
            return CompileConfig(fullgraph=True, dynamic=False)  # mode="reduce-overhead": a CUDA graph
        if self.device.type == "cpu":
            # Inductor's C++ wrapper calls the step's ~70 kernels from C++ rather than Python: measured ~1.6 ms
            # of a ~13 ms medium-config batch-1 step (one thread), ~0.8 ms of ~29 ms at batch 8.
            return CompileConfig(fullgraph=True, dynamic=False, mode=None, options={"cpp_wrapper": True})
        return CompileConfig(fullgraph=True, dynamic=False, mode="default")  # CUDA graphs exist on CUDA only

    def get_compiled_call(self, compile_config) -> callable:
        with torch.no_grad():  # the fused weights a step uses, built once outside the graph
            for module in self.modules():
                if hasattr(module, "warm_derived"):
                    module.warm_derived()
        compiled = super().get_compiled_call(compile_config)  # transformers' memo, with our default config

        def step(**inputs):
            cache = inputs.get("cache")
            before = cache.seq_length if cache is not None else None
            outputs = compiled(**inputs)
            if cache is not None and cache.seq_length == before:
                # Inside the graph the cache advanced its device length only: keep its host count here.
                tokens = inputs.get("input_ids") if inputs.get("input_ids") is not None else inputs["inputs_embeds"]
                cache.note_compiled_step(tokens.shape[1])
            return outputs

        return step

    def prepare_inputs_for_generation(self, *args, **kwargs):
        """A static ZAYA1 cache records the prompt's padding at prefill and builds its masks on the device, so
        decode steps take no attention mask (its growing width would recompile the step every token)."""
        inputs = super().prepare_inputs_for_generation(*args, **kwargs)
        cache = inputs.get("cache")
        if isinstance(cache, StaticZayaCache) and cache.filled:
            inputs.pop("attention_mask", None)
        return inputs


def static_cache_capacity(length: int) -> int:
    """The capacity a static cache gets for ``length`` tokens: the next of 64, 96, 128, 192, 256, 384, … (powers
    of two and 1.5 times them). A step attends over the whole buffer, so at most a third of what it reads is
    unused; and one compiled step serves each capacity, about two per doubling of the length."""
    capacity = 64
    while capacity < length:
        capacity = capacity * 3 // 2 if capacity & (capacity - 1) == 0 else capacity * 4 // 3
    return capacity

__all__ = ["ZayaGenerationMixin", "static_cache_capacity"]
