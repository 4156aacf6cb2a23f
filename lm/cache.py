"""The ZAYA1 decode cache: compressed K/V plus the small per-sequence CCA state.

Per layer and token the cache holds K and V at ``num_key_value_heads × head_dim`` each — CCA's compressed
width, 8× smaller than plain multi-head attention — in one preallocated buffer that grows by doubling
when a caller did not size it (``generate`` sizes it to ``max_length`` up front, so decoding never
reallocates or concatenates). Per layer and *sequence* it also holds the CCA convolution window (the
last ``conv_window`` raw q|k rows) and the last token's delayed value projection (plus, with vision LoRA, its
rank-``r`` LoRA input ``A·x``, so the next token's image mask can gate it as the reference does).
"""

from __future__ import annotations

import torch

from zaya_vl.lm.config import ZayaLMConfig


class ZayaCache:
    is_compileable = False
    is_croppable = False

    def __init__(
        self,
        config: ZayaLMConfig,
        batch_size: int,
        max_length: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.num_layers = config.num_hidden_layers
        self.batch_size = batch_size
        self.dtype, self.device = dtype, torch.device(device) if device is not None else torch.device("cpu")
        self.kv_shape = (config.num_key_value_heads, config.head_dim)
        self.capacity = max(int(max_length or 0), 0)
        self.seq_length = 0
        self.last_token_image: torch.Tensor | None = None  # (batch,) was the last cached token an image token
        qk_channels = (config.num_attention_heads + config.num_key_value_heads) * config.head_dim
        self.keys = [self._new_kv(self.capacity) for _ in range(self.num_layers)]
        self.values = [self._new_kv(self.capacity) for _ in range(self.num_layers)]
        self.conv_states = [
            torch.zeros(batch_size, config.conv_window, qk_channels, dtype=dtype, device=self.device)
            for _ in range(self.num_layers)
        ]
        value_width = config.num_key_value_heads * config.head_dim // 2
        self.delayed_values = [
            torch.zeros(batch_size, value_width, dtype=dtype, device=self.device) for _ in range(self.num_layers)
        ]
        rank = config.vision_lora_rank_attn
        self.delayed_adapter_inputs = [
            torch.zeros(batch_size, rank, dtype=dtype, device=self.device) for _ in range(self.num_layers)
        ]

    def _new_kv(self, capacity: int) -> torch.Tensor:
        return torch.zeros(self.batch_size, self.kv_shape[0], capacity, self.kv_shape[1], dtype=self.dtype,
                           device=self.device)

    # -- what generate() and callers ask ----------------------------------------------------------------
    @property
    def is_linear(self) -> list[bool]:
        # transformers asks this to decide how to slice prompts; a CCA layer holds full K/V (plus a conv
        # state), which transformers counts as not linear, like its mixed attention + conv layers.
        return [False] * self.num_layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_length

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.capacity

    def __len__(self) -> int:
        return self.num_layers

    def kv_bytes(self) -> int:
        """Bytes allocated for K and V across layers (the per-token part of the cache)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # -- writing --------------------------------------------------------------------------------------
    def update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's keys/values (batch, kv_heads, new, head_dim); return all of them so far."""
        start, new = self.seq_length, keys.shape[2]
        end = start + new
        if end > self.keys[layer_idx].shape[2]:
            self._grow(layer_idx, end)
        self.keys[layer_idx][:, :, start:end] = keys
        self.values[layer_idx][:, :, start:end] = values
        return self.keys[layer_idx][:, :, :end], self.values[layer_idx][:, :, :end]

    def _grow(self, layer_idx: int, needed: int) -> None:
        capacity = max(needed, 2 * self.keys[layer_idx].shape[2], 16)
        for buffers in (self.keys, self.values):
            grown = self._new_kv(capacity)
            grown[:, :, : self.seq_length] = buffers[layer_idx][:, :, : self.seq_length]
            buffers[layer_idx] = grown
        self.capacity = max(self.capacity, capacity)

    def advance(self, num_tokens: int) -> None:
        """Called once per forward, after every layer stored its ``num_tokens`` new entries."""
        self.seq_length += num_tokens

    # -- batch reshuffles used by generate() (beam search, num_return_sequences) -----------------------
    def _apply_to_batch(self, fn) -> None:
        for states in (self.keys, self.values, self.conv_states, self.delayed_values, self.delayed_adapter_inputs):
            for i, tensor in enumerate(states):
                states[i] = fn(tensor)
        self.batch_size = self.keys[0].shape[0]
        if self.last_token_image is not None:
            self.last_token_image = fn(self.last_token_image)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self._apply_to_batch(lambda t: t.index_select(0, beam_idx.to(t.device)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self._apply_to_batch(lambda t: t[indices])

    def batch_repeat_interleave(self, repeats: int) -> None:
        self._apply_to_batch(lambda t: t.repeat_interleave(repeats, dim=0))

    def reset(self) -> None:
        """Forget every sequence (keeps the buffers for reuse)."""
        self.seq_length = 0
        self.last_token_image = None
        for state in (*self.conv_states, *self.delayed_values, *self.delayed_adapter_inputs):
            state.zero_()


__all__ = ["ZayaCache"]
