"""The cell loss: each labelled image token reads its own glyph through the final norm and the tied head."""

import torch

from zaya_vl import ZayaVL
from zaya_vl.testing import image_prompt, randomize_, tiny_vl_config


def naive_cell_loss(model, prompt, cell_labels):
    """Written out by hand: the merger's rows at the labelled image tokens, RMS-normed, times the embedding."""
    image_rows = model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    image_positions = (prompt["input_ids"] == model.config.image_token_id).nonzero()
    losses = []
    for row, (b, s) in zip(image_rows, image_positions.tolist()):
        label = int(cell_labels[b, s])
        if label == -100:
            continue
        norm = model.model.norm
        normed = row / torch.sqrt(row.pow(2).mean() + norm.eps) * norm.weight
        logits = model.model.embed_tokens.weight @ normed
        losses.append(-torch.log_softmax(logits, -1)[label])
    return torch.stack(losses).mean()


def test_cell_loss_matches_reading_each_image_token_with_the_tied_head():
    model = randomize_(ZayaVL(tiny_vl_config()), seed=0, std=0.2).eval()
    prompt = image_prompt([(1, 4, 6)], text_before=3, text_after=4)
    cell_labels = torch.full_like(prompt["input_ids"], -100)
    image_positions = (prompt["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    cell_labels[0, image_positions[[0, 2, 5]]] = torch.tensor([11, 12, 13])  # three of the six cells have glyphs
    with torch.no_grad():
        out = model(**prompt, cell_labels=cell_labels, use_cache=False)
        expected = naive_cell_loss(model, prompt, cell_labels)
    torch.testing.assert_close(out["cell_loss"], expected, rtol=1e-5, atol=1e-6)
    assert "cell_loss" not in model(**prompt, use_cache=False)


def test_cell_loss_trains_the_tower_and_is_zero_without_labels():
    model = randomize_(ZayaVL(tiny_vl_config()), seed=0, std=0.2)
    prompt = image_prompt([(1, 4, 4)], text_before=2, text_after=2)
    none = torch.full_like(prompt["input_ids"], -100)
    empty = model(**prompt, cell_labels=none, use_cache=False)["cell_loss"]
    assert float(empty.detach()) == 0.0 and empty.requires_grad

    labels = none.clone()
    labels[prompt["input_ids"] == model.config.image_token_id] = 20
    model(**prompt, cell_labels=labels, use_cache=False)["cell_loss"].backward()
    merger_grad = model.vision_tower.merger.mlp[2].weight.grad
    assert merger_grad is not None and float(merger_grad.abs().max()) > 0
    assert model.lm_head.weight.grad is not None  # the tied embedding learns the glyphs too
