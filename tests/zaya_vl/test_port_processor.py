"""On a folder it did not save, ZayaVLProcessor reproduces the upstream transformers port's Zaya1VLProcessor.

The expected ids, grids, pixel values and chat-template text in tests/fixtures/port_zaya1_vl/processor/ were written
by the port's own processor (revision b53060fb, see that folder's README.md) from the same tokenizer, image processor
and image files the tests load here; nothing below recomputes them with our code.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

import zaya_vl  # noqa: F401  (registers the Auto classes)
from zaya_vl.processing import ZayaVLProcessor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "port_zaya1_vl" / "processor"
VARIANTS = ("gemma", "plain")


def expected(variant):
    return json.loads((FIXTURES / variant / "expected.json").read_text())


def load_images(names):
    return [Image.open(FIXTURES / "images" / name).convert("RGB") for name in names]


def as_lists(rows):
    return [[int(value) for value in row] for row in rows]


@pytest.fixture(params=VARIANTS)
def variant(request):
    return request.param


@pytest.mark.parametrize("loader", [ZayaVLProcessor.from_pretrained, AutoProcessor.from_pretrained],
                         ids=["ZayaVLProcessor", "AutoProcessor"])
def test_port_folder_loads_as_our_processor_in_reference_mode(variant, loader):
    processor = loader(FIXTURES / variant)
    reference = expected(variant)
    assert isinstance(processor, ZayaVLProcessor)  # AutoProcessor must not fall back to a bare tokenizer
    assert processor.image_expansion == "repeat"
    assert processor.image_token == processor.image_placeholder == reference["image_token"]
    assert processor.image_token_id == reference["image_token_id"] == reference["config_image_token_id"]


def test_processor_ids_equal_the_ports_token_for_token(variant):
    processor = ZayaVLProcessor.from_pretrained(FIXTURES / variant)
    reference = expected(variant)
    for case in reference["cases"]:
        images = load_images(case["images"])
        out = processor(text=case["text"], images=images or None, padding=len(case["text"]) > 1)
        assert as_lists(out["input_ids"]) == case["input_ids"], case["name"]
        assert as_lists(out["attention_mask"]) == case["attention_mask"], case["name"]
        if images:
            assert as_lists(out["image_grid_thw"]) == case["image_grid_thw"], case["name"]
            assert list(out["pixel_values"].shape) == case["pixel_values_shape"], case["name"]
        else:
            assert "pixel_values" not in out


def test_pixel_values_equal_the_ports(variant):
    processor = ZayaVLProcessor.from_pretrained(FIXTURES / variant)
    case = next(c for c in expected(variant)["cases"] if c["name"] == "one_image")
    out = processor(text=case["text"], images=load_images(case["images"]), return_tensors="pt")
    reference = load_file(FIXTURES / variant / "expected_pixel_values.safetensors")["one_image.pixel_values"]
    torch.testing.assert_close(out["pixel_values"].float(), reference, atol=1e-6, rtol=0)


def test_chat_template_text_and_ids_equal_the_ports(variant):
    processor = ZayaVLProcessor.from_pretrained(FIXTURES / variant)
    for chat in expected(variant)["chat_template"]:
        text = processor.apply_chat_template(chat["conversation"], tokenize=False,
                                             add_generation_prompt=chat["add_generation_prompt"])
        assert text == chat["text"]
        images = load_images(chat["images"])
        # As the port: the tokenizer adds <bos> by default even though the template already wrote one.
        assert as_lists(processor(text=[text], images=images)["input_ids"]) == chat["input_ids"]
        verbatim = processor(text=[text], images=images, add_special_tokens=False)
        assert as_lists(verbatim["input_ids"]) == chat["input_ids_add_special_tokens_false"]


def test_original_release_style_folder_without_processor_config(tmp_path):
    """A folder with only preprocessor_config.json (as the port's converter writes it) + tokenizer + config.json."""
    source = FIXTURES / "gemma"
    saved = json.loads((source / "processor_config.json").read_text())
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps({**saved["image_processor"], "processor_class": "Zaya1VLProcessor"}))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "config.json"):
        shutil.copy2(source / name, tmp_path / name)
    reference = expected("gemma")
    for loader in (ZayaVLProcessor.from_pretrained, AutoProcessor.from_pretrained):
        processor = loader(tmp_path)
        assert isinstance(processor, ZayaVLProcessor) and processor.image_expansion == "repeat"
        for case in reference["cases"]:
            out = processor(text=case["text"], images=load_images(case["images"]) or None,
                            padding=len(case["text"]) > 1)
            assert as_lists(out["input_ids"]) == case["input_ids"], case["name"]


def test_reference_mode_survives_our_save_and_reload(tmp_path):
    processor = ZayaVLProcessor.from_pretrained(FIXTURES / "plain")
    processor.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "processor_config.json").read_text())["image_expansion"] == "repeat"
    reloaded = ZayaVLProcessor.from_pretrained(tmp_path)
    assert (reloaded.image_expansion, reloaded.image_token, reloaded.image_token_id) == (
        "repeat", processor.image_token, processor.image_token_id)
    case = expected("plain")["cases"][1]
    out = reloaded(text=case["text"], images=load_images(case["images"]))
    assert as_lists(out["input_ids"]) == case["input_ids"]


def test_config_image_token_id_that_disagrees_with_the_tokenizer_is_an_error(tmp_path):
    shutil.copytree(FIXTURES / "gemma", tmp_path / "folder")
    config_path = tmp_path / "folder" / "config.json"
    config = json.loads(config_path.read_text())
    config["image_token_id"] = expected("gemma")["image_token_id"] + 1
    config_path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"image_token_id is \d+"):
        ZayaVLProcessor.from_pretrained(tmp_path / "folder")


def test_placeholders_and_images_that_disagree_name_the_problem():
    processor = ZayaVLProcessor.from_pretrained(FIXTURES / "gemma")
    with pytest.raises(ValueError, match="placeholder"):
        processor(text=[f"{processor.image_token} and {processor.image_token}"], images=load_images(["a.png"]))
