"""ZayaVL loaded from Zyphra's reference layout reproduces what the reference code computed (fixtures)."""

import torch

from zaya_vl import ZayaVL


def load_causal(checkpoint):
    return ZayaVL.from_pretrained(checkpoint, image_attention="causal").eval()


@torch.no_grad()
def test_image_embeddings_match_reference(reference_case):
    _, checkpoint, case = reference_case
    model = load_causal(checkpoint)
    embeds = model.get_image_features(case["pixel_values"], case["image_grid_thw"])
    torch.testing.assert_close(embeds, case["image_embeds"], atol=1e-5, rtol=0)


@torch.no_grad()
def test_full_forward_logits_match_reference(reference_case):
    _, checkpoint, case = reference_case
    model = load_causal(checkpoint)
    logits = model(input_ids=case["input_ids"], attention_mask=case["attention_mask"],
                   pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"], use_cache=False).logits
    real = case["attention_mask"].bool()
    torch.testing.assert_close(logits[real], case["logits"][real], atol=1e-4, rtol=0)


@torch.no_grad()
def test_greedy_generation_matches_reference_ids_and_step_logits(reference_case):
    _, checkpoint, case = reference_case
    model = load_causal(checkpoint)
    out = model.generate(input_ids=case["input_ids"], attention_mask=case["attention_mask"],
                         pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"],
                         max_new_tokens=case["generated_step_logits"].shape[1], do_sample=False,
                         output_logits=True, return_dict_in_generate=True)
    assert torch.equal(out.sequences, case["generated_ids"])
    torch.testing.assert_close(torch.stack(out.logits, dim=1), case["generated_step_logits"], atol=1e-4, rtol=0)


def split_images(case, image_token_id):
    """Per sample: (pixel_values rows, image_grid_thw rows) of its own images, in order."""
    patches_per_image = case["image_grid_thw"].prod(dim=1).tolist()
    pixel_chunks = list(torch.split(case["pixel_values"], patches_per_image))
    images_per_sample = [int(((row == image_token_id) & (torch.roll(row, 1) != image_token_id)).sum())
                         for row in case["input_ids"]]
    out, start = [], 0
    for count in images_per_sample:
        out.append((torch.cat(pixel_chunks[start:start + count]), case["image_grid_thw"][start:start + count]))
        start += count
    return out


@torch.no_grad()
def test_left_padded_batch_equals_each_sample_alone(reference_case):
    _, checkpoint, case = reference_case
    for image_attention in ("causal", "bidirectional"):
        model = ZayaVL.from_pretrained(checkpoint, image_attention=image_attention).eval()
        batched = model(input_ids=case["input_ids"], attention_mask=case["attention_mask"],
                        pixel_values=case["pixel_values"], image_grid_thw=case["image_grid_thw"]).logits
        for row, (pixels, grid) in enumerate(split_images(case, model.config.image_token_id)):
            real = case["attention_mask"][row].bool()
            alone = model(input_ids=case["input_ids"][row, real][None], pixel_values=pixels,
                          image_grid_thw=grid).logits[0]
            torch.testing.assert_close(batched[row, real], alone, atol=1e-4, rtol=0)
