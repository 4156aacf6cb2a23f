"""Document-boundary resets are real: a packed batch's loss (and gradient) is the sum over its documents."""

from __future__ import annotations

import torch

from zaya_vl.lm import ZayaLM
from zaya_vl.training import RowStream, SampleEncoder, collate_rows, count_targets, open_records
from zaya_vl.training.config import DataConfig


def _stream(path, tokenizer, **overrides):
    config = DataConfig(train=str(path), seq_len=192, **overrides)
    records, root = open_records(config)
    return RowStream(records, SampleEncoder(tokenizer, config, image_root=root), seq_len=192, seed=3,
                     packing=config.packing)


def _loss_sum_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    out = model(**batch, use_cache=False, loss_chunk_size=7)
    total = out.loss * count_targets(batch)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_packed_loss_equals_sum_of_per_document_losses(assets):
    tokenizer = assets["tokenizer"]
    model = ZayaLM.from_pretrained(assets["model_dir"]).train()
    for data in ("text", "chat"):
        stream = _stream(assets[data], tokenizer)
        rows = [stream.next_row(), stream.next_row()]
        assert all(len(row.samples) >= 2 for row in rows), [[len(s) for s in row.samples] for row in rows]
        packed = collate_rows(rows, pad_token_id=tokenizer.pad_token_id, seq_len=192, pad_to="max_length")
        assert (packed["attention_mask"] == 0).any(), "rows end with padding"
        packed_loss, packed_grads = _loss_sum_and_grads(model, packed)

        separate_loss, separate_grads = 0.0, {}
        for row in rows:
            for sample in row.samples:
                alone = collate_rows([type(row)([sample])], pad_token_id=tokenizer.pad_token_id, seq_len=192,
                                     pad_to="longest", with_segments=False)
                loss, grads = _loss_sum_and_grads(model, alone)
                separate_loss = separate_loss + loss
                for name, grad in grads.items():
                    separate_grads[name] = separate_grads.get(name, 0) + grad
        documents = sum(len(row.samples) for row in rows)
        print(f"{data}: {documents} documents in 2 rows; packed loss sum {packed_loss.item():.6f}, "
              f"separate {separate_loss.item():.6f}")
        torch.testing.assert_close(packed_loss, separate_loss, rtol=1e-5, atol=1e-4)
        assert packed_grads.keys() == separate_grads.keys()
        for name in packed_grads:
            torch.testing.assert_close(packed_grads[name], separate_grads[name], rtol=1e-4, atol=1e-5,
                                       msg=lambda m, n=name: f"{n}: {m}")


def test_without_segment_ids_documents_leak_into_each_other(assets):
    """The control: the same rows and the same counted targets, but no segment ids, give another loss: attention,
    the CCA state and positions then run across documents (so the equality above has teeth)."""
    tokenizer = assets["tokenizer"]
    model = ZayaLM.from_pretrained(assets["model_dir"]).eval()
    stream = _stream(assets["text"], tokenizer)
    rows = [stream.next_row(), stream.next_row()]
    with_segments = collate_rows(rows, pad_token_id=tokenizer.pad_token_id, seq_len=192)
    without = {k: v.clone() for k, v in with_segments.items() if k != "segment_ids"}
    starts = with_segments["segment_ids"][:, 1:] != with_segments["segment_ids"][:, :-1]
    without["labels"][:, 1:][starts] = -100  # the cross-document targets the segment ids would drop
    assert count_targets(without) == count_targets(with_segments)
    with torch.no_grad():
        reset = model(**with_segments, use_cache=False).loss
        leaked = model(**without, use_cache=False).loss
    print(f"loss with resets {reset.item():.5f}, without {leaked.item():.5f}")
    assert (reset - leaked).abs() > 1e-3
