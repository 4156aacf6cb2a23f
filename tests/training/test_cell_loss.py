"""The trainer's cell loss: each labelled image token reads its own glyph through the final norm and the tied head,
from the image features the model's output declares (``image_hidden_states``)."""

import torch

from zaya_vl import ZayaVL
from zaya_vl.testing import image_prompt, randomize_, tiny_vl_config
from zaya_vl.training.cell_loss import cell_loss


def naive_cell_loss(model, prompt, cell_labels):
    """Written out by hand: the merger's rows at the labelled image tokens, RMS-normed, times the embedding."""
    image_rows = model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    image_positions = (prompt["input_ids"] == model.config.image_token_id).nonzero()
    losses = []
    for row, (b, s) in zip(image_rows, image_positions.tolist()):
        label = int(cell_labels[b, s])
        if label == -100:
            continue
        norm = model.language_model.norm
        normed = row / torch.sqrt(row.pow(2).mean() + norm.eps) * norm.weight
        logits = model.language_model.embed_tokens.weight @ normed
        losses.append(-torch.log_softmax(logits, -1)[label])
    return torch.stack(losses).mean()


def _loss(model, prompt, cell_labels):
    out = model(**prompt, use_cache=False)
    return cell_loss(model, out.image_hidden_states, prompt["input_ids"] == model.config.image_token_id, cell_labels)


def test_cell_loss_matches_reading_each_image_token_with_the_tied_head():
    model = randomize_(ZayaVL(tiny_vl_config()), seed=0, std=0.2).eval()
    prompt = image_prompt([(1, 4, 6)], text_before=3, text_after=4)
    cell_labels = torch.full_like(prompt["input_ids"], -100)
    image_positions = (prompt["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    cell_labels[0, image_positions[[0, 2, 5]]] = torch.tensor([11, 12, 13])  # three of the six cells have glyphs
    with torch.no_grad():
        loss = _loss(model, prompt, cell_labels)
        expected = naive_cell_loss(model, prompt, cell_labels)
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_output_declares_the_image_features_it_scattered():
    model = randomize_(ZayaVL(tiny_vl_config()), seed=0, std=0.2).eval()
    prompt = image_prompt([(1, 4, 6), (1, 2, 4)], text_before=3, text_after=4)
    with torch.no_grad():
        out = model(**prompt, use_cache=False)
        features = model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    torch.testing.assert_close(out.image_hidden_states, features, rtol=0, atol=0)
    assert "image_hidden_states" in out.keys() and "routings" not in out.keys()
    text_only = {"input_ids": prompt["input_ids"][:, :3]}
    assert model(**text_only, use_cache=False).image_hidden_states is None


def test_cell_loss_trains_the_tower_and_is_zero_without_labels():
    model = randomize_(ZayaVL(tiny_vl_config()), seed=0, std=0.2)
    prompt = image_prompt([(1, 4, 4)], text_before=2, text_after=2)
    none = torch.full_like(prompt["input_ids"], -100)
    empty = _loss(model, prompt, none)
    assert float(empty.detach()) == 0.0 and empty.requires_grad

    labels = none.clone()
    labels[prompt["input_ids"] == model.config.image_token_id] = 20
    _loss(model, prompt, labels).backward()
    merger_grad = model.vision_tower.merger.mlp[2].weight.grad
    assert merger_grad is not None and float(merger_grad.abs().max()) > 0
    assert model.lm_head.weight.grad is not None  # the tied embedding learns the glyphs too
