"""ZayaVLProcessor: placeholder expansion, pixel budgets, round trips, chat template masks, and named errors.

Expected token ids are built from separately tokenized pieces and expected grids are worked out by hand from Qwen's
smart-resize rule (sides multiples of 28, area within [min_pixels, max_pixels]); pixel values are compared with a
fresh Qwen2-VL image processor. No network.
"""

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, Qwen2VLImageProcessorPil

import zaya_vl  # noqa: F401  (registers the Auto classes)
from zaya_vl.processing import ImageTokenCount, ZayaVLProcessor
from zaya_vl.testing import TINY_PIXELS, build_tiny_processor
from zaya_vl.vision import ImageLoadError

MIN_PIXELS, MAX_PIXELS = TINY_PIXELS["min_pixels"], TINY_PIXELS["max_pixels"]  # 3136 = 56², 50176 = 28²·64


@pytest.fixture(scope="module")
def processor():
    return build_tiny_processor()


def random_image(height, width, seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def png_bytes(image):
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def text_ids(processor, text):
    return processor.tokenizer(text, add_special_tokens=False)["input_ids"]


def expected_ids(processor, pieces):
    """``pieces``: strings (tokenized on their own) and ints (an image span of that many soft tokens)."""
    ids = [processor.tokenizer.bos_token_id]
    for piece in pieces:
        if isinstance(piece, int):
            ids += [processor.vision_start_token_id, *[processor.image_token_id] * piece, processor.vision_end_token_id]
        else:
            ids += text_ids(processor, piece)
    return ids


def reference_pixels(images, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    return Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)(images=images, return_tensors="pt")


def unpadded(row_ids, row_mask):
    return [token for token, keep in zip(row_ids.tolist(), row_mask.tolist()) if keep]


# (height, width) → grid worked out by hand for min_pixels=3136, max_pixels=50176:
#  60×90:   round(60/28)=2 → 56, round(90/28)=3 → 84; 56·84 = 4704 in budget → grid (1, 4, 6),   6 tokens
#  100×150: 112×140 = 15680 in budget                                        → grid (1, 8, 10),  20 tokens
#  20×30:   28×28 = 784 < 3136 → β = √(3136/600) = 2.286;
#           ⌈20β/28⌉ = 2 → 56, ⌈30β/28⌉ = 3 → 84                             → grid (1, 4, 6),   6 tokens
#  300×200: 308×196 = 60368 > 50176 → β = √(60000/50176) = 1.0935;
#           ⌊300/β/28⌋ = 9 → 252, ⌊200/β/28⌋ = 6 → 168                       → grid (1, 18, 12), 54 tokens
SIZES_AND_GRIDS = [((60, 90), (1, 4, 6)), ((100, 150), (1, 8, 10)), ((20, 30), (1, 4, 6)), ((300, 200), (1, 18, 12))]


@pytest.mark.parametrize("size, grid", SIZES_AND_GRIDS)
def test_placeholder_becomes_start_n_image_tokens_end_in_place(processor, size, grid):
    image = random_image(*size)
    out = processor(images=[image], text="Q: <image> What is the total?", return_tensors="pt")

    assert out["image_grid_thw"].tolist() == [list(grid)]
    n = grid[0] * grid[1] * grid[2] // 4
    assert out["input_ids"][0].tolist() == expected_ids(processor, ["Q: ", n, " What is the total?"])
    assert out["attention_mask"].tolist() == [[1] * out["input_ids"].shape[1]]
    assert out["pixel_values"].shape == (grid[0] * grid[1] * grid[2], 3 * 2 * 14 * 14)
    assert torch.equal(out["pixel_values"], reference_pixels([image])["pixel_values"])
    assert processor.num_image_tokens(image) == ImageTokenCount(n, n + 2, grid, (grid[1] * 14, grid[2] * 14))


def test_batch_with_zero_one_and_two_images_is_left_padded(processor):
    images = [random_image(60, 90, seed=1), random_image(100, 150, seed=2), random_image(20, 30, seed=3)]
    texts = ["No image here, just text.", "<image>Describe the chart.", "First <image> then <image> compare."]
    nested = processor(images=[[], images[:1], images[1:]], text=texts, return_tensors="pt")
    flat = processor(images=images, text=texts, return_tensors="pt")

    for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
        assert torch.equal(nested[key], flat[key]), key
    assert nested["image_grid_thw"].tolist() == [[1, 4, 6], [1, 8, 10], [1, 4, 6]]
    assert torch.equal(nested["pixel_values"], reference_pixels(images)["pixel_values"])

    rows = [expected_ids(processor, [texts[0]]),
            expected_ids(processor, [6, "Describe the chart."]),
            expected_ids(processor, ["First ", 20, " then ", 6, " compare."])]
    width = max(map(len, rows))
    assert nested["input_ids"].shape == (3, width)
    pad = processor.tokenizer.pad_token_id
    for row, ids, mask in zip(rows, nested["input_ids"], nested["attention_mask"]):
        padding = width - len(row)
        assert ids.tolist() == [pad] * padding + row  # padding on the left
        assert mask.tolist() == [0] * padding + [1] * len(row)


def test_padding_side_can_be_overridden(processor):
    out = processor(text=["a", "The total is 42."], padding_side="right", return_tensors="pt")
    assert out["attention_mask"][0].tolist()[0] == 1 and out["attention_mask"][0].tolist()[-1] == 0


def test_bos_once_whatever_the_text_starts_with(processor):
    bos = processor.tokenizer.bos_token_id
    plain = processor(text="What is the total?")["input_ids"][0]
    templated = processor(text="<bos>What is the total?")["input_ids"][0]
    assert plain == templated == [bos] + text_ids(processor, "What is the total?")
    verbatim = processor(text="What is the total?", add_special_tokens=False)["input_ids"][0]
    assert verbatim == text_ids(processor, "What is the total?")


# Budgets worked out by hand with smart-resize (factor 28):
#  100×150, max 12544 (=28²·16): 112·140 = 15680 > max → β = √(15000/12544) = 1.0935;
#           ⌊100/β/28⌋ = 3 → 84, ⌊150/β/28⌋ = 4 → 112                     → grid (1, 6, 8), 12 tokens
#  100×150, max 50176: 15680 fits                                          → grid (1, 8, 10), 20 tokens
#  56×56,  min 3136: 56·56 fits                                            → grid (1, 4, 4), 4 tokens
#  56×56,  min 12544: 3136 < min → β = √(12544/3136) = 2; ⌈56·2/28⌉ = 4 → 112 → grid (1, 8, 8), 16 tokens
BUDGETS = [((100, 150), dict(max_pixels=28 * 28 * 16), (1, 6, 8)),
           ((100, 150), dict(max_pixels=28 * 28 * 64), (1, 8, 10)),
           ((56, 56), dict(min_pixels=56 * 56), (1, 4, 4)),
           ((56, 56), dict(min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 64), (1, 8, 8))]


@pytest.mark.parametrize("size, budget, grid", BUDGETS)
def test_pixel_budget_sets_the_grid(processor, size, budget, grid):
    image = random_image(*size)
    n = grid[1] * grid[2] // 4
    # Per call, on the processor's construction, and in the preview: the same grid.
    per_call = processor(images=[image], text="<image>", **budget)
    built = build_tiny_processor(**{**TINY_PIXELS, **budget})(images=[image], text="<image>")
    for out in (per_call, built):
        assert out["image_grid_thw"].tolist() == [list(grid)]
        assert out["input_ids"][0].count(processor.image_token_id) == n
    assert processor.num_image_tokens(image, **budget).grid_thw == grid
    assert processor.num_image_tokens(size, **budget).image_tokens == n  # (height, width) works without an image
    expected = reference_pixels([image], **{**TINY_PIXELS, **budget})["pixel_values"]
    assert np.array_equal(per_call["pixel_values"], expected.numpy())


def test_budget_is_read_from_and_saved_in_the_image_processor(processor, tmp_path):
    assert (processor.min_pixels, processor.max_pixels) == (MIN_PIXELS, MAX_PIXELS)
    custom = build_tiny_processor(min_pixels=28 * 28 * 8, max_pixels=28 * 28 * 32)
    custom.save_pretrained(tmp_path)
    loaded = ZayaVLProcessor.from_pretrained(tmp_path)
    assert (loaded.min_pixels, loaded.max_pixels) == (28 * 28 * 8, 28 * 28 * 32)
    # As with Qwen's processors, a budget given to from_pretrained overrides the saved one.
    overridden = AutoProcessor.from_pretrained(tmp_path, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 16)
    assert (overridden.min_pixels, overridden.max_pixels) == (28 * 28 * 4, 28 * 28 * 16)
    with pytest.raises(ValueError, match="min_pixels <= max_pixels"):
        processor.num_image_tokens((50, 50), min_pixels=20000, max_pixels=10000)


def test_image_sources_all_load_to_the_same_pixels(processor, tmp_path):
    image = random_image(60, 90, seed=5)
    data = png_bytes(image)
    path = tmp_path / "page.png"
    path.write_bytes(data)
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    sources = [image, str(path), path, data, uri, {"bytes": data, "path": "page.png"}]
    out = processor(images=sources, text="<image>" * len(sources), return_tensors="pt")
    expected = reference_pixels([image])["pixel_values"]
    assert torch.equal(out["pixel_values"], expected.repeat(len(sources), 1))


def test_num_image_tokens_counts_the_span_in_input_ids(processor):
    image = random_image(100, 150)
    count = processor.num_image_tokens(image)
    ids = processor(images=[image], text="<image>")["input_ids"][0]
    assert count.span_tokens == len(ids) - 1  # all but <bos>
    assert ids.count(processor.image_token_id) == count.image_tokens == 20


def test_save_load_round_trip_is_identical(tmp_path):
    tiny = build_tiny_processor()
    # A non-default config value must survive the round trip too.
    processor = ZayaVLProcessor(tiny.image_processor, tiny.tokenizer, image_placeholder="<|img|>")
    images = [random_image(60, 90, seed=6), random_image(300, 200, seed=7)]
    texts = ["<|img|>What is the total?", "Compare <|img|> and <|img|>."]
    with pytest.raises(ValueError, match="placeholder"):  # 3 placeholders, 2 images
        processor(images=images, text=texts)
    images.append(random_image(20, 30, seed=8))
    before = processor(images=images, text=texts, return_tensors="pt")

    processor.save_pretrained(tmp_path)
    assert {"processor_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= {
        p.name for p in tmp_path.iterdir()}
    for loaded in (ZayaVLProcessor.from_pretrained(tmp_path), AutoProcessor.from_pretrained(tmp_path)):
        assert isinstance(loaded, ZayaVLProcessor)
        assert loaded.image_placeholder == "<|img|>"
        assert loaded.chat_template == processor.chat_template
        assert (loaded.image_token_id, loaded.vision_start_token_id, loaded.vision_end_token_id) == (
            processor.image_token_id, processor.vision_start_token_id, processor.vision_end_token_id)
        after = loaded(images=images, text=texts, return_tensors="pt")
        for key in ("input_ids", "attention_mask", "pixel_values", "image_grid_thw"):
            assert torch.equal(before[key], after[key]), key




def test_mismatched_placeholders_and_images_name_the_problem(processor):
    image = random_image(60, 90)
    with pytest.raises(ValueError, match=r"sample 1: the text has 2 '<image>' placeholder\(s\) but 1 image\(s\)"):
        processor(images=[[image], [image]], text=["<image>a", "<image>b<image>"])
    with pytest.raises(ValueError, match=r"3 '<image>' placeholder\(s\) \(sample 0: 1, sample 1: 2\) but 2 image"):
        processor(images=[image, image], text=["<image>a", "<image>b<image>"])
    with pytest.raises(ValueError, match=r"sample 1: the text has 1 '<image>' placeholder\(s\) but no images"):
        processor(text=["a", "<image>b"])
    with pytest.raises(ValueError, match=r"sample 0: the text has 0 '<image>' placeholder\(s\) but 1 image"):
        processor(images=[[image]], text=["no placeholder"])
    with pytest.raises(ValueError, match="2 per-sample lists but `text` has 1 samples"):
        processor(images=[[image], [image]], text=["<image>"])


def test_already_expanded_text_is_rejected(processor):
    with pytest.raises(ValueError, match=r"sample 1: the text already contains '<image_soft_token>' \(2x\)"):
        processor(text=["fine", "<image_soft_token><image_soft_token>"])
    with pytest.raises(ValueError, match=r"sample 0: the text already contains '<start_of_image>'"):
        processor(images=[random_image(60, 90)], text="<start_of_image><image>")


def test_truncating_an_image_span_is_an_error(processor):
    with pytest.raises(ValueError, match=r"sample 0: expected 20 '<image_soft_token>' tokens .* truncation"):
        processor(images=[random_image(100, 150)], text="<image>", truncation=True, max_length=10)


def test_corrupt_image_raises_image_load_error_naming_it(processor, tmp_path):
    bad = tmp_path / "scan_0007.png"
    bad.write_bytes(png_bytes(random_image(60, 90))[:60])  # truncated PNG
    with pytest.raises(ImageLoadError, match=r"image 1 \(.*scan_0007\.png\)"):
        processor(images=[random_image(60, 90), str(bad)], text="<image><image>")
    with pytest.raises(ImageLoadError, match=r"image 0 \(bytes\[12\]\)"):
        processor(images=[b"not an image"], text="<image>")
    with pytest.raises(ImageLoadError, match=r"scan_0007\.png"):
        processor.num_image_tokens(str(bad))


def conversation(first_image, second_image):
    return [
        {"role": "user", "content": [{"type": "image", "image": first_image},
                                     {"type": "text", "text": "What is the total?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "The total is 42."}]},
        {"role": "user", "content": [{"type": "text", "text": "And this one?"},
                                     {"type": "image", "image": second_image}]},
        {"role": "assistant", "content": "May 3."},
    ]


def expected_chat(processor, n_first, n_second):
    """(ids, assistant mask) of `conversation`, from separately tokenized pieces; 1 = trained on."""
    pieces = [("<bos><start_of_turn>user\n", 0), (n_first, 0), ("What is the total?<end_of_turn>\n", 0),
              ("<start_of_turn>model\n", 0), ("The total is 42.<end_of_turn>", 1), ("\n<start_of_turn>user\n", 0),
              ("And this one?", 0), (n_second, 0), ("<end_of_turn>\n<start_of_turn>model\n", 0),
              ("May 3.<end_of_turn>", 1), ("\n", 0)]
    ids, mask = [], []
    for piece, trained in pieces:
        piece_ids = (text_ids(processor, piece) if isinstance(piece, str) else
                     [processor.vision_start_token_id] + [processor.image_token_id] * piece
                     + [processor.vision_end_token_id])
        ids += piece_ids
        mask += [trained] * len(piece_ids)
    return ids, mask


def test_chat_template_assistant_mask_covers_exactly_the_assistant_tokens(processor):
    first, second = random_image(100, 150, seed=9), random_image(60, 90, seed=10)
    out = processor.apply_chat_template(conversation(first, second), tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True, return_tensors="pt")
    ids, mask = expected_chat(processor, 20, 6)
    assert out["input_ids"][0].tolist() == ids
    assert out["assistant_masks"][0].tolist() == mask
    assert torch.equal(out["pixel_values"], reference_pixels([first, second])["pixel_values"])
    assert out["image_grid_thw"].tolist() == [[1, 8, 10], [1, 4, 6]]
    trained = out["input_ids"][0][out["assistant_masks"][0].bool()]
    assert processor.decode(trained, skip_special_tokens=False) == "The total is 42.<end_of_turn>May 3.<end_of_turn>"


def test_batched_chat_template_masks_follow_left_padding(processor):
    big, small = random_image(300, 200, seed=11), random_image(20, 30, seed=12)
    out = processor.apply_chat_template([conversation(big, small), conversation(small, small)], tokenize=True,
                                        return_dict=True, return_assistant_tokens_mask=True, return_tensors="pt")
    width = out["input_ids"].shape[1]
    for row, (n_first, n_second) in enumerate([(54, 6), (6, 6)]):
        ids, mask = expected_chat(processor, n_first, n_second)
        padding = width - len(ids)
        assert out["input_ids"][row].tolist() == [processor.tokenizer.pad_token_id] * padding + ids
        assert out["assistant_masks"][row].tolist() == [0] * padding + mask
        assert out["attention_mask"][row].tolist() == [0] * padding + [1] * len(ids)


def test_chat_template_text_and_generation_prompt(processor):
    messages = [{"role": "user", "content": [{"type": "image", "image": random_image(60, 90)},
                                             {"type": "text", "text": "What is the total?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    assert prompt == "<bos><start_of_turn>user\n<image>What is the total?<end_of_turn>\n<start_of_turn>model\n"
    ids = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)[0]
    assert ids == expected_ids(processor, ["<start_of_turn>user\n", 6, "What is the total?<end_of_turn>\n",
                                           "<start_of_turn>model\n"])  # one <bos>


def test_decoding_skips_special_tokens_by_default(processor):
    out = processor(images=[random_image(60, 90)], text="<image>The total is 42.", return_tensors="pt")
    generated = torch.cat([out["input_ids"], torch.tensor([text_ids(processor, " May 3.")])], dim=1)
    assert processor.post_process_image_text_to_text(generated) == ["The total is 42. May 3."]
    assert processor.post_process_image_text_to_text(generated[0]) == ["The total is 42. May 3."]
    assert processor.batch_decode(generated) == ["The total is 42. May 3."]
    assert processor.decode(generated[0]) == "The total is 42. May 3."
    assert processor.decode(generated[0], skip_special_tokens=False).startswith("<bos><start_of_image><image_soft")


def test_text_only_and_images_only(processor):
    text_only = processor(text="What is the total?", return_tensors="pt")
    assert set(text_only) == {"input_ids", "attention_mask"}
    image = random_image(60, 90)
    images_only = processor(images=image, return_tensors="pt")
    assert set(images_only) == {"pixel_values", "image_grid_thw"}
    assert torch.equal(images_only["pixel_values"], reference_pixels([image])["pixel_values"])


def test_tokenizer_without_image_tokens_is_rejected(processor):
    tokenizer = processor.tokenizer
    with pytest.raises(ValueError, match=r"no token for \['<image_pad>'\]"):
        ZayaVLProcessor(processor.image_processor, tokenizer, image_token="<image_pad>")
    with pytest.raises(ValueError, match="must differ"):
        ZayaVLProcessor(processor.image_processor, tokenizer, image_placeholder="<image_soft_token>")
