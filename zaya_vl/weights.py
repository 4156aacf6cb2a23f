"""Reading a checkpoint's tensors: safetensors (single or sharded), or pickles with ``weights_only=True``."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")


class MissingWeightsError(FileNotFoundError):
    pass


def _resolve(path, filename: str, hub_kwargs: dict) -> str | None:
    if os.path.isdir(str(path)):
        candidate = os.path.join(path, hub_kwargs.get("subfolder") or "", filename)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    return cached_file(path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def _load_one(file: str) -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        return load_file(file)
    # Pickled checkpoints can run code when unpickled; only plain tensors are accepted.
    return torch.load(file, map_location="cpu", weights_only=True)


def load_state_dict(path, **hub_kwargs) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint at ``path`` (a folder or a hub id), on CPU."""
    for name in WEIGHT_FILES:
        file = _resolve(path, name, hub_kwargs)
        if file is None:
            continue
        if not name.endswith(".index.json"):
            return _load_one(file)
        with open(file) as f:
            shards = sorted(set(json.load(f)["weight_map"].values()))
        state = {}
        for shard in shards:
            shard_file = _resolve(path, shard, hub_kwargs)
            if shard_file is None:
                raise MissingWeightsError(f"{path}: the index {name} lists {shard}, which is missing.")
            state.update(_load_one(shard_file))
        return state
    raise MissingWeightsError(f"No weights found in {path}: expected one of {', '.join(WEIGHT_FILES)}.")


__all__ = ["MissingWeightsError", "WEIGHT_FILES", "load_state_dict"]
