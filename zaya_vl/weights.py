"""Reading a checkpoint's tensors, one file at a time: safetensors (single or sharded), or pickles with
``weights_only=True``.

Every problem names the file: a missing shard, an index whose shard path leaves the checkpoint folder, a
truncated or corrupt ``.safetensors`` file (checked against its own header before any tensor is read).
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator

import torch
from safetensors import safe_open

WEIGHT_FILES = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin.index.json",
                "pytorch_model.bin")
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


class MissingWeightsError(FileNotFoundError):
    pass


class CorruptCheckpointError(ValueError):
    """A weights file or index that cannot be read as what it claims to be."""


def _resolve(path, filename: str, hub_kwargs: dict) -> str | None:
    if os.path.isdir(str(path)):
        candidate = os.path.join(path, hub_kwargs.get("subfolder") or "", filename)
        return candidate if os.path.isfile(candidate) else None
    from transformers.utils import cached_file

    return cached_file(path, filename, _raise_exceptions_for_missing_entries=False, **hub_kwargs)


def check_safetensors_file(file: str) -> dict:
    """The header of a ``.safetensors`` file, after checking that the file holds every byte it declares."""
    size = os.path.getsize(file)
    with open(file, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise CorruptCheckpointError(f"{file}: truncated safetensors file ({size} bytes; not even a header).")
        (header_bytes,) = struct.unpack("<Q", prefix)
        if header_bytes > _MAX_HEADER_BYTES or 8 + header_bytes > size:
            raise CorruptCheckpointError(
                f"{file}: truncated or corrupt safetensors file (its header claims {header_bytes} bytes; the file "
                f"has {size}).")
        try:
            header = json.loads(f.read(header_bytes))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise CorruptCheckpointError(f"{file}: corrupt safetensors header ({error}).") from None
    if not isinstance(header, dict):
        raise CorruptCheckpointError(f"{file}: corrupt safetensors header (not a JSON object).")
    data_end = max((entry["data_offsets"][1] for name, entry in header.items()
                    if name != "__metadata__" and isinstance(entry, dict) and "data_offsets" in entry), default=0)
    if 8 + header_bytes + data_end > size:
        raise CorruptCheckpointError(
            f"{file}: truncated safetensors file: its header declares {data_end} bytes of tensor data but only "
            f"{size - 8 - header_bytes} are present.")
    return header


def _file_tensors(file: str) -> Iterator[tuple[str, torch.Tensor]]:
    if file.endswith(".safetensors"):
        check_safetensors_file(file)
        try:
            with safe_open(file, framework="pt", device="cpu") as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)
        except Exception as error:  # safetensors raises its own bare error types
            if isinstance(error, CorruptCheckpointError):
                raise
            raise CorruptCheckpointError(f"{file}: corrupt safetensors file ({error}).") from error
        return
    # Pickled checkpoints can run code when unpickled; only plain tensors are accepted.
    yield from torch.load(file, map_location="cpu", weights_only=True).items()


# safetensors' dtype names of floating-point tensors; anything else is integer or boolean data.
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2", "F8_E8M0", "F4"}


def _file_dtypes(file: str) -> dict[str, bool]:
    """Each tensor's name -> whether it holds floating-point data, from the file's header (or a meta load)."""
    if file.endswith(".safetensors"):
        return {key: entry.get("dtype") in _FLOAT_DTYPES for key, entry in check_safetensors_file(file).items()
                if key != "__metadata__"}
    return {key: tensor.is_floating_point()
            for key, tensor in torch.load(file, map_location="meta", weights_only=True).items()}


def _shard_paths(path, index_name: str, index_file: str, hub_kwargs: dict) -> list[str]:
    try:
        with open(index_file) as f:
            weight_map = json.load(f)["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as error:
        raise CorruptCheckpointError(f"{index_file}: not a valid checkpoint index (needs a 'weight_map' object "
                                     f"of tensor name -> shard file): {error!r}.") from None
    files = []
    for shard in shards:
        if not isinstance(shard, str) or os.path.isabs(shard) or ".." in shard.replace("\\", "/").split("/"):
            raise CorruptCheckpointError(
                f"{index_file}: shard path {shard!r} leaves the checkpoint folder; refusing to read it.")
        shard_file = _resolve(path, shard, hub_kwargs)
        if shard_file is None:
            raise MissingWeightsError(f"{path}: the index {index_name} lists {shard}, which is missing.")
        folder = os.path.dirname(os.path.realpath(index_file))
        if os.path.commonpath([folder, os.path.realpath(shard_file)]) != folder:
            raise CorruptCheckpointError(
                f"{index_file}: shard {shard!r} resolves outside the checkpoint folder; refusing to read it.")
        files.append(shard_file)
    return files


def weight_files(path, **hub_kwargs) -> list[str]:
    """The weight files of the checkpoint at ``path`` (a folder or a hub id), in loading order."""
    for name in WEIGHT_FILES:
        file = _resolve(path, name, hub_kwargs)
        if file is None:
            continue
        if name.endswith(".index.json"):
            return _shard_paths(path, name, file, hub_kwargs)
        return [file]
    raise MissingWeightsError(f"No weights found in {path}: expected one of {', '.join(WEIGHT_FILES)}.")


def checkpoint_float_keys(path, **hub_kwargs) -> dict[str, bool]:
    """Every tensor name of the checkpoint -> whether it holds floating-point data; read from headers only."""
    return {key: is_float for file in weight_files(path, **hub_kwargs) for key, is_float in _file_dtypes(file).items()}


def index_lacks_metadata(path, **hub_kwargs) -> bool:
    """A sharded checkpoint whose index has no ``metadata`` (transformers' own loader requires one)."""
    index = _resolve(path, "model.safetensors.index.json", hub_kwargs)
    if index is None:
        return False
    with open(index) as f:
        return "metadata" not in json.load(f)


def iter_checkpoint_tensors(path, **hub_kwargs) -> Iterator[tuple[str, torch.Tensor]]:
    """``(name, tensor)`` for every tensor of the checkpoint, one file at a time, on CPU."""
    for file in weight_files(path, **hub_kwargs):
        yield from _file_tensors(file)


def load_state_dict(path, **hub_kwargs) -> dict[str, torch.Tensor]:
    """All tensors of the checkpoint at ``path`` (a folder or a hub id), on CPU."""
    return dict(iter_checkpoint_tensors(path, **hub_kwargs))


__all__ = ["CorruptCheckpointError", "MissingWeightsError", "WEIGHT_FILES", "check_safetensors_file",
           "checkpoint_float_keys", "index_lacks_metadata", "iter_checkpoint_tensors", "load_state_dict",
           "weight_files"]
