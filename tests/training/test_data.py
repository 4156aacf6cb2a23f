"""Records → token ids + labels: formats, assistant masks, and errors that name the sample."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from zaya_vl.training import DataError, InvalidSample, RowStream, SampleEncoder, open_records
from zaya_vl.training.config import DataConfig
from zaya_vl.training.data import IGNORE_INDEX, JsonlRecords


def _encoder(tokenizer, path, processor=None, **overrides):
    config = DataConfig(train=str(path), **overrides)
    records, root = open_records(config)
    return records, SampleEncoder(tokenizer, config, processor=processor, image_root=root)


def _trained_text(tokenizer, encoded) -> str:
    return tokenizer.decode([t for t, label in zip(encoded.input_ids, encoded.labels) if label != IGNORE_INDEX])


def test_chat_labels_cover_exactly_the_assistant_turns(assets, helpers, tmp_path):
    tokenizer = assets["tokenizer"]
    path = helpers.write_jsonl(tmp_path / "chat.jsonl", [{"id": "x", "messages": [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "what is 2 plus 3?"}]},
        {"role": "assistant", "content": "5"},
        {"role": "user", "content": "and 4 plus 4?"},
        {"role": "assistant", "content": [{"type": "text", "text": "8"}]},
    ]}])
    records, encoder = _encoder(tokenizer, path)
    encoded = encoder(records[0], records.describe(0))
    assert encoded.input_ids == tokenizer.apply_chat_template(records[0]["messages"], tokenize=True,
                                                              return_dict=True)["input_ids"]
    assert _trained_text(tokenizer, encoded) == "5<end_of_turn>8<end_of_turn>"
    records, everything = _encoder(tokenizer, path, loss_on="all")
    assert everything(records[0], "x").labels == encoded.input_ids


def test_text_documents_get_bos_and_eos(assets, helpers, tmp_path):
    tokenizer = assets["tokenizer"]
    path = helpers.write_jsonl(tmp_path / "text.jsonl", [{"text": "the total is due"}])
    records, encoder = _encoder(tokenizer, path)
    encoded = encoder(records[0], "t")
    assert encoded.input_ids[0] == tokenizer.bos_token_id and encoded.input_ids[-1] == tokenizer.eos_token_id
    assert encoded.labels == encoded.input_ids
    assert tokenizer.decode(encoded.input_ids[1:-1]) == "the total is due"


def test_jsonl_is_read_lazily_with_line_numbers(helpers, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text('{"text": "a"}\n\n{"text": "b"}\nnot json\n')
    records = JsonlRecords(path)
    assert len(records) == 3 and records[1] == {"text": "b"}
    assert records.describe(1) == "data.jsonl:3"
    with pytest.raises(InvalidSample, match=r"data.jsonl:4: not valid JSON"):
        records[2]


def test_saved_datasets_folder_is_read(assets, helpers, tmp_path):
    import datasets

    rows = helpers.chat_rows(4)
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    records, encoder = _encoder(assets["tokenizer"], tmp_path / "saved")
    assert len(records) == 4
    encoded = encoder(records[2], records.describe(2))
    answer = rows[2]["messages"][1]["content"][0]["text"]
    assert _trained_text(assets["tokenizer"], encoded) == f"{answer}<end_of_turn>"


def test_missing_data_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="data file not found"):
        open_records(DataConfig(train=str(tmp_path / "nope.jsonl")))


IMAGE_ROW = {"id": "img1", "messages": [
    {"role": "user", "content": [{"type": "image", "image": "images/missing.png"},
                                 {"type": "text", "text": "what is the total?"}]},
    {"role": "assistant", "content": "12"}]}


def test_missing_image_names_the_sample_and_the_image(assets, helpers, tmp_path):
    path = helpers.write_jsonl(tmp_path / "vl.jsonl", [IMAGE_ROW])
    records, encoder = _encoder(assets["tokenizer"], path, processor=object())
    with pytest.raises(InvalidSample) as error:
        encoder(records[0], records.describe(0))
    message = str(error.value)
    assert "vl.jsonl:1 (id=img1)" in message and "images/missing.png" in message and "not found" in message
    assert error.value.reason == "image"


def test_images_for_a_text_only_model_are_invalid(assets, helpers, tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (32, 32), "white").save(tmp_path / "images" / "missing.png")
    path = helpers.write_jsonl(tmp_path / "vl.jsonl", [IMAGE_ROW])
    records, encoder = _encoder(assets["tokenizer"], path)
    with pytest.raises(InvalidSample, match="text-only LM"):
        encoder(records[0], records.describe(0))


def test_overlength_and_skip_mode(assets, helpers, tmp_path, caplog):
    long_text = " ".join(["the total is due"] * 40)
    rows = [{"id": "short0", "text": "the total"}, {"id": "long", "text": long_text},
            {"id": "short1", "text": "is due"}, {"messages": [{"role": "user", "content": "no answer"}]},
            IMAGE_ROW]
    path = helpers.write_jsonl(tmp_path / "mixed.jsonl", rows)
    config = DataConfig(train=str(path), seq_len=32)
    records, root = open_records(config)
    encoder = SampleEncoder(assets["tokenizer"], config, image_root=root)

    strict = RowStream(records, encoder, seq_len=32, shuffle=False)
    with pytest.raises(InvalidSample, match=r"mixed.jsonl:2 \(id=long\): \d+ tokens, more than data.seq_len=32"):
        strict.next_row()

    warnings = []
    lenient = RowStream(records, encoder, seq_len=32, shuffle=False, on_invalid="skip", warn=warnings.append)
    row = lenient.next_row()
    assert [s.where for s in row.samples] == ["mixed.jsonl:1 (id=short0)", "mixed.jsonl:3 (id=short1)"]
    assert lenient.skipped == {"overlength": 1, "no_targets": 1, "image": 1}
    assert len(warnings) == 3 and "id=long" in warnings[0] and "3 skipped so far" in warnings[2]
    lenient.next_row()  # the next epoch skips the same samples again, but counts and warns about each once
    assert lenient.epoch == 1 and lenient.total_skipped == 3 and len(warnings) == 3
    resumed = RowStream(records, encoder, seq_len=32, shuffle=False, on_invalid="skip", warn=warnings.append)
    resumed.load_state_dict(lenient.state_dict())
    resumed.next_row()
    assert resumed.epoch == 2 and resumed.total_skipped == 3 and len(warnings) == 3


def test_split_long_documents_cuts_text_into_pieces(assets, helpers, tmp_path):
    long_text = " ".join(["the total is due"] * 40)
    path = helpers.write_jsonl(tmp_path / "long.jsonl", [{"text": long_text}])
    config = DataConfig(train=str(path), seq_len=32, split_long_documents=True)
    records, root = open_records(config)
    encoder = SampleEncoder(assets["tokenizer"], config, image_root=root)
    whole = encoder(records[0], "x")
    stream = RowStream(records, encoder, seq_len=32, shuffle=False, split_long_documents=True)
    count = -(-len(whole) // 32)
    rows = [stream.next_row() for _ in range(count)]
    assert stream.epoch == 0 and all(len(row.samples) == 1 for row in rows)
    pieces = [row.samples[0] for row in rows]
    assert sum((p.input_ids for p in pieces), []) == whole.input_ids
    assert [len(p) for p in pieces[:-1]] == [32] * (count - 1)
    stream.next_row()
    assert stream.epoch == 1


def test_all_invalid_data_raises_instead_of_looping(assets, helpers, tmp_path):
    path = helpers.write_jsonl(tmp_path / "bad.jsonl", [{"title": "no text"}, {"title": "none"}])
    config = DataConfig(train=str(path))
    records, root = open_records(config)
    stream = RowStream(records, SampleEncoder(assets["tokenizer"], config, image_root=root), seq_len=64,
                       on_invalid="skip", warn=lambda message: None)
    with pytest.raises(DataError, match="no usable sample"):
        stream.next_row()
