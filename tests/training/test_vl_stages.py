"""The VL stages on a tiny ZAYA1-VL: align and SFT train what they should and nothing else.

The model is the real ``ZayaVL`` and the processor the real ``ZayaVLProcessor`` (tiny vocabulary)."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from zaya_vl import ZayaVL
from zaya_vl.training import InvalidSample, SampleEncoder, config_from_dict, open_records, train
from zaya_vl.training.config import DataConfig
from zaya_vl.training.collate import collate_rows
from zaya_vl.training.data import IGNORE_INDEX
from zaya_vl.training.packing import Row


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
    trained = lambda name: (name.startswith("model.vision_tower.merger.")  # noqa: E731
                            or ".vision_adapters." in name)
    changed = {name for name, tensor in before.items() if not torch.equal(tensor, after[name])}
    frozen_changed = [name for name in changed if not trained(name)]
    assert not frozen_changed, f"frozen in align but changed: {frozen_changed}"  # LM, vision encoder, biases
    assert {n for n in before if n.startswith("model.vision_tower.merger.")} <= changed
    # Image tokens reach the text (and the loss) through attention in the layers before the last.
    assert {n for n in before if n.startswith("model.language_model.layers.0.") and ".vision_adapters." in n} \
        <= changed
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
    frozen = ("model.vision_tower.blocks.", "model.vision_tower.patch_embed.", "model.language_model.embed_tokens.",
              "lm_head.")
    for name, tensor in before.items():
        if name.startswith(frozen):
            assert torch.equal(tensor, after[name]), name
    changed = [n for n in before if n.startswith(("model.language_model.layers.", "model.vision_tower.merger."))
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


# -- cells: per-image-token reading targets -------------------------------------------------------------------
CELLS = ["ab  ", " 12 ", "    ", "x  y"]  # a 112 px page is a 4 x 4 grid of merged tokens for this processor


def _cells_rows(vl_assets, tmp_path, cells=CELLS, n=4):
    Image.new("RGB", (112, 112), "white").save(tmp_path / "page.png")
    rows = [{"id": f"c{k}", "messages": [
        {"role": "user", "content": [{"type": "image", "image": "page.png", "cells": cells},
                                     {"type": "text", "text": "Read the text."}]},
        {"role": "assistant", "content": [{"type": "text", "text": "ab 12 x y"}]}]} for k in range(n)]
    path = tmp_path / "cells.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _encode_first(vl_assets, path):
    config = DataConfig(train=str(path))
    records, root = open_records(config)
    return SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)(records[0],
                                                                                       records.describe(0))


def test_cells_become_glyph_ids_at_the_image_tokens_in_raster_order(vl_assets, tmp_path):
    tokenizer = vl_assets["tokenizer"]
    encoded = _encode_first(vl_assets, _cells_rows(vl_assets, tmp_path))
    image_id = tokenizer.convert_tokens_to_ids("<image_soft_token>")
    image_positions = [i for i, token in enumerate(encoded.input_ids) if token == image_id]
    assert encoded.image_grid_thw[0].tolist() == [1, 8, 8] and len(image_positions) == 16
    expected = [IGNORE_INDEX if ch == " " else tokenizer.convert_tokens_to_ids(ch) for ch in "".join(CELLS)]
    assert [encoded.cell_labels[i] for i in image_positions] == expected
    assert all(label == IGNORE_INDEX for i, label in enumerate(encoded.cell_labels) if i not in image_positions)

    plain = _encode_first(vl_assets, vl_assets["data"])
    batch = collate_rows([Row([encoded]), Row([plain])], pad_token_id=0, seq_len=512, pad_to="longest")
    assert batch["cell_labels"].shape == batch["labels"].shape
    assert batch["cell_labels"][0, :len(encoded)].tolist() == encoded.cell_labels
    assert (batch["cell_labels"][0, len(encoded):] == IGNORE_INDEX).all() and (batch["cell_labels"][1] == -100).all()


@pytest.mark.parametrize("cells, why", [(CELLS[:3], r"its cells have 3 rows of lengths \[4\] but the processor "
                                                    r"made a 4 x 4 grid"),
                                        ([*CELLS[:3], "xy"], r"4 rows of lengths \[2, 4\]"),
                                        ("ab12", "cells must be a list of strings")])
def test_cells_that_do_not_match_the_token_grid_name_the_image(vl_assets, tmp_path, cells, why):
    with pytest.raises(InvalidSample, match=rf"cells.jsonl:1 \(id=c0\): image page.png: .*{why}"):
        _encode_first(vl_assets, _cells_rows(vl_assets, tmp_path, cells))


def test_cell_loss_is_logged_apart_and_weight_zero_turns_it_off(vl_assets, tmp_path):
    data = _cells_rows(vl_assets, tmp_path, n=8)
    runs = {}
    for weight in (0.0, 1.0):
        out = tmp_path / f"w{weight}"
        config = _vl_config(vl_assets, out, "sft", train={"max_steps": 3, "cell_loss_weight": weight},
                            freeze={"train": ["*"]})
        config["data"]["train"] = str(data)
        train(config_from_dict(config))
        runs[weight] = (out, [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()])
    (off_dir, off), (on_dir, on) = runs[0.0], runs[1.0]
    assert "cell_loss" not in off[0] and on[0]["cell_loss"] > 0
    assert on[0]["loss"] == off[0]["loss"]  # same weights, same batch: `loss` is the answer loss only
    tower = "model.vision_tower.merger.mlp.2.weight"
    assert not torch.equal(_weights(off_dir / "final")[tower], _weights(on_dir / "final")[tower])


def test_vl_expert_lora_adapter_on_the_base_equals_the_merged_model_on_images(vl_assets, tmp_path):
    """Image tokens take the experts' grouped path with the vision LoRA; the PEFT expert delta must apply there
    too (the ParamWrapper's parametrization is read through the experts' attributes)."""
    pytest.importorskip("peft")
    from peft import PeftModel

    lora = {"r": 2, "alpha": 4, "target_modules": ["o_proj"],
            "target_parameters": ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]}
    config = _vl_config(vl_assets, tmp_path / "lora", "sft", train={"max_steps": 3}, lora=lora)
    result = train(config_from_dict(config), processor=vl_assets["processor"])
    config = DataConfig(train=str(vl_assets["data"]))
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)
    rows = [Row([encoder(records[i], records.describe(i))]) for i in range(2)]
    batch = collate_rows(rows, pad_token_id=vl_assets["tokenizer"].pad_token_id, seq_len=128, pad_to="longest",
                         with_segments=False)
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw")}
    adapted = PeftModel.from_pretrained(ZayaVL.from_pretrained(vl_assets["model_dir"]),
                                        result.final_dir / "adapter").eval()
    merged = ZayaVL.from_pretrained(result.final_dir).eval()
    base = ZayaVL.from_pretrained(vl_assets["model_dir"]).eval()
    with torch.no_grad():
        on_the_fly, folded, plain = (m(**inputs).logits for m in (adapted, merged, base))
    print(f"VL expert LoRA: base + adapter vs merged, max |logit diff| {(on_the_fly - folded).abs().max():.2e}")
    assert (on_the_fly - folded).abs().max() < 1e-5
    assert (plain - folded).abs().max() > 1e-3
    before, after = base.state_dict(), merged.state_dict()
    experts = "model.language_model.layers.{}.mlp.experts.{}"
    assert all(not torch.equal(before[experts.format(i, p)], after[experts.format(i, p)])
               for i in range(base.config.text_config.num_hidden_layers) for p in ("gate_up_proj", "down_proj"))
    from zaya_vl.cli import main

    assert main(["merge", str(vl_assets["model_dir"]), str(result.final_dir / "adapter"), str(tmp_path / "m")]) == 0
    remerged = _weights(tmp_path / "m")
    assert remerged.keys() == after.keys()
    assert max((remerged[n] - after[n]).abs().max().item() for n in after) < 1e-6
    assert (tmp_path / "m" / "processor_config.json").is_file()
