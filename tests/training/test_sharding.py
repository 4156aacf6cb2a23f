"""Sharded (torch.distributed.checkpoint) training state, in one process: a VL checkpoint written in the parameter
names of before the headless model resumes into today's model."""

from __future__ import annotations

import torch

from zaya_vl import ZayaVL
from zaya_vl.testing import image_prompt, randomize_, tiny_vl_config
from zaya_vl.training.sharding import load_sharded


def _older_name(name: str) -> str:
    if name.startswith("model.vision_tower."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def _trained(seed: int):
    model = randomize_(ZayaVL(tiny_vl_config()), seed=seed, std=0.2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    prompt = image_prompt([(1, 4, 4)], seed=seed)
    model(**prompt, labels=prompt["input_ids"], use_cache=False).loss.backward()
    optimizer.step()
    return model, optimizer


def test_a_sharded_checkpoint_in_the_older_names_resumes(tmp_path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optimizer = _trained(seed=1)
    model_state, optimizer_state = get_state_dict(model, optimizer)
    older = {"model": {_older_name(k): v for k, v in model_state.items()},
             "optimizer": {"state": {_older_name(k): v for k, v in optimizer_state["state"].items()},
                           "param_groups": [{**g, "params": [_older_name(p) for p in g["params"]]}
                                            for g in optimizer_state["param_groups"]]}}
    assert any(k.startswith("vision_tower.") for k in older["model"])
    dcp.save(older, checkpoint_id=str(tmp_path / "sharded"))

    resumed, resumed_optimizer = _trained(seed=2)  # other weights and optimizer moments
    load_sharded(resumed, resumed_optimizer, tmp_path / "sharded")
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in resumed.state_dict().items())
    moments = {name: optimizer.state[p]["exp_avg"] for name, p in model.named_parameters()}
    assert all(torch.equal(resumed_optimizer.state[p]["exp_avg"], moments[name])
               for name, p in resumed.named_parameters())
