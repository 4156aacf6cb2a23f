"""Non-causal image attention (``ZayaVLConfig.image_attention`` other than ``"causal"``) on any vLLM backend.

vLLM's attention backends attend causally (its prefix-LM ranges, one per image, are honoured by some GPU
backends only, and express none of our modes exactly). So each attention layer runs vLLM's ``Attention`` as
usual (it writes the paged K/V cache and gives every causal row), then, for each prefill sequence of the step
with image tokens, recomputes the rows whose mask is not causal with SDPA over that sequence's own q/k/v under
the mask ``zaya_vl.lm.masks`` builds for our model (the same rules, the same code).

That is exact only when every key those rows need is in the step. An image token may need keys from later
tokens of its prompt (the rest of its image; in ``"images"`` mode every later image; in ``"prefix"`` mode
everything up to two past the last image), so a prompt with images must be prefilled in one step, from its
first token. ``WholePromptPrefill`` makes vLLM's scheduler do that (prompts are never chunked);
``ImageAttentionPlan`` checks it at every step and raises rather than attend with a wrong mask.
Decode tokens are text, causal in every mode.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from zaya_vl.lm.masks import may_attend  # the mask rules our model attends by
from zaya_vl.lm.masks import image_attention_spans

logger = logging.getLogger(__name__)


@dataclass
class ImageSequence:
    """One prefill sequence of the step (rows ``begin:end`` of the flat batch, its whole prompt from position 0)
    with the span ids of its tokens (``image_attention_spans``) and the rows whose attention is not causal."""

    begin: int
    end: int
    span_ids: torch.Tensor  # (end - begin,)
    rows: torch.Tensor      # indices into begin:end where span_ids > 0


class ImageAttentionPlan:
    """Per step: which sequences need their image rows re-attended; checks each prompt with images is whole.

    It remembers, per CCA state slot (vLLM gives each running request one), whether the request's first prefill
    chunk had image tokens: a later prefill chunk of such a request, or any resumed chunk holding image tokens,
    means a prompt was split, and the rows already computed could not see keys that only arrived now."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self._slots_with_images: set[int] = set()

    def __call__(self, image_token: torch.Tensor | None, metadata) -> list[ImageSequence]:
        """``metadata``: the CCA state layer's for this step (``prefill_chunks()``), None in the profiling run."""
        if metadata is None:  # vLLM's profiling run: the batch is one sequence from position 0
            if image_token is None or not bool(image_token.any()):
                return []
            return [s for s in [self._sequence(image_token, 0, image_token.shape[0])] if s is not None]
        sequences = []
        offset = metadata.num_decode_tokens
        if image_token is not None and offset and bool(image_token[:offset].any()):
            # A one-token chunk is scheduled as a decode: an image token there is a prompt split before its end.
            self._split_prompt_error()
        for begin, end, slot, resumes in metadata.prefill_chunks():
            has_images = image_token is not None and bool(image_token[begin:end].any())
            if resumes:
                if has_images or slot in self._slots_with_images:
                    self._split_prompt_error()
                continue
            self._slots_with_images.discard(slot)
            if has_images:
                self._slots_with_images.add(slot)
                sequence = self._sequence(image_token, begin, end)
                if sequence is not None:
                    sequences.append(sequence)
        return sequences

    def _sequence(self, image_token: torch.Tensor, begin: int, end: int) -> ImageSequence | None:
        span_ids = image_attention_spans(image_token[None, begin:end], self.mode)[0]
        rows = (span_ids > 0).nonzero().squeeze(1)
        return ImageSequence(begin, end, span_ids, rows) if rows.numel() else None

    def _split_prompt_error(self):
        raise RuntimeError(
            f"A prompt with images was prefilled in more than one engine step, but image_attention={self.mode!r} "
            "lets image tokens attend to later tokens of the prompt, which must then be in the same step. The "
            "plugin turns chunked prefill off for such checkpoints; keep it off (enable_chunked_prefill=False, "
            "max_num_batched_tokens >= max_model_len, long_prefill_token_threshold=0), or serve with "
            "hf_overrides={'image_attention': 'causal'} to attend causally on purpose.")


def attend_image_rows(out: torch.Tensor, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      sequences: list[ImageSequence], *, num_heads: int, num_kv_heads: int, head_dim: int,
                      sliding_window: int | None, rows_per_block: int = 1024) -> torch.Tensor:
    """``out`` (tokens, heads · head_dim) with each sequence's non-causal rows recomputed under our mask.

    ``query`` (tokens, heads · head_dim), ``key`` and ``value`` (tokens, kv_heads · head_dim), as given to vLLM's
    ``Attention`` (rotary and norms applied). The rows go in blocks of ``rows_per_block``, each with its own
    (rows, keys) mask from the mask rules of ``zaya_vl.lm.masks``, so no (keys, keys) mask is ever built."""
    if not sequences:
        return out
    out = out.clone()
    groups = num_heads // num_kv_heads
    for sequence in sequences:
        length = sequence.end - sequence.begin
        window = sliding_window if sliding_window is not None and length > sliding_window else None
        k = key[sequence.begin:sequence.end].view(length, num_kv_heads, head_dim).transpose(0, 1)
        v = value[sequence.begin:sequence.end].view(length, num_kv_heads, head_dim).transpose(0, 1)
        k, v = k.repeat_interleave(groups, dim=0), v.repeat_interleave(groups, dim=0)
        key_pos = torch.arange(length, device=query.device)[None, :]
        for rows in sequence.rows.split(rows_per_block):
            allowed = may_attend(rows[:, None], key_pos, sliding_window=window, query_real=None, key_real=None,
                                 query_span=sequence.span_ids[rows][:, None], key_span=sequence.span_ids[None, :],
                                 query_segment=None, key_segment=None)
            q = query[sequence.begin + rows].view(-1, num_heads, head_dim).transpose(0, 1)
            attended = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[None], scale=head_dim ** -0.5)
            out[sequence.begin + rows] = attended.transpose(0, 1).reshape(rows.numel(), -1).to(out.dtype)
    return out


class WholePromptPrefill:
    """vLLM's per-architecture config hook (``MODELS_CONFIG_MAP``): for a checkpoint whose image tokens attend
    to later tokens, have the scheduler prefill every prompt in one step (chunked prefill off, a step as long as
    the longest prompt, an encoder budget that never cuts a prompt before an image)."""

    @staticmethod
    def verify_and_update_model_config(model_config) -> None:
        return

    @staticmethod
    def verify_and_update_config(vllm_config) -> None:
        from zaya_vl.vllm.config import image_attention_mode

        mode = image_attention_mode(vllm_config.model_config.hf_config)
        if mode == "causal":
            return
        scheduler, max_len = vllm_config.scheduler_config, vllm_config.model_config.max_model_len
        before = (scheduler.enable_chunked_prefill, scheduler.max_num_batched_tokens,
                  scheduler.long_prefill_token_threshold)
        scheduler.enable_chunked_prefill = False
        scheduler.long_prefill_token_threshold = 0
        scheduler.max_num_batched_tokens = max(scheduler.max_num_batched_tokens, max_len)
        scheduler.max_num_encoder_input_tokens = max(scheduler.max_num_encoder_input_tokens,
                                                     scheduler.max_num_batched_tokens)
        scheduler.encoder_cache_size = max(scheduler.encoder_cache_size, scheduler.max_num_batched_tokens)
        after = (scheduler.enable_chunked_prefill, scheduler.max_num_batched_tokens,
                 scheduler.long_prefill_token_threshold)
        if after != before:
            logger.warning(
                "ZAYA1-VL with image_attention=%r: image tokens attend to later prompt tokens, so every prompt is "
                "prefilled in one step (enable_chunked_prefill, max_num_batched_tokens, "
                "long_prefill_token_threshold: %s -> %s).", mode, before, after)


__all__ = ["ImageAttentionPlan", "ImageSequence", "WholePromptPrefill", "attend_image_rows"]
