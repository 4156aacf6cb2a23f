"""The ZAYA1 decode cache: compressed K/V plus the small per-sequence CCA state.

Per layer and token the cache holds K and V at ``num_key_value_heads × head_dim`` each — CCA's compressed
width, 8× smaller than plain multi-head attention — in one preallocated buffer that grows by doubling
when a caller did not size it (``generate`` sizes it to ``max_length`` up front, so decoding never
reallocates or concatenates). Per layer and *sequence* it also holds the CCA convolution window (the
last ``conv_window`` raw q|k rows) and the last token's delayed value projection (plus, with vision LoRA, its
rank-``r`` LoRA input ``A·x``, so the next token's image mask can gate it as the reference does).

Device and dtype follow the model: pass ``device``/``dtype`` (one device, or one per layer for a model split
over GPUs with a ``device_map``), use :meth:`ZayaCache.for_model`, or leave them out and the first forward
places the state on each layer's device in the model's dtype.

``StaticZayaCache`` is the fixed-size form for compiled decoding: every buffer has its final shape from the
start, the write position is a device tensor, and attention reads the whole buffer under a length mask, so a
decode step has the same shapes at every position and needs no host value.
"""

from __future__ import annotations

import torch

from zaya_vl.lm.config import ZayaLMConfig


def decoder_layer_devices(model: torch.nn.Module) -> list[torch.device]:
    """The device of each ZAYA1 decoder layer of ``model`` (an LM or a VL model), in layer order."""
    from zaya_vl.lm.modeling import ZayaDecoderLayer  # here: the model's module imports this one

    devices = []
    for module in model.modules():
        if isinstance(module, ZayaDecoderLayer):
            devices.append(module.input_layernorm.weight.device)
    return devices


class ZayaCache:
    is_compileable = False
    is_static = False
    is_croppable = False

    def __init__(
        self,
        config: ZayaLMConfig,
        batch_size: int,
        max_length: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | list | tuple | None = None,
    ) -> None:
        self.config = config
        self.num_layers = config.num_hidden_layers
        self.batch_size = batch_size
        self.kv_shape = (config.num_key_value_heads, config.head_dim)
        self.capacity = max(int(max_length or 0), 0)
        self.seq_length = 0
        self.last_token_image: torch.Tensor | None = None  # (batch,) was the last cached token an image token
        # Whether the cached prompt had padding: recorded once, by the first forward, so that decode steps need
        # not inspect the attention mask on the host.
        self.prompt_padded = True
        self.placed = device is not None and dtype is not None
        self._allocate(dtype or torch.float32, device)

    def _allocate(self, dtype: torch.dtype, device) -> None:
        self.dtype = dtype
        if isinstance(device, (list, tuple)):
            if len(device) != self.num_layers:
                raise ValueError(f"{len(device)} devices given for a cache of {self.num_layers} layers.")
            self.layer_devices = [torch.device(d) for d in device]
        else:
            self.layer_devices = [torch.device(device if device is not None else "cpu")] * self.num_layers
        self.device = self.layer_devices[0]
        config, batch_size = self.config, self.batch_size
        qk_channels = (config.num_attention_heads + config.num_key_value_heads) * config.head_dim
        value_width = config.num_key_value_heads * config.head_dim // 2
        self.keys = [self._new_kv(self.capacity, i) for i in range(self.num_layers)]
        self.values = [self._new_kv(self.capacity, i) for i in range(self.num_layers)]
        self.conv_states = [torch.zeros(batch_size, config.conv_window, qk_channels, dtype=dtype, device=d)
                            for d in self.layer_devices]
        self.delayed_values = [torch.zeros(batch_size, value_width, dtype=dtype, device=d) for d in self.layer_devices]
        rank = config.vision_lora_rank_attn
        self.delayed_adapter_inputs = [torch.zeros(batch_size, rank, dtype=dtype, device=d)
                                       for d in self.layer_devices]

    @classmethod
    def for_model(cls, model: torch.nn.Module, batch_size: int, max_length: int | None = None, **kwargs):
        """A cache for ``model``: its text config, its dtype, each layer's state on that layer's device."""
        return cls(model.config.get_text_config(), batch_size, max_length=max_length, dtype=model.dtype,
                   device=decoder_layer_devices(model), **kwargs)

    def place(self, devices: list[torch.device], dtype: torch.dtype) -> None:
        """Called by the model's first forward when the cache was built without a device or dtype."""
        if not self.placed and self.seq_length == 0:
            self._allocate(dtype, devices)
        self.placed = True

    def _new_kv(self, capacity: int, layer_idx: int = 0) -> torch.Tensor:
        return torch.zeros(self.batch_size, self.kv_shape[0], capacity, self.kv_shape[1], dtype=self.dtype,
                           device=self.layer_devices[layer_idx])

    # -- what generate() and callers ask ----------------------------------------------------------------
    @property
    def is_linear(self) -> list[bool]:
        # transformers asks this to decide how to slice prompts; a CCA layer holds full K/V (plus a conv
        # state), which transformers counts as not linear, like its mixed attention + conv layers.
        return [False] * self.num_layers

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seq_length

    @property
    def holds_tokens(self) -> bool:
        """Whether a forward has written to this cache: a fact that flips once per generation, so a compiled decode
        step may branch on it (the token count, which moves every step, would recompile it)."""
        return self.seq_length > 0

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        return self.capacity

    def __len__(self) -> int:
        return self.num_layers

    def kv_bytes(self) -> int:
        """Bytes allocated for K and V across layers (the per-token part of the cache)."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values))

    # -- writing --------------------------------------------------------------------------------------
    def update(self, layer_idx: int, keys: torch.Tensor, values: torch.Tensor,
               positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
            grown = self._new_kv(capacity, layer_idx)
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
        self.prompt_padded = True
        for state in (*self.conv_states, *self.delayed_values, *self.delayed_adapter_inputs):
            state.zero_()


class StaticZayaCache(ZayaCache):
    """Fixed-size buffers for compiled decoding (``generate(..., cache_implementation="static")``).

    ``length`` is the number of cached tokens as a device tensor (the next write position); ``key_valid``
    (batch, capacity) marks real tokens (the prompt's padding recorded once at prefill, later tokens set as
    they are written). Writes are ``index_copy_`` at ``length + arange(new)``; attention reads all
    ``capacity`` keys under the mask built from ``length`` and ``key_valid``. ``seq_length`` (the host copy
    ``get_seq_length`` answers) is kept by whoever runs the step outside the compiled graph.
    """

    is_compileable = True
    is_static = True

    def __init__(self, config: ZayaLMConfig, batch_size: int, max_length: int, dtype: torch.dtype | None = None,
                 device=None) -> None:
        if not max_length or max_length <= 0:
            raise ValueError(f"StaticZayaCache needs max_length > 0 (got {max_length!r}): its buffers never grow.")
        super().__init__(config, batch_size, max_length=max_length, dtype=dtype, device=device)

    def _allocate(self, dtype, device) -> None:
        super()._allocate(dtype, device)
        self.filled = False  # whether a forward has written: the first builds its masks the usual way
        self.length = torch.zeros((), dtype=torch.long, device=self.device)
        self.key_valid = torch.zeros(self.batch_size, self.capacity, dtype=torch.bool, device=self.device)
        self._mark_static()

    def _mark_static(self) -> None:
        # CUDA graphs may then write these in place: their addresses never change.
        for states in (self.keys, self.values, self.conv_states, self.delayed_values, self.delayed_adapter_inputs,
                       [self.length, self.key_valid]):
            for tensor in states:
                torch._dynamo.mark_static_address(tensor)

    def write_positions(self, num_tokens: int) -> torch.Tensor:
        return self.length + torch.arange(num_tokens, device=self.length.device)

    def update(self, layer_idx, keys, values, positions=None):
        if positions is None:
            raise ValueError("StaticZayaCache.update needs the write positions.")
        positions = positions.to(keys.device)
        self.keys[layer_idx].index_copy_(2, positions, keys)
        self.values[layer_idx].index_copy_(2, positions, values)
        if not self.filled:  # prefill from empty: attention over the prompt only, with the usual masks
            return self.keys[layer_idx][:, :, : keys.shape[2]], self.values[layer_idx][:, :, : keys.shape[2]]
        return self.keys[layer_idx], self.values[layer_idx]

    @property
    def holds_tokens(self) -> bool:
        return self.filled

    def _grow(self, layer_idx: int, needed: int) -> None:
        raise ValueError(f"StaticZayaCache holds {self.capacity} tokens; {needed} needed.")

    def advance(self, num_tokens: int) -> None:
        self.length.add_(num_tokens)
        self.filled = True
        if not torch.compiler.is_compiling():  # a compiled step's caller adds it (see ``note_compiled_step``)
            self.seq_length += num_tokens

    def note_compiled_step(self, num_tokens: int) -> None:
        self.seq_length += num_tokens

    def _apply_to_batch(self, fn) -> None:
        super()._apply_to_batch(fn)
        self.key_valid = fn(self.key_valid)
        self._mark_static()

    def reset(self) -> None:
        super().reset()
        self.filled = False
        self.length.zero_()
        self.key_valid.zero_()


__all__ = ["ZayaCache", "StaticZayaCache", "decoder_layer_devices"]
