"""FSDP2 applied by the trainer itself: parameters, gradients and optimizer state sharded over the processes.

With ``train.fsdp: true`` the trainer calls torch's ``fully_shard`` on every decoder layer and vision block (the
model's ``_no_split_modules``) and then on the whole model, as torchtitan does; accelerate still launches the
processes, logs, and saves the RNG states and the scheduler. Doing it here rather than through accelerate's FSDP
plugin keeps one code path for CPU (gloo, the tests) and GPUs (NCCL): accelerate's plugin does not start on CPU.

The model and optimizer state are saved with ``torch.distributed.checkpoint`` (each process writes its own
shards into the checkpoint folder, which is then made complete atomically like any other checkpoint), and the
final model is gathered into one full state dict for ``save_pretrained``. A VL checkpoint written in the parameter
names of before the headless model (``vision_tower.*``, ``model.layers.*``) resumes: it is read under those names.

Every process must run the same sequence of all-gathers and reduce-scatters: a VL micro-batch without images
would skip the vision blocks on one process while the other runs them. :func:`add_placeholder_image` gives
such a micro-batch one tiny image whose single token is padding (attention mask 0, no label, its own segment):
no real token sees it and no loss counts it, so the update is the one without it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from zaya_vl.lm.loss import IGNORE_INDEX

SHARDED_STATE = "sharded"  # folder of a checkpoint with the torch.distributed.checkpoint files


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules sharded on their own: instances of the model's ``_no_split_modules`` (decoder layers, vision
    blocks), found through a PEFT wrapper too."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    # transformers' convention: ``_no_split_modules`` holds class names, so they are matched by name.
    names = set(getattr(base, "_no_split_modules", None) or ())
    units = [module for module in model.modules() if type(module).__name__ in names]
    if not units:
        raise ValueError(f"train.fsdp: {type(base).__name__} names no layer classes to shard (_no_split_modules)")
    return units


def fully_shard_model(model: nn.Module, device: torch.device) -> nn.Module:
    """``fully_shard`` each unit, then the root. The root keeps its parameters gathered between forward and
    backward (the head and embedding are needed first in backward; the trainer's auxiliary losses read them)."""
    from torch.distributed.fsdp import fully_shard

    model.to(device)
    for unit in shard_units(model):
        fully_shard(unit)
    fully_shard(model, reshard_after_forward=False)
    return model


def _local(tensor: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def clip_grad_norm_(parameters: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global gradient norm over sharded parameters (before clipping), clipping to ``max_norm`` as
    ``torch.nn.utils.clip_grad_norm_`` does."""
    from torch.distributed.tensor import DTensor

    grads = [p.grad for p in parameters if p.grad is not None]
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if isinstance(total, DTensor):
        total = total.full_tensor()
    torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total)
    return total


def save_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Collective: every process writes its shards of the model and optimizer state under ``folder``."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, folder: Path) -> None:
    """Collective: read what :func:`save_sharded` wrote into the (already sharded) model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    if not (folder / ".metadata").is_file():
        raise FileNotFoundError(f"{folder} holds no sharded model state: was the checkpoint written without "
                                "train.fsdp? Resume with the setting the run was started with")
    model_state, optimizer_state = get_state_dict(model, optimizer)
    stored = set(dcp.FileSystemReader(str(folder)).read_metadata().state_dict_metadata)
    older = _older_names(model, model_state, stored)
    state = _renamed({"model": model_state, "optimizer": optimizer_state}, older)
    dcp.load(state, checkpoint_id=str(folder))
    state = _renamed(state, {new: old for old, new in older.items()} if older else {})
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _older_names(model: nn.Module, model_state: dict, stored: set[str]) -> dict[str, str]:
    """For a VL checkpoint written before the headless model (``vision_tower.*``, ``model.layers.*``): each of
    today's parameter names → its name in the checkpoint; empty when the checkpoint has today's names."""
    from zaya_vl.conversion import NATIVE_V1
    from zaya_vl.modeling import ZayaVL

    prefix = next((name + "." if name else "" for name, module in model.named_modules()
                   if isinstance(module, ZayaVL)), None)
    if prefix is None:
        return {}
    older = {}
    for name in model_state:
        if name.startswith(prefix) and f"model.{name}" not in stored:
            old = prefix + NATIVE_V1.checkpoint_name(name[len(prefix):])
            if f"model.{old}" in stored:
                older[name] = old
    return older


def _renamed(state: dict, names: dict[str, str]) -> dict:
    """``state`` (``{"model": ..., "optimizer": ...}`` as ``get_state_dict`` gives them) with parameter names
    replaced as ``names`` says, in the model's keys and in the optimizer's per-parameter state and groups."""
    if not names:
        return state
    optimizer = state["optimizer"]
    return {"model": {names.get(key, key): value for key, value in state["model"].items()},
            "optimizer": {**optimizer,
                          "state": {names.get(key, key): value for key, value in optimizer["state"].items()},
                          "param_groups": [{**group, "params": [names.get(p, p) for p in group["params"]]}
                                           for group in optimizer["param_groups"]]}}


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Collective: the whole model's state gathered on CPU (full tensors on the main process, empty elsewhere)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (the LM head is the embedding) come back as separate copies; keep the first name only, as
    # save_pretrained expects.
    seen, aliases = {}, []
    for name, param in model.named_parameters(remove_duplicate=False):
        if id(param) in seen:
            aliases.append(name)
        seen.setdefault(id(param), name)
    return {name: tensor for name, tensor in state.items() if name not in aliases}


def add_placeholder_image(batch: dict[str, torch.Tensor], config, pad_token_id: int) -> dict[str, torch.Tensor]:
    """``batch`` (collated, without images) plus one column: row 0 gets one image token there, with a
    (1, m, m)-patch image of zeros (m = the spatial merge size, so one merged token); every row's new column is
    padding of a segment of its own."""
    vision = config.vision_config
    merge = vision.spatial_merge_size
    patch_dim = vision.in_channels * vision.temporal_patch_size * vision.patch_size ** 2
    rows = batch["input_ids"].shape[0]

    def column(key: str, value) -> torch.Tensor:
        tensor = batch[key]
        return torch.cat([tensor, torch.full((rows, 1), value, dtype=tensor.dtype)], dim=1)

    out = dict(batch)
    out["input_ids"] = column("input_ids", pad_token_id)
    out["input_ids"][0, -1] = config.image_token_id
    out["attention_mask"] = column("attention_mask", 0)
    out["labels"] = column("labels", IGNORE_INDEX)
    if "cell_labels" in batch:
        out["cell_labels"] = column("cell_labels", IGNORE_INDEX)
    if "segment_ids" in batch:
        out["segment_ids"] = torch.cat([batch["segment_ids"], batch["segment_ids"][:, -1:] + 1], dim=1)
    out["pixel_values"] = torch.zeros(merge * merge, patch_dim)
    out["image_grid_thw"] = torch.tensor([[1, merge, merge]])
    return out


__all__ = ["SHARDED_STATE", "add_placeholder_image", "clip_grad_norm_", "full_state_dict", "fully_shard_model",
           "load_sharded", "save_sharded", "shard_units"]
