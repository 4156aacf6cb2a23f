"""The data users already have: LLaMA-Factory / ms-swift rows (``<image>`` in the text + an ``images`` column),
sharegpt rows, ``datasets`` datasets with those columns, and the rows that must be refused with a named error.

The reference for an image row is the same conversation written in our parts format (``{"type": "image",
"image": path}``), whose encoding other tests check against the processor; pixel values are compared with the
image processor run on the image directly."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from zaya_vl.training import InvalidSample, RowStream, SampleEncoder, config_from_dict, open_records, train
from zaya_vl.training.config import DataConfig
from zaya_vl.vision import load_image

QUESTION = "What is the total?"


def _pages(folder, sizes=((112, 84), (56, 112))):
    names = []
    for k, size in enumerate(sizes):
        name = f"page{k}.png"
        Image.new("RGB", size, (40 * k, 120, 200)).save(folder / name)
        names.append(name)
    return names


def _write(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _encode_all(tokenizer, processor, path, **config):
    config = DataConfig(train=str(path), **config)
    records, root = open_records(config)
    encoder = SampleEncoder(tokenizer, config, processor, root)
    return [encoder(records[i], records.describe(i)) for i in range(len(records))]


def _encode_error(tokenizer, processor, path, index=0, **config) -> InvalidSample:
    config = DataConfig(train=str(path), **config)
    records, root = open_records(config)
    encoder = SampleEncoder(tokenizer, config, processor, root)
    with pytest.raises(InvalidSample) as error:
        encoder(records[index], records.describe(index))
    return error.value


def _parts_row(names, answer="12"):
    user = [{"type": "image", "image": name} for name in names] + [{"type": "text", "text": QUESTION}]
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]}


def _same(a, b):
    assert a.input_ids == b.input_ids and a.labels == b.labels
    assert torch.equal(a.pixel_values, b.pixel_values) and torch.equal(a.image_grid_thw, b.image_grid_thw)


# -- accepted formats -------------------------------------------------------------------------------------------
def test_llamafactory_rows_take_the_images_column_in_placeholder_order(vl_assets, tmp_path):
    tokenizer, processor = vl_assets["tokenizer"], vl_assets["processor"]
    names = _pages(tmp_path)
    llamafactory = {"messages": [{"role": "user", "content": "<image><image>" + QUESTION},
                                 {"role": "assistant", "content": "12"}], "images": names}
    swapped = {**llamafactory, "images": names[::-1]}
    path = _write(tmp_path / "lf.jsonl", [llamafactory, _parts_row(names), swapped, _parts_row(names[::-1])])
    lf, parts, lf_swapped, parts_swapped = _encode_all(tokenizer, processor, path)
    _same(lf, parts)
    _same(lf_swapped, parts_swapped)
    # Independently of the encoder: the pixels are the image processor's for the two pages, in column order.
    direct = processor.image_processor(images=[load_image(tmp_path / n) for n in names], return_tensors="pt")
    assert torch.equal(lf.pixel_values, direct["pixel_values"]) and torch.equal(lf.image_grid_thw,
                                                                                direct["image_grid_thw"])
    assert not torch.equal(lf.image_grid_thw, lf_swapped.image_grid_thw)  # the order is the column's


def test_sharegpt_rows_with_a_system_column(vl_assets, tmp_path):
    tokenizer, processor = vl_assets["tokenizer"], vl_assets["processor"]
    names = _pages(tmp_path, sizes=((112, 84),))
    sharegpt = {"conversations": [{"from": "human", "value": "<image>" + QUESTION}, {"from": "gpt", "value": "12"},
                                  {"from": "human", "value": "And the tax?"}, {"from": "gpt", "value": "1"}],
                "system": "Answer briefly.", "images": names}
    reference = {"messages": [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": [{"type": "image", "image": names[0]}, {"type": "text", "text": QUESTION}]},
        {"role": "assistant", "content": "12"}, {"role": "user", "content": "And the tax?"},
        {"role": "assistant", "content": "1"}]}
    path = _write(tmp_path / "sharegpt.jsonl", [sharegpt, reference])
    encoded, expected = _encode_all(tokenizer, processor, path)
    _same(encoded, expected)
    trained = tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != -100])
    assert trained == "12<end_of_turn>1<end_of_turn>"


@pytest.mark.parametrize("store", ["json_array", "load_dataset_json", "parquet_file", "parquet_folder"])
def test_datasets_with_those_columns_keep_their_images(vl_assets, tmp_path, store):
    """The same LLaMA-Factory rows from a .json array, a saved ``datasets`` dataset built by
    ``load_dataset("json")``, a parquet file with an Image column, and a folder of parquet files read by
    ``datasets.load_dataset`` (the path a hub name takes)."""
    import datasets

    tokenizer, processor = vl_assets["tokenizer"], vl_assets["processor"]
    names = _pages(tmp_path)
    rows = [{"id": f"r{k}", "messages": [{"role": "user", "content": f"<image>{QUESTION}"},
                                         {"role": "assistant", "content": str(k)}], "images": [name]}
            for k, name in enumerate(names)]
    expected = _encode_all(tokenizer, processor, _write(tmp_path / "rows.jsonl", rows))
    if store == "json_array":
        source = tmp_path / "rows.json"
        source.write_text(json.dumps(rows))
    elif store == "load_dataset_json":
        source = tmp_path / "saved"
        datasets.load_dataset("json", data_files=str(tmp_path / "rows.jsonl"), split="train").save_to_disk(source)
    else:
        with_images = [{**row, "images": [Image.open(tmp_path / row["images"][0])]} for row in rows]
        features = datasets.Features({
            "id": datasets.Value("string"),
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "images": datasets.Sequence(datasets.Image())})
        table = datasets.Dataset.from_list(with_images, features=features)
        if store == "parquet_file":
            source = tmp_path / "rows.parquet"
        else:
            (tmp_path / "folder").mkdir()
            source = tmp_path / "folder" / "train-00000-of-00001.parquet"
        table.to_parquet(str(source))
        source = source if store == "parquet_file" else source.parent
    # A saved dataset's relative image paths resolve against its folder; these point next to the JSONL.
    encoded = _encode_all(tokenizer, processor, source, image_root=str(tmp_path))
    assert len(encoded) == len(expected)
    for got, want in zip(encoded, expected):
        _same(got, want)


# -- rows that must be refused, naming the row and what ---------------------------------------------------------
@pytest.mark.parametrize("row, reason, what", [
    ({"messages": [{"role": "hacker", "content": "hi"}, {"role": "assistant", "content": "ok"}]},
     "malformed", r"message 0: unknown role 'hacker' in 'role'; expected one of system, user, assistant"),
    ({"conversations": [{"from": "user", "value": "hi"}, {"from": "gpt", "value": "ok"}]},
     "malformed", r"message 0: unknown role 'user' in 'from'; expected one of human, gpt, system"),
    ({"messages": [{"role": "user", "content": None}, {"role": "assistant", "content": "ok"}]},
     "malformed", r"message 0 \(user\): 'content' is null or missing"),
    ({"messages": [{"role": "user", "content": [{"type": "video", "video": "a.mp4"}]},
                   {"role": "assistant", "content": "ok"}]},
     "unsupported", r"message 0 \(user\) part 0 has type 'video'; only 'text' and 'image'"),
    ({"messages": [{"role": "user", "content": "<video>hi"}, {"role": "assistant", "content": "ok"}],
      "videos": ["a.mp4"]}, "unsupported", "the row has a 'videos' column"),
    ({"messages": [{"role": "user", "content": "what is <image_soft_token>?"}, {"role": "assistant", "content": "a"}]},
     "image_token", r"message 0 \(user\): the text holds '<image_soft_token>', which only the processor writes"),
    ({"messages": [{"role": "user", "content": "<image>what?"}, {"role": "assistant", "content": "a"}]},
     "image_count", r"'<image>' number 1 needs image 1 but the 'images' column has 0"),
    ({"text": "a page <start_of_image> here"}, "image_token", "the text holds '<start_of_image>'"),
    ({"text": "see <image> here"}, "image_token", "the text holds '<image>'"),
])
def test_rows_that_cannot_be_rendered_faithfully_are_named(assets, tmp_path, row, reason, what):
    path = _write(tmp_path / "bad.jsonl", [{"id": "first", "text": "fine"}, {"id": "bad", **row}])
    error = _encode_error(assets["tokenizer"], None, path, index=1)
    assert error.reason == reason
    assert str(error).startswith("bad.jsonl:2 (id=bad): ")
    assert pytest.importorskip("re").search(what, str(error)), str(error)


def test_placeholders_and_images_must_match_in_number(vl_assets, tmp_path):
    tokenizer, processor = vl_assets["tokenizer"], vl_assets["processor"]
    names = _pages(tmp_path)
    typed_in_an_image_row = _parts_row(names[:1])  # an image part with its path, and <image> typed in the text
    typed_in_an_image_row["messages"][0]["content"][1]["text"] = "Is <image> a tag? " + QUESTION
    rows = [
        {"messages": [{"role": "user", "content": "<image>" + QUESTION}, {"role": "assistant", "content": "1"}],
         "images": names},  # one placeholder, two images: one would be lost
        {"messages": [{"role": "user", "content": "<image><image>" + QUESTION},
                      {"role": "assistant", "content": "1"}], "images": names[:1]},
        typed_in_an_image_row,
    ]
    path = _write(tmp_path / "mismatch.jsonl", rows)
    messages = []
    for index in range(3):
        error = _encode_error(tokenizer, processor, path, index=index)
        assert error.reason == "image_count" and error.where == f"mismatch.jsonl:{index + 1}"
        messages.append(str(error))
    assert "the 'images' column has 2 images but the messages place 1" in messages[0]
    assert "'<image>' number 2 needs image 2 but the 'images' column has 1" in messages[1]
    assert "'<image>' number 1 needs image 1 but the 'images' column has 0" in messages[2]


def test_non_utf8_and_extreme_images_are_named_and_skipped(vl_assets, tmp_path):
    tokenizer, processor = vl_assets["tokenizer"], vl_assets["processor"]
    names = _pages(tmp_path, sizes=((112, 84),))
    Image.new("RGB", (2000, 4), "white").save(tmp_path / "strip.png")  # aspect 500: smart_resize refuses it
    good = {"messages": [{"role": "user", "content": "<image>" + QUESTION}, {"role": "assistant", "content": "1"}],
            "images": names}
    strip = {"id": "strip", **good, "images": ["strip.png"]}
    path = tmp_path / "data.jsonl"
    path.write_bytes(json.dumps(good).encode() + b"\n" + b'{"text": "caf\xe9"}\n' + json.dumps(strip).encode()
                     + b"\n" + json.dumps(good).encode() + b"\n")
    config = DataConfig(train=str(path))
    records, root = open_records(config)
    encoder = SampleEncoder(tokenizer, config, processor, root)
    with pytest.raises(InvalidSample, match=r"data.jsonl:2: not valid UTF-8: byte 0xe9 at column 14"):
        records[1]
    with pytest.raises(InvalidSample, match=r"data.jsonl:3 \(id=strip\): the processor refused the image\(s\) "
                                            r"strip.png \(2000x4\): .*aspect ratio"):
        encoder(records[2], records.describe(2))
    warnings = []
    stream = RowStream(records, encoder, seq_len=256, shuffle=False, on_invalid="skip", warn=warnings.append)
    rows = [stream.next_row() for _ in range(5)]  # two good rows per epoch: the third epoch is reached
    assert all(row.has_images for row in rows) and stream.epoch == 2
    assert stream.skipped == {"malformed": 1, "image": 1} and len(warnings) == 2


def test_llamafactory_rows_train_the_vision_path(vl_assets, tmp_path):
    """Align trains only the merger and the vision LoRA, which see nothing but image tokens: they change only if
    the rows' images reach the model. Bad rows are skipped and counted once over several epochs."""
    from zaya_vl import ZayaVL

    names = _pages(tmp_path)
    rows = [{"id": f"ok{k}", "messages": [{"role": "user", "content": "<image>" + QUESTION},
                                          {"role": "assistant", "content": str(k)}], "images": [names[k % 2]]}
            for k in range(4)]
    rows += [{"id": "lost", "messages": [{"role": "user", "content": "<image>" + QUESTION},
                                         {"role": "assistant", "content": "x"}], "images": names},
             {"id": "hacker", "messages": [{"role": "hacker", "content": "hi"},
                                           {"role": "assistant", "content": "x"}]}]
    path = _write(tmp_path / "lf.jsonl", rows)
    config = {"output_dir": str(tmp_path / "run"), "stage": "align", "seed": 0,
              "model": {"path": str(vl_assets["model_dir"])},
              "data": {"train": str(path), "seq_len": 128, "pad_to": "longest", "on_invalid": "skip"},
              "train": {"max_steps": 5, "micro_batch_size": 2, "progress": False, "tensorboard": False},
              "optim": {"lr": 1e-2}, "schedule": {"name": "constant"}}
    result = train(config_from_dict(config), processor=vl_assets["processor"])
    metrics = [json.loads(line) for line in (result.output_dir / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["data/epoch"] >= 2 and metrics[-1]["data/skipped"] == 2
    before = ZayaVL.from_pretrained(vl_assets["model_dir"]).state_dict()
    after = ZayaVL.from_pretrained(result.final_dir).state_dict()
    merger = [n for n in before if n.startswith("model.vision_tower.merger.")]
    assert merger and all(not torch.equal(before[n], after[n]) for n in merger)


@pytest.mark.parametrize("variant", ["gemma", "plain"])
def test_llamafactory_rows_with_the_reference_processor_match_the_ports_ids(variant, tmp_path):
    """A checkpoint's own processor ("repeat" expansion: the image token itself is the placeholder, the Gemma-style
    template writes <start_of_image>/<end_of_image> around it) and two adjacent-turn images: the encoded ids are
    the upstream port's ids for the same conversation (tests/fixtures/port_zaya1_vl, written by the port)."""
    from pathlib import Path

    from zaya_vl.processing import ZayaVLProcessor

    fixtures = Path(__file__).resolve().parents[1] / "fixtures" / "port_zaya1_vl" / "processor"
    processor = ZayaVLProcessor.from_pretrained(fixtures / variant)
    assert processor.image_expansion == "repeat"
    expected = json.loads((fixtures / variant / "expected.json").read_text())
    chat = next(c for c in expected["chat_template"] if len(c["images"]) == 2)
    row = {"messages": [{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": "Compare<image>and<image>"},
                        {"role": "assistant", "content": "The first is higher."},
                        {"role": "user", "content": "Why?"}],
           "images": [str(fixtures / "images" / name) for name in chat["images"]]}
    # The port's template has no {% generation %} blocks, so train on every token here.
    encoded, = _encode_all(processor.tokenizer, processor, _write(tmp_path / "lf.jsonl", [row]), loss_on="all")
    reference = chat["input_ids_add_special_tokens_false"][0]
    prompt = processor.tokenizer("<start_of_turn>model\n", add_special_tokens=False)["input_ids"]
    assert encoded.input_ids + prompt == reference  # the fixture was rendered with add_generation_prompt
    assert encoded.image_grid_thw.shape[0] == 2
