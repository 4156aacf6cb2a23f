"""Image attention: bidirectional within each image, causal text; padding-, backend- and cache-invariant."""

import pytest
import torch

from zaya_vl import ZayaVL
from zaya_vl.testing import image_prompt, randomize_, tiny_vl_config


def tiny_model(image_attention="bidirectional", seed=0):
    return randomize_(ZayaVL(tiny_vl_config(image_attention=image_attention)), seed=seed, std=0.2).eval()


def logits_with_perturbed_image_token(model, prompt, token_index, monkeypatch):
    """Logits when one image token's embedding (after the merger) is changed; everything else identical."""
    headless = model.model  # the forward takes the image features from the headless model
    real = headless.get_image_features

    def perturbed(pixel_values, image_grid_thw):
        embeds = real(pixel_values, image_grid_thw).clone()
        embeds[token_index] += 1.0
        return embeds

    monkeypatch.setattr(headless, "get_image_features", perturbed)
    try:
        return model(**prompt, use_cache=False).logits[0]
    finally:
        monkeypatch.setattr(headless, "get_image_features", real)


@pytest.mark.parametrize("image_attention", ["bidirectional", "causal"])
@torch.no_grad()
def test_a_later_image_token_reaches_earlier_image_tokens_only_when_bidirectional(image_attention, monkeypatch):
    model = tiny_model(image_attention)
    prompt = image_prompt([(1, 4, 6)], text_before=3, text_after=4)  # 3 text, start, 6 image, end, 4 text
    image_positions = (prompt["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    first_image, last_image = int(image_positions[0]), int(image_positions[-1])
    base = model(**prompt, use_cache=False).logits[0]
    changed = logits_with_perturbed_image_token(model, prompt, token_index=-1, monkeypatch=monkeypatch)

    assert torch.equal(changed[:first_image], base[:first_image])  # text before the image: never
    earlier_image_moved = (changed[first_image:last_image] - base[first_image:last_image]).abs().amax(-1)
    if image_attention == "bidirectional":
        assert bool((earlier_image_moved > 1e-4).all())
    else:
        assert torch.equal(changed[first_image:last_image], base[first_image:last_image])
    assert (changed[last_image + 2:] - base[last_image + 2:]).abs().max() > 1e-4  # text after sees the image


@torch.no_grad()
def test_images_do_not_see_each_other_beyond_causal_order(monkeypatch):
    model = tiny_model("bidirectional")
    prompt = image_prompt([(1, 2, 4), (1, 4, 2)], text_before=2, text_after=3)
    image_positions = (prompt["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    first_image_tokens = image_positions[:2]
    base = model(**prompt, use_cache=False).logits[0]
    changed = logits_with_perturbed_image_token(model, prompt, token_index=-1, monkeypatch=monkeypatch)
    # The second image's last token does not reach the first image's tokens (they come before it).
    assert torch.equal(changed[first_image_tokens], base[first_image_tokens])


@torch.no_grad()
def test_padding_never_changes_real_tokens_in_bidirectional_mode():
    model = tiny_model("bidirectional", seed=1)
    long = image_prompt([(1, 4, 4)], text_before=5, text_after=3, seed=1)
    short = image_prompt([(1, 2, 2)], text_before=1, text_after=2, seed=2)
    pad = long["input_ids"].shape[1] - short["input_ids"].shape[1]
    input_ids = torch.cat([long["input_ids"], torch.cat([torch.zeros(1, pad, dtype=torch.long), short["input_ids"]], 1)])
    attention_mask = (torch.arange(input_ids.shape[1]) >= torch.tensor([[0], [pad]])).long()
    batched = model(input_ids=input_ids, attention_mask=attention_mask,
                    pixel_values=torch.cat([long["pixel_values"], short["pixel_values"]]),
                    image_grid_thw=torch.cat([long["image_grid_thw"], short["image_grid_thw"]])).logits
    torch.testing.assert_close(batched[0], model(**long).logits[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(batched[1, pad:], model(**short).logits[0], atol=1e-4, rtol=0)


@torch.no_grad()
def test_eager_and_sdpa_attention_agree():
    model = tiny_model("bidirectional", seed=2)
    prompt = image_prompt([(1, 4, 4), (1, 2, 2)], seed=3)
    sdpa = model(**prompt).logits
    model.language_model.config._attn_implementation = "eager"
    eager = model(**prompt).logits
    torch.testing.assert_close(eager, sdpa, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_attention", ["bidirectional", "causal"])
@torch.no_grad()
def test_cached_decoding_after_an_image_prompt_equals_full_forward(image_attention):
    model = tiny_model(image_attention, seed=3)
    prompt = image_prompt([(1, 4, 4)], seed=4)
    out = model.generate(**prompt, max_new_tokens=6, do_sample=False, output_logits=True,
                         return_dict_in_generate=True)
    full = model(input_ids=out.sequences, pixel_values=prompt["pixel_values"],
                 image_grid_thw=prompt["image_grid_thw"], use_cache=False).logits[0]
    prompt_length = prompt["input_ids"].shape[1]
    expected = full[prompt_length - 1: prompt_length - 1 + 6]
    torch.testing.assert_close(torch.cat(out.logits), expected, atol=1e-4, rtol=0)


@torch.no_grad()
def test_flex_attention_uses_the_same_mask_as_sdpa():
    pytest.importorskip("torch.nn.attention.flex_attention")
    model = tiny_model("bidirectional", seed=4)
    first = image_prompt([(1, 4, 4)], text_before=4, seed=5)
    second = image_prompt([(1, 2, 2)], text_before=2, seed=6)
    pad = first["input_ids"].shape[1] - second["input_ids"].shape[1]
    batch = dict(
        input_ids=torch.cat([first["input_ids"], torch.nn.functional.pad(second["input_ids"], (pad, 0))]),
        attention_mask=(torch.arange(first["input_ids"].shape[1]) >= torch.tensor([[0], [pad]])).long(),
        pixel_values=torch.cat([first["pixel_values"], second["pixel_values"]]),
        image_grid_thw=torch.cat([first["image_grid_thw"], second["image_grid_thw"]]),
    )
    sdpa = model(**batch).logits
    model.language_model.config._attn_implementation = "flex_attention"
    flex = model(**batch).logits
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(flex[real], sdpa[real], atol=1e-5, rtol=0)
    generated = model.generate(**batch, max_new_tokens=3, do_sample=False)
    model.language_model.config._attn_implementation = "sdpa"
    assert torch.equal(generated, model.generate(**batch, max_new_tokens=3, do_sample=False))


@torch.no_grad()
def test_prefill_chunks_may_not_split_an_image_span():
    model = tiny_model("bidirectional", seed=5)
    prompt = image_prompt([(1, 4, 4)], text_before=3, seed=7)
    image_positions = (prompt["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    embeds = model.get_input_embeddings()(prompt["input_ids"])
    features = model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    image_mask = model.model.get_placeholder_mask(prompt["input_ids"], embeds, features)
    embeds = embeds.masked_scatter(image_mask[..., None], features)
    split = int(image_positions[1])  # inside the image
    first = model(inputs_embeds=embeds[:, :split], image_mask=image_mask[:, :split], use_cache=True)
    with pytest.raises(ValueError, match="image span continues from the cache"):
        model(inputs_embeds=embeds[:, split:], image_mask=image_mask[:, split:],
              cache=first.cache, use_cache=True)
    # Splitting between the image and the text is fine and equals one forward.
    end = int(image_positions[-1]) + 1
    full = model(inputs_embeds=embeds, image_mask=image_mask, use_cache=False).logits
    head = model(inputs_embeds=embeds[:, :end], image_mask=image_mask[:, :end], use_cache=True)
    tail = model(inputs_embeds=embeds[:, end:], image_mask=image_mask[:, end:],
                 cache=head.cache, use_cache=True)
    torch.testing.assert_close(torch.cat([head.logits, tail.logits], dim=1), full, atol=1e-4, rtol=0)


def naive_image_attention_mask(input_ids, attention_mask, image_token_id, mode):
    """Each reference's rule written out token by token: True where query q may attend to key k."""
    batch, seq = input_ids.shape
    allowed = torch.zeros(batch, seq, seq, dtype=torch.bool)
    for b in range(batch):
        image = [bool(t == image_token_id) for t in input_ids[b]]
        last = max((i for i in range(seq) if image[i]), default=-1)
        for q in range(seq):
            for k in range(seq):
                ok = k <= q
                if mode == "images":  # the port: causal mask, then every image pair of the row set to "attend"
                    ok = ok or (image[q] and image[k])
                if mode == "prefix":  # Zyphra's flash path: the prefix through two tokens past the last image
                    ok = ok or (last >= 0 and q < last + 3 and k < last + 3)
                allowed[b, q, k] = ok and bool(attention_mask[b, k])
    return allowed


@pytest.mark.parametrize("mode", ["images", "prefix"])
def test_reference_image_attention_modes_build_the_references_masks(mode):
    from zaya_vl.lm.masks import build_attention_mask, image_attention_spans

    image_token = 9
    input_ids = torch.tensor([[0, 0, 3, 9, 9, 4, 5, 9, 9, 9, 6, 7, 8],
                              [3, 4, 9, 9, 9, 5, 6, 7, 8, 1, 2, 3, 4]])
    attention_mask = torch.tensor([[0, 0] + [1] * 11, [1] * 13])
    spans = image_attention_spans(input_ids == image_token, mode)
    mask = build_attention_mask(batch_size=2, query_length=13, key_length=13, device=torch.device("cpu"),
                                padding_mask=attention_mask, image_span_ids=spans)[:, 0]
    expected = naive_image_attention_mask(input_ids, attention_mask, image_token, mode)
    real = attention_mask.bool()
    for b in range(2):  # padded query rows attend to themselves only (never used); compare the real ones
        assert torch.equal(mask[b][real[b]], expected[b][real[b]])


@torch.no_grad()
def test_images_mode_lets_an_earlier_image_see_a_later_one(monkeypatch):
    model = tiny_model("images")
    prompt = image_prompt([(1, 4, 4), (1, 4, 4)], text_before=2, text_after=3)
    image_positions = (prompt["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1)
    first_image = int(image_positions[0])
    base = model(**prompt, use_cache=False).logits[0]
    changed = logits_with_perturbed_image_token(model, prompt, token_index=-1, monkeypatch=monkeypatch)
    assert torch.equal(changed[:first_image], base[:first_image])  # text before the images: never
    assert not torch.allclose(changed[first_image], base[first_image])  # the first image sees the second
