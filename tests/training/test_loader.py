"""Each process encodes the images of its own rows only, and the processes' rows together are one process's rows."""

from __future__ import annotations

from functools import partial

import torch

from zaya_vl.training import RowStream, SampleEncoder, collate_rows, open_records
from zaya_vl.training.config import DataConfig
from zaya_vl.training.loader import MicroBatches


def _loader(vl_assets, data, process_index, num_processes, rows_per_process, encoded_images):
    config = DataConfig(train=str(data), seq_len=128, pad_to="longest")
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)

    def encode(record, where):
        if encoder.has_images(record, where):
            encoded_images.append(where)
        return encoder(record, where)

    stream = RowStream(records, encode, seq_len=128, seed=0, defer=encoder.has_images)
    collate = partial(collate_rows, pad_token_id=0, seq_len=128, pad_to="longest")
    return iter(MicroBatches(stream, collate, rows_per_process=rows_per_process, process_index=process_index,
                             num_processes=num_processes))


def test_two_processes_encode_disjoint_images_and_make_up_one_process_batches(vl_assets):
    data, steps = vl_assets["mixed"], 6
    one_images, images = [], {0: [], 1: []}
    one = _loader(vl_assets, data, 0, 1, 4, one_images)
    two = {p: _loader(vl_assets, data, p, 2, 2, images[p]) for p in (0, 1)}
    for _ in range(steps):
        whole = next(one)
        halves = [next(two[p]) for p in (0, 1)]
        assert halves[0]["state"] == halves[1]["state"] == whole["state"]  # one plan, whatever the split
        for key in ("input_ids", "labels", "attention_mask"):
            parts = [h["batch"][key] for h in halves]
            # rows 0-1 are process 0's, rows 2-3 process 1's (padding to the batch's longest aside)
            for p, part in enumerate(parts):
                assert torch.equal(part, whole["batch"][key][2 * p:2 * p + 2, :part.shape[1]]), key
        if "pixel_values" in whole["batch"]:
            pixels = [h["batch"]["pixel_values"] for h in halves if "pixel_values" in h["batch"]]
            assert torch.equal(torch.cat(pixels), whole["batch"]["pixel_values"])
    assert images[0] and images[1] and not set(images[0]) & set(images[1])  # each image decoded by one process
    assert sorted(images[0] + images[1]) == sorted(one_images)


def test_an_image_sample_invalid_when_encoded_leaves_its_row_empty_and_is_counted(vl_assets, tmp_path):
    import json

    import pytest

    from zaya_vl.training import InvalidSample

    rows = [json.loads(json.dumps(row)) for row in vl_assets["rows"][:4]]
    rows[1] = json.loads(json.dumps(rows[1]).replace('"images/', '"gone/'))
    images = vl_assets["data"].parent
    data = tmp_path / "bad.jsonl"
    data.write_text("".join(json.dumps(row).replace('"images/', f'"{images}/images/') + "\n" for row in rows))
    config = DataConfig(train=str(data), seq_len=128, pad_to="longest")
    records, root = open_records(config)
    encoder = SampleEncoder(vl_assets["tokenizer"], config, vl_assets["processor"], root)
    collate = partial(collate_rows, pad_token_id=0, seq_len=128, pad_to="longest")
    for on_invalid in ("skip", "error"):
        stream = RowStream(records, encoder, seq_len=128, shuffle=False, on_invalid=on_invalid,
                           defer=encoder.has_images)
        batches = iter(MicroBatches(stream, collate, rows_per_process=1, process_index=0, num_processes=1))
        next(batches)
        if on_invalid == "error":
            with pytest.raises(InvalidSample, match=r"bad.jsonl:2 .*image"):
                next(batches)
            continue
        empty = next(batches)
        assert empty["skipped"] == {"image": 1} and int(empty["batch"]["attention_mask"].sum()) == 0
        assert next(batches)["skipped"] == {}  # the rows after it stay where they were
