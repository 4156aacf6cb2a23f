"""The transformers shape: a headless ZayaVLModel (tower + merge + decoder) under ZayaVL (head + generate), and the
folders saved in the names of before the headless model (``native_v1``) still load."""

import json
import shutil
from pathlib import Path

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from zaya_vl import ZayaVL, ZayaVLModel
from zaya_vl.testing import image_prompt, randomize_, tiny_vl_config

BUNDLED = Path(__file__).resolve().parents[2] / "examples" / "tiny_docvqa" / "model"


def v1_name(name: str) -> str:
    """Today's native name in the older spelling, written out by hand (not through the conversion table)."""
    if name.startswith("model.vision_tower."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    assert name.startswith("lm_head."), name
    return name


@pytest.fixture(scope="module")
def model():
    return randomize_(ZayaVL(tiny_vl_config(image_attention="images")), seed=5, std=0.2).eval()


@pytest.fixture(scope="module")
def prompt():
    return image_prompt([(1, 4, 6), (1, 2, 4)], text_before=3, text_after=4, seed=2)


@pytest.fixture
def native_and_v1(model, tmp_path):
    """The same weights saved in today's names and, renamed by hand, in the older ones."""
    model.save_pretrained(tmp_path / "native")
    shutil.copytree(tmp_path / "native", tmp_path / "v1")
    tensors = load_file(tmp_path / "native" / "model.safetensors")
    save_file({v1_name(k): t for k, t in tensors.items()}, tmp_path / "v1" / "model.safetensors",
              metadata={"format": "pt"})
    return tmp_path / "native", tmp_path / "v1"


def test_the_model_is_the_headless_model_plus_the_head(model):
    assert isinstance(model.model, ZayaVLModel)
    assert model.language_model is model.model.language_model and model.get_decoder() is model.language_model
    assert model.vision_tower is model.model.vision_tower
    assert model.get_input_embeddings() is model.language_model.embed_tokens
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied under the new names
    assert {name.split(".")[0] for name in model.state_dict()} == {"model", "lm_head"}
    assert {".".join(name.split(".")[:2]) for name in model.model.state_dict()} >= {
        "vision_tower.merger", "language_model.layers"}


@torch.no_grad()
def test_the_head_on_the_headless_hidden_states_gives_the_models_logits(model, prompt):
    full = model(**prompt, output_router_logits=True)
    headless = model.model(**prompt, output_router_logits=True)
    assert torch.equal(model.lm_head(headless.last_hidden_state), full.logits)
    assert torch.equal(headless.image_hidden_states, full.image_hidden_states)
    assert len(headless.routings) == model.config.text_config.num_hidden_layers
    assert headless.cache is not None and headless.cache.get_seq_length() == prompt["input_ids"].shape[1]


@torch.no_grad()
def test_the_headless_model_scatters_image_features_into_the_image_tokens(model, prompt):
    """Against a hand-written merge: feature row k goes to the k-th image token in row-major order."""
    ids = prompt["input_ids"]
    features = model.model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    merge = model.config.vision_config.spatial_merge_size ** 2
    assert features.shape == (int(prompt["image_grid_thw"].prod(-1).sum()) // merge, model.config.text_config.hidden_size)
    embeds = model.get_input_embeddings()(ids).clone()
    row = 0
    for b in range(ids.shape[0]):
        for s in range(ids.shape[1]):
            if ids[b, s] == model.config.image_token_id:
                embeds[b, s] = features[row]
                row += 1
    assert row == features.shape[0]
    mask = ids == model.config.image_token_id
    expected = model.language_model(inputs_embeds=embeds, image_mask=mask, use_cache=False,
                                    image_attention=model.config.image_attention).last_hidden_state
    assert torch.equal(model.model(**prompt, use_cache=False).last_hidden_state, expected)


def test_the_placeholder_mask_marks_the_image_tokens_and_checks_their_count(model, prompt):
    ids = prompt["input_ids"]
    embeds = model.get_input_embeddings()(ids)
    with torch.no_grad():
        features = model.model.get_image_features(prompt["pixel_values"], prompt["image_grid_thw"])
    mask = model.model.get_placeholder_mask(ids, embeds, features)
    assert mask.shape == ids.shape and torch.equal(mask, ids == model.config.image_token_id)
    assert torch.equal(model.model.get_placeholder_mask(None, embeds), mask)  # found from the embeddings alone
    n = int(mask.sum())
    with pytest.raises(ValueError, match=rf"The input has {n} image tokens \(id {model.config.image_token_id}\) "
                                         rf"but the images give {n - 1} embeddings"):
        model.model.get_placeholder_mask(ids, embeds, features[1:])
    with pytest.raises(ValueError, match=rf"has {n} image tokens .* give {n + 2} embeddings \(image_grid_thw="):
        model.model.get_placeholder_mask(ids, embeds, torch.cat([features, features[:2]]),
                                         image_grid_thw=prompt["image_grid_thw"])


@torch.no_grad()
def test_a_folder_in_the_older_names_loads_the_same_weights_and_logits(model, prompt, native_and_v1):
    native, v1 = native_and_v1
    from_native, from_v1 = ZayaVL.from_pretrained(native).eval(), ZayaVL.from_pretrained(v1).eval()
    assert from_v1.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in from_v1.state_dict().items())
    assert torch.equal(from_v1(**prompt).logits, from_native(**prompt).logits)
    # Saving again writes today's names.
    from_v1.save_pretrained(v1.parent / "resaved")
    assert set(load_file(v1.parent / "resaved" / "model.safetensors")) == set(load_file(native / "model.safetensors"))


@torch.no_grad()
def test_the_headless_model_loads_every_layout_of_the_full_model(model, prompt, native_and_v1, tmp_path):
    import zaya_vl  # noqa: F401  (registers the Auto classes)

    native, v1 = native_and_v1
    model.save_pretrained(tmp_path / "port", layout="transformers")
    for folder in (native, v1, tmp_path / "port"):
        headless = ZayaVLModel.from_pretrained(folder).eval()  # strict: a missing or unexpected key raises
        assert all(torch.equal(t, model.model.state_dict()[k]) for k, t in headless.state_dict().items()), folder
        # The port's folder carries the port's settings, which the full model loads with too.
        full = ZayaVL.from_pretrained(folder).eval()
        assert headless.config.to_dict() == full.config.to_dict()
        assert torch.equal(headless(**prompt).last_hidden_state, full.model(**prompt).last_hidden_state), folder
    assert isinstance(transformers.AutoModel.from_pretrained(native), ZayaVLModel)
    assert isinstance(transformers.AutoModel.from_pretrained(tmp_path / "port"), ZayaVLModel)


def test_a_state_dict_in_the_older_names_loads_strictly(model, tmp_path):
    """Training checkpoints (accelerate's model.safetensors) and PEFT adapters hold state dicts by name."""
    from safetensors.torch import load_model, save_model

    fresh = ZayaVL(tiny_vl_config(image_attention="images"))
    old = {v1_name(k): t for k, t in model.state_dict().items()}
    assert fresh.load_state_dict(old, strict=True)
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in fresh.state_dict().items())
    # accelerate's save_state / load_state path: one name per tied tensor, loaded by safetensors' load_model.
    save_model(model, tmp_path / "new.safetensors")
    save_file({v1_name(k): t for k, t in load_file(tmp_path / "new.safetensors").items()},
              tmp_path / "old.safetensors")
    fresh = ZayaVL(tiny_vl_config(image_attention="images"))
    load_model(fresh, tmp_path / "old.safetensors", strict=True)
    assert all(torch.equal(t, model.state_dict()[k]) for k, t in fresh.state_dict().items())
    # Under a wrapper's prefix too (PEFT's base_model.model.): only the model's own keys are renamed.
    wrapper = torch.nn.ModuleDict({"inner": ZayaVL(tiny_vl_config(image_attention="images"))})
    wrapper.load_state_dict({f"inner.{k}": t for k, t in old.items()}, strict=True)
    assert torch.equal(wrapper["inner"].language_model.norm.weight, model.language_model.norm.weight)


@pytest.mark.skipif(not (BUNDLED / "config.json").exists(), reason="bundled model not built (make tiny-model)")
def test_the_bundled_model_is_in_the_older_names_and_loads_through_them():
    from zaya_vl.conversion import NATIVE_V1, detect_layout

    stored = load_file(BUNDLED / "model.safetensors")
    assert detect_layout(stored) is NATIVE_V1
    loaded = ZayaVL.from_pretrained(BUNDLED).state_dict()
    config = json.loads((BUNDLED / "config.json").read_text())
    assert config.get("tie_word_embeddings", True) and "lm_head.weight" not in stored
    assert set(map(v1_name, loaded)) - {"lm_head.weight"} == set(stored)
    assert all(torch.equal(loaded[k], stored[v1_name(k)]) for k in loaded if k != "lm_head.weight")
