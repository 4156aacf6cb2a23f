"""What every model with a ZAYA1 decoder (``self.model``) and an ``lm_head`` shares: the loss/logits head and
generation with the compressed cache. ``ZayaLM`` and ``zaya_vl.ZayaVL`` both mix it in."""

from __future__ import annotations

from torch import nn
from transformers import GenerationMixin

from zaya_vl.lm.cache import ZayaCache
from zaya_vl.lm.kernels import few_rows
from zaya_vl.lm.loss import causal_lm_loss
from zaya_vl.lm.outputs import ZayaCausalLMOutputWithPast


class ZayaGenerationMixin(GenerationMixin):
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
            logits = few_rows.linear(hidden[:, keep], self.lm_head.weight, self.lm_head.bias)
        return output_class(loss=loss, logits=logits, cache=outputs.cache, routings=outputs.routings, **fields)

    def _prepare_cache_for_generation(self, generation_config, model_kwargs, generation_mode, batch_size,
                                      max_cache_length, *args, **kwargs) -> None:
        # Our own compressed cache, preallocated to the generation's max length, replaces DynamicCache.
        if model_kwargs.get("cache") is not None or generation_config.use_cache is False:
            return
        copies = max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        model_kwargs["cache"] = ZayaCache(
            self.config.get_text_config(), batch_size * copies, max_length=max_cache_length, dtype=self.dtype,
            device=self.device)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False


__all__ = ["ZayaGenerationMixin"]
