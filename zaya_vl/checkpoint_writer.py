"""Writing a model in another layout's names: sharded safetensors, an index, config.json and
generation_config.json, each file written to a temporary name and renamed, so a crash never leaves half a file."""

from __future__ import annotations

import json
import os

from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import save_file

from zaya_vl.conversion import Layout, from_native
from zaya_vl.fileio import atomic_path, write_atomic


def _write_json(path: str, values: dict) -> None:
    write_atomic(path, json.dumps(values, indent=2, sort_keys=True) + "\n")


def save_in_layout(model, save_directory, layout: Layout, config_dict: dict, max_shard_size: str | int = "5GB",
                   **unused) -> None:
    os.makedirs(save_directory, exist_ok=True)
    state = model.state_dict()
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the port ties it to the embeddings, as we do
    tensors = {name: tensor.detach().contiguous() for name, tensor in from_native(state, layout).items()}
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for filename, names in split.filename_to_tensors.items():
        shard = {name: tensors[name] for name in names}
        with atomic_path(os.path.join(save_directory, filename)) as temporary:
            save_file(shard, temporary, metadata={"format": "pt"})
    if split.is_sharded:
        _write_json(os.path.join(save_directory, "model.safetensors.index.json"),
                    {"metadata": split.metadata, "weight_map": split.tensor_to_filename})
    _write_json(os.path.join(save_directory, "config.json"), {**config_dict, "dtype": str(model.dtype).split(".")[-1]})
    if model.generation_config is not None:
        _write_json(os.path.join(save_directory, "generation_config.json"), model.generation_config.to_diff_dict()
                    if hasattr(model.generation_config, "to_diff_dict") else model.generation_config.to_dict())


__all__ = ["save_in_layout"]
