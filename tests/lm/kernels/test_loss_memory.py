"""Chunked cross-entropy memory: the peak of ``causal_lm_loss`` (forward + backward) grows with the chunk, not
with sequence × vocab. CPU allocations are invisible to tracemalloc; torch's profiler records every CPU
allocation and free (``profile_memory``), and the running sum of those is the peak above the starting point."""

import json

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from zaya_vl.lm.loss import causal_lm_loss

NEEDS_TRITON = False
VOCAB, HIDDEN = 8192, 32  # a vocab much wider than the hidden size, as ZAYA1's 262,272 vs 2,048


def full_logits_loss(hidden, weight, labels, chunk_size):
    """What the chunking avoids: fp32 logits for every position at once."""
    logits = F.linear(hidden[:, :-1], weight).float()
    return F.cross_entropy(logits.reshape(-1, VOCAB), labels[:, 1:].reshape(-1))


def peak_bytes(loss_fn, seq, chunk_size, tmp_path):
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(1, seq, HIDDEN, generator=generator).requires_grad_()
    weight = torch.randn(VOCAB, HIDDEN, generator=generator).requires_grad_()
    labels = torch.randint(0, VOCAB, (1, seq), generator=generator)
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        loss_fn(hidden, weight, labels, chunk_size=chunk_size).backward()
    trace = tmp_path / "trace.json"
    prof.export_chrome_trace(str(trace))
    events = [e for e in json.loads(trace.read_text())["traceEvents"] if e.get("name") == "[memory]"]
    assert events, "the profiler recorded no CPU allocations"
    current = peak = 0
    for event in sorted(events, key=lambda e: e["ts"]):
        current += event["args"]["Bytes"]  # negative for frees
        peak = max(peak, current)
    return peak


def test_peak_memory_grows_with_the_chunk_not_with_sequence_times_vocab(tmp_path):
    logits_bytes = lambda rows: rows * VOCAB * 4  # noqa: E731 - fp32 logits
    chunked = {(seq, chunk): peak_bytes(causal_lm_loss, seq, chunk, tmp_path)
               for seq in (512, 2048) for chunk in (32, 128)}
    full = {seq: peak_bytes(full_logits_loss, seq, None, tmp_path) for seq in (512, 2048)}

    # The measurement sees logits: the unchunked loss holds at least all fp32 logits, and grows with the sequence.
    assert full[2048] >= logits_bytes(2047) and full[2048] > 3 * full[512]
    # Chunked: 4× the sequence barely moves the peak (only the seq × hidden inputs and their gradient grow) ...
    for chunk in (32, 128):
        assert chunked[2048, chunk] < 1.3 * chunked[512, chunk], chunked
    # ... 4× the chunk grows it (the chunk's logits and their gradient dominate) ...
    assert chunked[2048, 128] > 2 * chunked[2048, 32], chunked
    # ... and it is a few chunks' logits, far below the sequence's.
    assert chunked[2048, 32] < 8 * logits_bytes(32) and chunked[2048, 32] < full[2048] / 20, (chunked, full)
