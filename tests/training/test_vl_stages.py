"""The VL stages on a tiny ZAYA1-VL: align and SFT train what they should and nothing else.

The model is the real ``ZayaVL`` and the processor the real ``ZayaVLProcessor`` (tiny vocabulary)."""

from __future__ import annotations

import json

import pytest
import torch

from zaya_vl import ZayaVL
from zaya_vl.training import InvalidSample, SampleEncoder, config_from_dict, open_records, train
from zaya_vl.training.config import DataConfig
from zaya_vl.training.data import IGNORE_INDEX


def _vl_config(vl_assets, output_dir, stage, data="data", **groups):
    config = {
        "output_dir": str(output_dir), "stage": stage, "seed": 0,
        "model": {"path": str(vl_assets["model_dir"])},
        "data": {"train": str(vl_assets[data]), "seq_len": 128, "pad_to": "longest"},
        "train": {"max_steps": 8, "micro_batch_size": 2, "progress": False, "tensorboard": False},
        "optim": {"lr": 1e-2}, "schedule": {"name": "constant", "warmup_steps": 0},
    }
    for key, value in groups.items():
        config[key] = {**config.get(key, {}), **value}
    return config


def _weights(path):
    return ZayaVL.from_pretrained(path).state_dict()


def _losses(output_dir):
    return [json.loads(line)["loss"] for line in (output_dir / "metrics.jsonl").read_text().splitlines()]


def test_vl_sample_encoding_masks_images_and_keeps_the_answer(vl_assets):
    config = DataConfig(train=str(vl_assets["data"]))
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)
    encoded = encoder(records[0], records.describe(0))
    tokenizer = vl_assets["tokenizer"]
    image_id = tokenizer.convert_tokens_to_ids("<image_soft_token>")
    grid = encoded.image_grid_thw[0].tolist()
    assert encoded.input_ids.count(image_id) == grid[0] * grid[1] * grid[2] // 4
    trained = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])
    answer = records[0]["messages"][1]["content"][0]["text"]
    assert trained == f"{answer}<end_of_turn>"
    assert all(label == IGNORE_INDEX for t, label in zip(encoded.input_ids, encoded.labels) if t == image_id)


def test_missing_image_in_vl_data(vl_assets, tmp_path):
    row = dict(vl_assets["rows"][0])
    row["messages"] = json.loads(json.dumps(row["messages"]).replace("images/", "gone/"))
    (tmp_path / "bad.jsonl").write_text(json.dumps(row) + "\n")
    config = DataConfig(train=str(tmp_path / "bad.jsonl"))
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)
    with pytest.raises(InvalidSample, match=rf"bad.jsonl:1 \(id={row['id']}\): image could not be loaded: gone/"):
        encoder(records[0], records.describe(0))


def test_align_trains_merger_and_vision_lora_only(vl_assets, tmp_path):
    result = train(config_from_dict(_vl_config(vl_assets, tmp_path / "align", "align", train={"max_steps": 40})),
                   processor=vl_assets["processor"])
    losses = _losses(result.output_dir)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5  # per-step losses of 2 rows are noisy
    print(f"align: mean loss of the first 5 steps {first:.3f} -> last 5 {last:.3f}")
    assert last < 0.9 * first
    before, after = _weights(vl_assets["model_dir"]), _weights(result.final_dir)
    trained = lambda name: name.startswith("vision_tower.merger.") or ".vision_adapters." in name  # noqa: E731
    changed = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}
    frozen_changed = [name for name in changed if not trained(name)]
    assert not frozen_changed, f"frozen in align but changed: {frozen_changed}"  # LM, vision encoder, biases
    assert {n for n in before if n.startswith("vision_tower.merger.")} <= changed
    # Image tokens reach the text (and the loss) through attention in the layers before the last.
    assert {n for n in before if n.startswith("model.layers.0.") and ".vision_adapters." in n} <= changed
    expected = sum(t.numel() for n, t in ZayaVL.from_pretrained(vl_assets["model_dir"]).named_parameters()
                   if trained(n))
    assert result.trainable_parameters == expected
    info = json.loads((result.output_dir / "run_info.json").read_text())
    assert info["model_kind"] == "vl" and not info["balancing"]


def test_vl_sft_on_a_mix_of_documents_and_text(vl_assets, tmp_path):
    config = _vl_config(vl_assets, tmp_path / "sft", "sft", data="mixed", train={"max_steps": 10})
    result = train(config_from_dict(config), processor=vl_assets["processor"])
    losses = _losses(result.output_dir)
    print(f"vl sft: loss {losses[0]:.3f} -> {losses[-1]:.3f}")
    assert losses[-1] < 0.8 * losses[0]
    before, after = _weights(vl_assets["model_dir"]), _weights(result.final_dir)
    frozen = ("vision_tower.blocks.", "vision_tower.patch_embed.", "model.embed_tokens.", "lm_head.")
    for name, tensor in before.items():
        if name.startswith(frozen):
            assert torch.equal(tensor, after[name]), name
    changed = [n for n in before if n.startswith(("model.layers.", "vision_tower.merger."))
               and not torch.equal(before[n], after[n])]
    assert any(".vision_adapters." in n for n in changed) and any(".self_attn.o_proj." in n for n in changed)
    assert any(n.endswith("balancing_biases") for n in changed)  # the routers train, so the controller steers


def test_over_budget_image_sample_is_never_split(vl_assets):
    from zaya_vl.training import RowStream

    config = DataConfig(train=str(vl_assets["data"]), seq_len=24, split_long_documents=True)
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)
    stream = RowStream(records, encoder, seq_len=24, split_long_documents=True)
    with pytest.raises(InvalidSample, match=r"\d+ tokens, more than data.seq_len=24 \(it has images, so it is never"):
        stream.next_row()
